package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// hostEntry describes a file of the host file system as an entry, without content.
func hostEntry(hostPath, rel string) (*entry, *unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Lstat(hostPath, &st); err != nil {
		return nil, nil, err
	}
	e := &entry{
		Path:  rel,
		Mode:  st.Mode,
		UID:   st.Uid,
		GID:   st.Gid,
		Mtime: time.Unix(st.Mtim.Unix()),
		Size:  st.Size,
		Major: unix.Major(uint64(st.Rdev)),
		Minor: unix.Minor(uint64(st.Rdev)),
	}
	if st.Mode&typeMask == typeLnk {
		t, err := os.Readlink(hostPath)
		if err != nil {
			return nil, nil, err
		}
		e.Target = t
	}
	x, err := readXattrs(hostPath)
	if err != nil {
		return nil, nil, err
	}
	e.Xattrs = x
	return e, &st, nil
}

// readXattrs returns all xattrs of a path, not following symlinks. A file system without
// xattr support simply has none.
func readXattrs(p string) (map[string][]byte, error) {
	size, err := unix.Llistxattr(p, nil)
	if errors.Is(err, unix.ENOTSUP) || size == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listxattr: %w", err)
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, fmt.Errorf("listxattr: %w", err)
	}
	out := map[string][]byte{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vs, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", name, err)
		}
		v := make([]byte, vs)
		vs, err = unix.Lgetxattr(p, name, v)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", name, err)
		}
		out[name] = v[:vs]
	}
	return out, nil
}

// walkDir streams a host directory tree as entries, parents first, names sorted so that
// imports are reproducible. Hard links are found by (device, inode).
func walkDir(ctx context.Context, root string, fn func(*entry) error) error {
	type key struct{ dev, ino uint64 }
	links := map[key]string{}
	var walk func(host, rel string) error
	walk = func(host, rel string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, st, err := hostEntry(host, rel)
		if err != nil {
			return fmt.Errorf("%s: %w", host, err)
		}
		if st.Mode&typeMask != typeDir && st.Nlink > 1 {
			k := key{uint64(st.Dev), st.Ino}
			if first, ok := links[k]; ok {
				return fn(&entry{Path: rel, LinkTo: first})
			}
			links[k] = rel
		}
		if st.Mode&typeMask == typeReg {
			e.Open = func() (io.ReadCloser, error) { return os.Open(host) }
		}
		if err := fn(e); err != nil {
			return err
		}
		if st.Mode&typeMask != typeDir {
			return nil
		}
		d, err := os.Open(host)
		if err != nil {
			return err
		}
		names, err := d.Readdirnames(-1)
		d.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", host, err)
		}
		sort.Strings(names)
		for _, n := range names {
			if err := walk(filepath.Join(host, n), path.Join(rel, n)); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(root, "")
}
