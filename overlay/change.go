package overlay

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// modify resolves name under the write lock, copies it up and hands the upper node to fn.
func (o *FS) modify(op, name string, follow, withData bool, fn func(n *node) error) error {
	var pre *precopied
	if withData {
		pre = o.precopy(name, follow)
		defer pre.discard()
	}
	o.lock()
	defer o.mu.Unlock()
	n, err := o.resolve(name, follow)
	if err != nil {
		return pathErr(op, name, err)
	}
	if n, err = o.copyUpWith(n, withData, pre); err != nil {
		return pathErr(op, name, err)
	}
	return pathErr(op, name, fn(n))
}

// Chmod sets the permission bits of name (following symlinks), setuid, setgid and sticky
// included.
func (o *FS) Chmod(name string, mode os.FileMode) error {
	return o.modify("chmod", name, true, true, func(n *node) error {
		return unix.Chmod(n.real, permBits(mode))
	})
}

// Lchown sets the owner of name itself, not of a symlink's target; -1 keeps a value.
func (o *FS) Lchown(name string, uid, gid int) error {
	return o.modify("lchown", name, false, true, func(n *node) error {
		return unix.Lchown(n.real, uid, gid)
	})
}

// Chtimes sets access and modification times of name, following symlinks.
func (o *FS) Chtimes(name string, atime, mtime time.Time) error {
	return o.modify("chtimes", name, true, true, func(n *node) error {
		return utimes(n.real, atime, mtime)
	})
}

func utimes(real string, atime, mtime time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, real, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// Truncate sets the size of the file name; truncating a lower file to zero copies up
// only its metadata.
func (o *FS) Truncate(name string, size int64) error {
	if size < 0 {
		return pathErr("truncate", name, unix.EINVAL)
	}
	var pre *precopied
	if size != 0 {
		pre = o.precopy(name, true)
		defer pre.discard()
	}
	o.lock()
	defer o.mu.Unlock()
	n, err := o.resolve(name, true)
	if err != nil {
		return pathErr("truncate", name, err)
	}
	if isDir(&n.st) {
		return pathErr("truncate", name, unix.EISDIR)
	}
	if n.st.Mode&unix.S_IFMT != unix.S_IFREG {
		return pathErr("truncate", name, unix.EINVAL)
	}
	if n, err = o.copyUpWith(n, size != 0, pre); err != nil {
		return pathErr("truncate", name, err)
	}
	return pathErr("truncate", name, unix.Truncate(n.real, size))
}

// Link makes newname a hard link to oldname (not followed). A lower file is copied up
// first, so both names then share one upper inode and its nlink.
func (o *FS) Link(oldname, newname string) error {
	o.lock()
	defer o.mu.Unlock()
	src, err := o.resolve(oldname, false)
	if err != nil {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: underlying(err)}
	}
	// The kernel's order decides the errno: an existing new name wins over a dir source.
	d, base, dst, err := o.walk(newname, false)
	if err == nil && (dst != nil || d == nil) {
		err = unix.EEXIST
	}
	if err == nil && isDir(&src.st) {
		err = unix.EPERM
	}
	if err != nil {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: underlying(err)}
	}
	if src, err = o.copyUp(src, true); err != nil {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: underlying(err)}
	}
	if d, err = o.dirAt(d.path); err == nil {
		_, err = o.createIn(d, base, newLink, func(p string) error { return unix.Link(src.real, p) })
	}
	if err != nil {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: underlying(err)}
	}
	return nil
}

// Mknod creates a char or block device, fifo, socket or empty regular file; mode
// carries the S_IF* type and the permissions, applied exactly (no umask).
func (o *FS) Mknod(name string, mode uint32, dev uint64) error {
	switch mode & unix.S_IFMT {
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK, unix.S_IFREG:
	case 0:
		mode |= unix.S_IFREG
	default:
		return pathErr("mknod", name, unix.EINVAL)
	}
	if mode&unix.S_IFMT == unix.S_IFCHR && dev == 0 {
		// A 0/0 char device is a whiteout on disk: it would hide the name, not create it.
		return pathErr("mknod", name, unix.EPERM)
	}
	return o.create("mknod", name, false, func(p string) error {
		if err := unix.Mknod(p, mode&unix.S_IFMT|0o600, int(dev)); err != nil {
			return err
		}
		return unix.Chmod(p, mode&0o7777)
	})
}

// Symlink creates link pointing at target, which is stored as given and may dangle.
// Missing parents are not created (NFS wants ENOENT).
func (o *FS) Symlink(target, link string) error {
	if target == "" {
		return pathErr("symlink", link, unix.ENOENT)
	}
	return o.create("symlink", link, true, func(p string) error { return unix.Symlink(target, p) })
}

func (o *FS) create(op, name string, clearCache bool, mk func(string) error) error {
	o.lock()
	defer o.mu.Unlock()
	d, base, n, err := o.walk(name, false)
	if err != nil {
		return pathErr(op, name, err)
	}
	if n != nil || d == nil {
		return pathErr(op, name, unix.EEXIST)
	}
	if clearCache {
		defer o.dirs.clear()
	}
	_, err = o.createIn(d, base, newObject, mk)
	return pathErr(op, name, err)
}

// Readlink returns the target of the symlink link.
func (o *FS) Readlink(link string) (string, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	n, err := o.resolve(link, false)
	if err != nil {
		return "", pathErr("readlink", link, err)
	}
	if !isSymlink(&n.st) {
		return "", pathErr("readlink", link, unix.EINVAL)
	}
	t, err := os.Readlink(n.real)
	return t, pathErr("readlink", link, err)
}

// Getxattr returns the value of attr on name (not followed).
func (o *FS) Getxattr(name, attr string) ([]byte, error) {
	if privateXattr(attr) {
		return nil, pathErr("getxattr", name, unix.ENODATA)
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	n, err := o.resolve(name, false)
	if err != nil {
		return nil, pathErr("getxattr", name, err)
	}
	v, err := getXattr(n.real, attr)
	return v, pathErr("getxattr", name, err)
}

// Listxattr lists the xattr names of name (not followed), the overlay's own hidden.
func (o *FS) Listxattr(name string) ([]string, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	n, err := o.resolve(name, false)
	if err != nil {
		return nil, pathErr("listxattr", name, err)
	}
	all, err := listXattrs(n.real)
	if err != nil {
		return nil, pathErr("listxattr", name, err)
	}
	names := all[:0]
	for _, a := range all {
		if !privateXattr(a) {
			names = append(names, a)
		}
	}
	return names, nil
}

// Setxattr sets attr on name (not followed); flags are unix.XATTR_CREATE/XATTR_REPLACE.
// The overlay's own attributes cannot be set.
func (o *FS) Setxattr(name, attr string, value []byte, flags int) error {
	if privateXattr(attr) {
		return pathErr("setxattr", name, unix.EPERM)
	}
	return o.modify("setxattr", name, false, true, func(n *node) error {
		return unix.Lsetxattr(n.real, attr, value, flags)
	})
}

// Removexattr removes attr from name (not followed).
func (o *FS) Removexattr(name, attr string) error {
	if privateXattr(attr) {
		return pathErr("removexattr", name, unix.EPERM)
	}
	return o.modify("removexattr", name, false, true, func(n *node) error {
		return unix.Lremovexattr(n.real, attr)
	})
}
