package shell

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/pifleet/pifleet/overlay"
	"golang.org/x/sys/unix"
)

// overlay xattrs the kernel may write in an upper that mean nothing in a layer (copy-up
// origins, "dir has copied-up entries", link counts, the upper's uuid). Any other
// trusted.overlay.* but opaque=y is refused: a redirect or metacopy would need the
// kernel's lookup rules, which a layer does not have.
var droppedOverlayXattrs = map[string]bool{
	"trusted.overlay.origin": true, "trusted.overlay.impure": true, "trusted.overlay.nlink": true,
	"trusted.overlay.uuid": true, "trusted.overlay.upper": true,
}

const xattrOpaque = "trusted.overlay.opaque"

// Clean turns an upper the kernel's overlayfs wrote over lowers (topmost first) into a
// layer in pifleet's format: whiteouts are char devices 0/0 (each its own inode: the
// kernel hard-links them to one), opaque dirs carry trusted.overlay.opaque=y and nothing
// else of the overlay's xattrs, and what ex leaves out (images.LayerExcludes, as `board
// commit` does with overlay.Export) is removed: a path ex matches goes with all below it,
// under a "DIR/" pattern the non-directories (whiteouts too) go and the dirs stay. So
// that a left-out path shows the lowers' version, an opaque dir with something left out
// below it becomes a plain dir plus a whiteout for each lower entry it hid that is not
// left out. ex nil leaves nothing out. It returns the removed paths.
func Clean(upper string, lowers []string, ex *overlay.Excludes) ([]string, error) {
	if ex == nil {
		ex = &overlay.Excludes{}
	}
	// What the lowers have and an opaque dir hides, read before anything changes.
	changes, err := overlay.Changes(upper, lowers)
	if err != nil {
		return nil, fmt.Errorf("clean upper %s: %w", upper, err)
	}
	var dropped []string
	opaque := map[string]bool{} // opaque dirs of the upper -> still opaque
	err = filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, upper), "/")
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		whiteout := st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
		if rel != "/" && ex.Match(rel, isDir) {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
			dropped = append(dropped, rel)
			if isDir {
				return fs.SkipDir
			}
			return nil
		}
		if whiteout && st.Nlink > 1 {
			return freshWhiteout(p)
		}
		if err := cleanXattrs(p, rel); err != nil {
			return err
		}
		if v, err := getXattr(p, xattrOpaque); isDir && err == nil && string(v) == "y" {
			opaque[rel] = !ex.Below(rel)
			if !opaque[rel] {
				return unix.Lremovexattr(p, xattrOpaque)
			}
		}
		return nil
	})
	if err != nil {
		return dropped, fmt.Errorf("clean upper %s: %w", upper, err)
	}
	for _, c := range changes {
		if c.Kind != overlay.Deleted || ex.Match(c.Path, false) || !hiddenBy(c.Path, opaque) {
			continue
		}
		if _, err := os.Lstat(upper + c.Path); !errors.Is(err, fs.ErrNotExist) {
			continue // a whiteout already, or under a non-dir
		}
		if fi, err := os.Lstat(upper + path.Dir(c.Path)); err != nil || !fi.IsDir() {
			continue // its dir was left out, or is not one
		}
		if err := unix.Mknod(upper+c.Path, unix.S_IFCHR|0o000, 0); err != nil {
			return dropped, fmt.Errorf("clean upper %s: %s: %w", upper, c.Path, err)
		}
	}
	return dropped, nil
}

// hiddenBy reports whether the nearest opaque dir above p was made a plain dir.
func hiddenBy(p string, opaque map[string]bool) bool {
	for q := path.Dir(p); ; q = path.Dir(q) {
		if still, ok := opaque[q]; ok {
			return !still
		}
		if q == "/" {
			return false
		}
	}
}

// freshWhiteout replaces a hard-linked whiteout by one of its own.
func freshWhiteout(p string) error {
	if err := os.Remove(p); err != nil {
		return err
	}
	return unix.Mknod(p, unix.S_IFCHR|0o000, 0)
}

// cleanXattrs removes the overlay bookkeeping xattrs of p and refuses the ones a layer
// cannot hold.
func cleanXattrs(p, rel string) error {
	names, err := listXattrs(p)
	if err != nil {
		return err
	}
	for _, n := range names {
		switch {
		case droppedOverlayXattrs[n], strings.HasPrefix(n, "trusted.pifleet."):
			// trusted.pifleet.* (the user-space overlay's file ids) is copied up by the
			// kernel from a layer made by board commit; it only means something in an upper.
			if err := unix.Lremovexattr(p, n); err != nil && !errors.Is(err, unix.ENODATA) {
				return err
			}
		case n == xattrOpaque:
			v, err := getXattr(p, n)
			if err != nil {
				return err
			}
			if string(v) != "y" {
				return fmt.Errorf("%s: %s=%q: only \"y\" (opaque) is a layer's", rel, n, v)
			}
		case strings.HasPrefix(n, "trusted.overlay."):
			return fmt.Errorf("%s: %s: the kernel recorded a redirect or metacopy, which a pifleet layer cannot hold", rel, n)
		}
	}
	return nil
}
