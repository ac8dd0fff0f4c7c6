package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/pifleet/pifleet/overlay"
)

// ImageConflicts lists the paths where a board's changes meet a change of its image:
// the board's upper over newLowers shadows the path (overlay.Changes(upper, newLowers):
// it added, changed or deleted it, or, under a dir it made opaque, hides it), and the
// image's own object at the path differs between oldLowers and newLowers. Objects differ
// when one side lacks the path, or in type, permission bits, owner, size, contents,
// symlink target or device number; times and xattrs are not compared. A directory counts
// by its own attributes, except one the board deleted: then anything that differs below
// it is a conflict of that one path (under a dir the board made opaque or replaced with a
// file, overlay.Changes lists the image's entries one by one, so they count one by one).
// A path that both deleted is not a conflict; the same file added to both is, unless
// identical.
//
// Both stacks are read through the overlay (honouring the layers' whiteouts and opaque
// dirs), never the kernel: the board's changes come from overlay.Changes, the one reader
// of the upper format.
func ImageConflicts(upper string, oldLowers, newLowers []string) ([]Change, error) {
	changes, err := overlay.Changes(upper, newLowers)
	if err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	out := []Change{}
	if len(changes) == 0 {
		return out, nil
	}
	scratch, err := os.MkdirTemp("", "pifleet-conflicts-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(scratch)
	view := func(name string, lowers []string) (*overlay.FS, error) {
		return overlay.New(overlay.Options{Upper: filepath.Join(scratch, name, "upper"), Work: filepath.Join(scratch, name, "work"), Lowers: lowers})
	}
	oldFS, err := view("old", oldLowers)
	if err != nil {
		return nil, err
	}
	newFS, err := view("new", newLowers)
	if err != nil {
		return nil, err
	}
	for _, c := range changes {
		// A deleted dir is one change for its whole tree (overlay.Changes lists what was
		// under a dir made opaque or replaced by a file one by one).
		same, err := sameObject(oldFS, newFS, c.Path, c.Kind == overlay.Deleted)
		if err != nil {
			return nil, fmt.Errorf("compare %s: %w", c.Path, err)
		}
		if !same {
			out = append(out, changeOf(upper, c))
		}
	}
	return out, nil
}

// sameObject compares the object at p in two read-only views; deep compares what a
// directory holds too.
func sameObject(a, b *overlay.FS, p string, deep bool) (bool, error) {
	fa, ea := a.Lstat(p)
	fb, eb := b.Lstat(p)
	switch {
	case errors.Is(ea, fs.ErrNotExist) && errors.Is(eb, fs.ErrNotExist):
		return true, nil
	case errors.Is(ea, fs.ErrNotExist) || errors.Is(eb, fs.ErrNotExist):
		return false, nil
	case ea != nil:
		return false, ea
	case eb != nil:
		return false, eb
	}
	sa, oka := fa.Sys().(*overlay.Stat)
	sb, okb := fb.Sys().(*overlay.Stat)
	if !oka || !okb {
		return false, fmt.Errorf("no overlay attributes for %s", p)
	}
	if sa.Mode != sb.Mode || sa.Uid != sb.Uid || sa.Gid != sb.Gid {
		return false, nil
	}
	switch m := fa.Mode(); {
	case m.IsRegular():
		if sa.Size != sb.Size {
			return false, nil
		}
		return sameContents(a, b, p)
	case m&fs.ModeSymlink != 0:
		ta, err := a.Readlink(p)
		if err != nil {
			return false, err
		}
		tb, err := b.Readlink(p)
		return ta == tb, err
	case m&(fs.ModeDevice|fs.ModeCharDevice) != 0:
		return sa.Rdev == sb.Rdev, nil
	case m.IsDir() && deep:
		la, err := a.ReadDir(p)
		if err != nil {
			return false, err
		}
		lb, err := b.ReadDir(p)
		if err != nil {
			return false, err
		}
		if len(la) != len(lb) {
			return false, nil
		}
		names := map[string]bool{}
		for _, e := range lb {
			names[e.Name()] = true
		}
		for _, e := range la {
			if !names[e.Name()] {
				return false, nil
			}
			same, err := sameObject(a, b, pathJoin(p, e.Name()), true)
			if err != nil || !same {
				return false, err
			}
		}
	}
	return true, nil
}

func pathJoin(dir, name string) string {
	if dir == "/" || dir == "" {
		return "/" + name
	}
	return dir + "/" + name
}

// sameContents compares two regular files of the same size byte for byte.
func sameContents(a, b *overlay.FS, p string) (bool, error) {
	fa, err := a.Open(p)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := b.Open(p)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if ea == io.EOF || ea == io.ErrUnexpectedEOF {
			return eb == ea, nil
		}
		if ea != nil {
			return false, ea
		}
		if eb != nil {
			return false, eb
		}
	}
}
