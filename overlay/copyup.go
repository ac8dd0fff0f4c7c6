package overlay

import (
	"io"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// privateXattr reports the overlay's own attributes: the kernel's trusted.overlay.* and
// our trusted.pifleet.*. Callers never see them, and copy-up never carries a lower's.
func privateXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "trusted.pifleet.")
}

// copyUp makes n an upper object and returns its new node. The copy is prepared under a
// temp name in Work and renamed into place, so a crash leaves either the lower object
// visible or the complete copy, never a partial one. withData=false skips the file
// contents for callers about to truncate to zero.
func (o *FS) copyUp(n *node, withData bool) (*node, error) {
	return o.copyUpWith(n, withData, nil)
}

// copyUpWith is copyUp that uses pre, a copy made before the lock, if it is one of n.
func (o *FS) copyUpWith(n *node, withData bool, pre *precopied) (*node, error) {
	if n.layer == 0 {
		return n, nil
	}
	upDir, err := o.ensureUpperDir(n.parent)
	if err != nil {
		return nil, err
	}
	tmp := ""
	if withData {
		tmp = pre.take(n)
	}
	if tmp == "" {
		tmp = o.tempName()
		if err := o.copyObject(n, tmp, withData); err != nil {
			os.RemoveAll(tmp)
			return nil, &fs.PathError{Op: "copy-up", Path: n.path(), Err: underlying(err)}
		}
	}
	dst := upDir + "/" + n.name
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		os.RemoveAll(tmp)
		return nil, &fs.PathError{Op: "copy-up", Path: n.path(), Err: err}
	}
	syncDir(upDir)
	if isDir(&n.st) {
		o.dirs.clear()
	} else if n.st.Nlink > 1 {
		if err := o.linkSiblings(n, dst); err != nil {
			return nil, &fs.PathError{Op: "copy-up", Path: n.path(), Err: underlying(err)}
		}
	}
	parent, err := o.dirAt(n.parent.path)
	if err != nil {
		return nil, err
	}
	return o.lookupIn(parent, n.name)
}

// syncDir makes a rename into dir durable. Failure only weakens durability, not
// correctness, so it is not reported.
func syncDir(dir string) {
	if fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		unix.Fsync(fd)
		unix.Close(fd)
	}
}

// dirAt resolves a canonical merged dir path.
func (o *FS) dirAt(p string) (*mdir, error) {
	if p == "" {
		return o.rootDir(), nil
	}
	if d := o.dirs.get(p); d != nil {
		return d, nil
	}
	n, err := o.resolve(p, false)
	if err != nil {
		return nil, err
	}
	return o.childDir(n)
}

// ensureUpperDir makes the merged dir d (and its ancestors) exist in the upper layer and
// returns its upper path.
func (o *FS) ensureUpperDir(d *mdir) (string, error) {
	if d.hasUpper() {
		return d.parts[0].real, nil
	}
	cur := o.rootDir()
	for _, c := range strings.Split(d.path, "/") {
		n, err := o.lookupIn(cur, c)
		if err != nil {
			return "", err
		}
		if !isDir(&n.st) {
			return "", unix.ENOTDIR
		}
		if n.layer != 0 {
			if n, err = o.copyUp(n, true); err != nil {
				return "", err
			}
		}
		if cur, err = o.childDir(n); err != nil {
			return "", err
		}
	}
	return o.upperPath(d.path), nil
}

// copyObject recreates n at dst with its data and metadata and the FileID it has now.
func (o *FS) copyObject(n *node, dst string, withData bool) error {
	switch n.st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if err := copyData(n.real, dst, withData, o.midCopy); err != nil {
			return err
		}
	case unix.S_IFDIR:
		if err := unix.Mkdir(dst, 0o700); err != nil {
			return err
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(n.real)
		if err != nil {
			return err
		}
		if err := unix.Symlink(target, dst); err != nil {
			return err
		}
	default:
		if err := unix.Mknod(dst, n.st.Mode&unix.S_IFMT|0o600, int(n.st.Rdev)); err != nil {
			return err
		}
	}
	return copyMeta(n.real, &n.st, dst, fileID(n.layer, n.real, &n.st))
}

// copyData copies the regular file src to the new file dst (its data only if withData).
// midCopy, if not nil, is called with dst once half the data is copied (a test failpoint).
func copyData(src, dst string, withData bool, midCopy func(string)) error {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if withData {
		if midCopy != nil {
			fi, err := in.Stat()
			if err != nil {
				out.Close()
				return err
			}
			if _, err := io.CopyN(out, in, fi.Size()/2); err != nil {
				out.Close()
				return err
			}
			midCopy(dst)
		}
		// *os.File to *os.File uses copy_file_range, so the kernel copies (or reflinks).
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
	}
	// The rename into place must never publish data that is not on disk yet.
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// copyMeta gives dst the owner, mode, xattrs, times and FileID of the object st
// describes. chown comes before chmod because chown clears setuid/setgid; xattrs come
// after chown because chown drops security.capability; times come last because the
// other calls change them.
func copyMeta(src string, st *unix.Stat_t, dst string, id uint64) error {
	if err := copyOwnerModeXattrs(src, st, dst); err != nil {
		return err
	}
	if err := unix.Lsetxattr(dst, xattrFileID, encodeFileID(id), 0); err != nil {
		return err
	}
	return setTimes(dst, st)
}

// copyOwnerModeXattrs gives dst the owner, mode and xattrs of the object st describes, in
// the order copyMeta explains (chown, chmod, xattrs); the FileID and times are the caller's.
func copyOwnerModeXattrs(src string, st *unix.Stat_t, dst string) error {
	if err := unix.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if !isSymlink(st) {
		if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
			return err
		}
	}
	return copyXattrs(src, dst)
}

func setTimes(dst string, st *unix.Stat_t) error {
	return unix.UtimesNanoAt(unix.AT_FDCWD, dst, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
}

func copyXattrs(src, dst string) error {
	names, err := listXattrs(src)
	if err != nil {
		return err
	}
	for _, name := range names {
		if privateXattr(name) {
			continue
		}
		val, err := getXattr(src, name)
		if err == unix.ENODATA {
			continue
		}
		if err != nil {
			return err
		}
		if err := unix.Lsetxattr(dst, name, val, 0); err != nil {
			return err
		}
	}
	return nil
}

// listXattrs returns every xattr name of real, private ones included.
func listXattrs(real string) ([]string, error) {
	size := 256
	for {
		buf := make([]byte, size)
		n, err := unix.Llistxattr(real, buf)
		if err == unix.ERANGE {
			if size, err = unix.Llistxattr(real, nil); err != nil {
				return nil, err
			}
			size += 64
			continue
		}
		if err == unix.ENOTSUP {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

func getXattr(real, name string) ([]byte, error) {
	size := 256
	for {
		buf := make([]byte, size)
		n, err := unix.Lgetxattr(real, name, buf)
		if err == unix.ERANGE {
			if size, err = unix.Lgetxattr(real, name, nil); err != nil {
				return nil, err
			}
			size += 64
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}
