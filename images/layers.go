package images

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// layerView reads the merged tree of overlay layers (topmost first) as a board sees it
// through the overlay: the topmost layer having a name wins, a whiteout hides it, an opaque
// dir hides the layers below it. Symlinks are not followed: a path through one is missing.
type layerView []string

// find returns the real path and stat of rel in the merged tree and, for a dir, the real
// dirs that make it (topmost first).
func (v layerView) find(rel string) (string, *unix.Stat_t, []string, error) {
	dirs := []string(v)
	var real string
	var st unix.Stat_t
	parts := strings.Split(strings.Trim(rel, "/"), "/")
	for i, name := range parts {
		found := -1
		for j, d := range dirs {
			if err := unix.Lstat(d+"/"+name, &st); err != nil {
				if err == unix.ENOENT || err == unix.ENOTDIR {
					continue
				}
				return "", nil, nil, err
			}
			found = j
			break
		}
		if found < 0 || st.Mode&typeMask == typeChr && st.Rdev == 0 {
			return "", nil, nil, os.ErrNotExist
		}
		real = dirs[found] + "/" + name
		if st.Mode&typeMask != typeDir {
			if i < len(parts)-1 {
				return "", nil, nil, os.ErrNotExist
			}
			return real, &st, nil, nil
		}
		next := []string{real}
		for _, d := range dirs[found+1:] {
			if isOpaqueDir(next[len(next)-1]) {
				break
			}
			// A layer without the name is passed over, as the overlay does: only a
			// non-directory (a whiteout too) hides the layers below.
			var ls unix.Stat_t
			if err := unix.Lstat(d+"/"+name, &ls); err != nil {
				if err == unix.ENOENT || err == unix.ENOTDIR {
					continue
				}
				return "", nil, nil, err
			}
			if ls.Mode&typeMask != typeDir {
				break
			}
			next = append(next, d+"/"+name)
		}
		dirs = next
	}
	return real, &st, dirs, nil
}

func isOpaqueDir(real string) bool {
	var buf [2]byte
	n, err := unix.Lgetxattr(real, "trusted.overlay.opaque", buf[:])
	return err == nil && n == 1 && buf[0] == 'y'
}

// exists reports whether rel is in the merged tree.
func (v layerView) exists(rel string) bool {
	_, _, _, err := v.find(rel)
	return err == nil
}

// readFile reads a regular file (at most 16 MiB) of the merged tree.
func (v layerView) readFile(rel string) ([]byte, *unix.Stat_t, error) {
	real, st, _, err := v.find(rel)
	if err != nil {
		return nil, nil, err
	}
	if st.Mode&typeMask != typeReg {
		return nil, nil, fmt.Errorf("/%s is not a regular file", rel)
	}
	f, err := os.Open(real)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 16<<20))
	return b, st, err
}

// readDir returns the sorted names of the merged dir rel.
func (v layerView) readDir(rel string) ([]string, error) {
	_, st, dirs, err := v.find(rel)
	if err != nil {
		return nil, err
	}
	if st.Mode&typeMask != typeDir {
		return nil, fmt.Errorf("/%s is not a directory", rel)
	}
	seen := map[string]bool{}
	var names []string
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if seen[e.Name()] {
				continue
			}
			seen[e.Name()] = true
			if v.exists(rel + "/" + e.Name()) { // not whited out
				names = append(names, e.Name())
			}
		}
	}
	slices.Sort(names)
	return names, nil
}
