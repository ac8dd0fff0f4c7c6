package overlay

import (
	"errors"
	"fmt"
	"io/fs"
	"sort"

	"golang.org/x/sys/unix"
)

// ChangeKind says how a path of the merged view differs from the lowers alone.
type ChangeKind byte

// The kinds of change, with the letters `pifleet board diff` prints.
const (
	Added   ChangeKind = 'A' // the merged view has the path, the lowers do not
	Changed ChangeKind = 'C' // both have it, and the merged view's object is the upper's
	Deleted ChangeKind = 'D' // the lowers have it, the merged view does not
)

func (k ChangeKind) String() string { return string(k) }

// Change is one path where an upper makes the merged view differ from its lowers.
type Change struct {
	Kind ChangeKind
	Path string // slash path from the root, "/etc/hosts"
	// Type holds the type bits (fs.ModeDir, fs.ModeSymlink, ...; 0 for a regular file) of
	// the object in the merged view, or for Deleted of the one the lowers have.
	Type fs.FileMode
	// Size is the disk space the upper object takes (st_blocks*512) for a regular file,
	// 0 otherwise.
	Size int64
}

// Changes reads an upper dir in the overlayfs format against its lowers (topmost first)
// and reports every path where the merged view differs from the lowers' own merged view,
// sorted by path:
//   - an upper object is Added, or Changed where the lowers have the path (a dir the upper
//     holds only because something inside it changed is Changed too);
//   - a whiteout (char device 0/0) over a path the lowers have is Deleted;
//   - under an opaque dir (trusted.overlay.opaque=y: the board removed the dir and made it
//     again) an upper object the lowers also have is Changed, what only the upper has is
//     Added, and what the lowers have and the upper lacks is Deleted; the same holds for
//     what a lower dir held when the upper replaced it with a non-dir.
//
// A deleted directory is reported once: what was under it is not listed. The lowers may
// hold whiteouts and opaque dirs themselves (layered images); they are honoured as a
// lookup through the overlay honours them. This is the one reader of an upper for diffs
// (the FS reads it only to look names up); it takes no lock: on a running board it reports
// a moving tree as it finds it, and what vanishes while it reads is skipped. A missing
// upper has no changes.
func Changes(upper string, lowers []string) ([]Change, error) {
	var st unix.Stat_t
	if err := unix.Lstat(upper, &st); err != nil {
		if err == unix.ENOENT {
			return nil, nil
		}
		return nil, &fs.PathError{Op: "changes", Path: upper, Err: err}
	}
	if !isDir(&st) {
		return nil, &fs.PathError{Op: "changes", Path: upper, Err: unix.ENOTDIR}
	}
	var out []Change
	if err := changesIn(&out, "", upper, lowers, true); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// changesIn compares the merged dir at rel: up is its upper dir ("" when the upper has
// none there), low the lowers' dirs that make the lowers' view of it (topmost first), and
// lowerShows whether that view shows through in the merged one (false under an opaque
// upper dir, at any depth, and where the upper replaced the dir with a non-dir).
func changesIn(out *[]Change, rel, up string, low []string, lowerShows bool) error {
	// Names only the lowers have matter only where they do not show through (then they are
	// deleted): a diff costs what the upper holds, not what the image holds.
	dirs := low
	if lowerShows {
		dirs = nil
	}
	names := map[string]bool{} // name -> in the upper
	for i, d := range append([]string{up}, dirs...) {
		if d == "" {
			continue
		}
		ns, err := readNames(d)
		if errors.Is(err, unix.ENOENT) && i == 0 {
			continue // removed meanwhile by a running board
		}
		if err != nil {
			return fmt.Errorf("overlay: changes %s: %w", d, err)
		}
		for _, n := range ns {
			names[n] = names[n] || i == 0
		}
	}
	for name, inUpper := range names {
		p := rel + "/" + name
		var ust unix.Stat_t
		if inUpper {
			if err := unix.Lstat(up+"/"+name, &ust); err == unix.ENOENT {
				inUpper = false // removed meanwhile by a running board
			} else if err != nil {
				return fmt.Errorf("overlay: changes %s: %w", p, err)
			}
		}
		lst, lowDirs, inLowers, err := lowerLookup(low, name)
		if err != nil {
			return fmt.Errorf("overlay: changes %s: %w", p, err)
		}
		switch {
		case inUpper && !isWhiteout(&ust):
			c := Change{Kind: Added, Path: p, Type: fileMode(ust.Mode).Type()}
			if inLowers {
				c.Kind = Changed
			}
			if c.Type.IsRegular() {
				c.Size = ust.Blocks * 512
			}
			*out = append(*out, c)
			lowerDir := inLowers && isDir(&lst)
			switch {
			case isDir(&ust) && lowerDir:
				err = changesIn(out, p, up+"/"+name, lowDirs, lowerShows && !isOpaque(up+"/"+name))
			case isDir(&ust):
				err = changesIn(out, p, up+"/"+name, nil, false)
			case lowerDir:
				err = changesIn(out, p, "", lowDirs, false)
			}
			if err != nil {
				return err
			}
		case inLowers && (inUpper || !lowerShows):
			*out = append(*out, Change{Kind: Deleted, Path: p, Type: fileMode(lst.Mode).Type()})
		}
	}
	return nil
}

// lowerLookup finds name in the lowers' merged dir made of dirs (topmost first), as
// lookupIn and childDir do: the topmost layer having it wins, a whiteout hides it; for a
// dir it returns the dirs that make it, stopping at an opaque dir or a non-dir.
func lowerLookup(dirs []string, name string) (st unix.Stat_t, sub []string, found bool, err error) {
	for i, d := range dirs {
		real := d + "/" + name
		if err := unix.Lstat(real, &st); err != nil {
			if err == unix.ENOENT {
				continue
			}
			return st, nil, false, err
		}
		if isWhiteout(&st) {
			return st, nil, false, nil
		}
		if !isDir(&st) {
			return st, nil, true, nil
		}
		sub = []string{real}
		if isOpaque(real) {
			return st, sub, true, nil
		}
		for _, below := range dirs[i+1:] {
			real := below + "/" + name
			var bst unix.Stat_t
			if err := unix.Lstat(real, &bst); err != nil {
				if err == unix.ENOENT {
					continue
				}
				return st, nil, false, err
			}
			if !isDir(&bst) {
				break
			}
			sub = append(sub, real)
			if isOpaque(real) {
				break
			}
		}
		return st, sub, true, nil
	}
	return st, nil, false, nil
}
