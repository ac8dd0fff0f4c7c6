package overlay

import (
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Rename moves oldpath to newpath with POSIX semantics (an existing non-dir or empty dir at
// newpath is replaced). Files move inside the upper after a copy-up, leaving a whiteout
// when a lower still has the old name. Directories move too, unlike the kernel's EXDEV: a
// dir that exists only in the upper is renamed there; a dir with lower parts has its
// merged subtree copied up under a temp name in Work (upper files are hard-linked, not
// copied, so their inodes, FileIDs and links are kept), renamed into place and made
// opaque, and the old name becomes a whiteout.
func (o *FS) Rename(oldpath, newpath string) error {
	o.lock()
	defer o.mu.Unlock()
	defer o.dirs.clear()
	if err := o.rename(oldpath, newpath); err != nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: underlying(err)}
	}
	return nil
}

func (o *FS) rename(oldpath, newpath string) error {
	// Both parents first, then the names: the kernel's order, which decides the errno.
	_, _, src, err := o.walk(oldpath, false)
	if err != nil {
		return err
	}
	dd, dname, dst, err := o.walk(newpath, false)
	if err != nil {
		return err
	}
	if src == nil {
		return unix.ENOENT
	}
	if src.parent == nil || dd == nil {
		return unix.EBUSY
	}
	srcIsDir := isDir(&src.st)
	if srcIsDir && (dd.path == src.path() || strings.HasPrefix(dd.path+"/", src.path()+"/")) {
		return unix.EINVAL
	}
	if dst != nil && isDir(&dst.st) && strings.HasPrefix(src.path(), dst.path()+"/") {
		return unix.ENOTEMPTY // the kernel's answer for renaming onto an ancestor
	}
	if dst != nil {
		if dst.layer == src.layer && dst.st.Ino == src.st.Ino && dst.st.Dev == src.st.Dev {
			return nil
		}
		dstIsDir := isDir(&dst.st)
		if srcIsDir && !dstIsDir {
			return unix.ENOTDIR
		}
		if !srcIsDir && dstIsDir {
			return unix.EISDIR
		}
		if dstIsDir {
			d, err := o.childDir(dst)
			if err != nil {
				return err
			}
			if empty, err := o.isEmptyDir(d); err != nil || !empty {
				if err == nil {
					err = unix.ENOTEMPTY
				}
				return err
			}
		}
	}
	whiteout := src.layer != 0 || o.lowerHas(src.parent, src.name)
	if !srcIsDir {
		return o.renameFile(src, dd, dname, whiteout)
	}
	return o.renameDir(src, dd, dname, dst, whiteout)
}

func renameFlags(whiteout bool) uint {
	if whiteout {
		return unix.RENAME_WHITEOUT
	}
	return 0
}

func (o *FS) renameFile(src *node, dd *mdir, dname string, whiteout bool) error {
	src, err := o.copyUp(src, true)
	if err != nil {
		return err
	}
	dUp, err := o.ensureUpperDir(dd)
	if err != nil {
		return err
	}
	return unix.Renameat2(unix.AT_FDCWD, src.real, unix.AT_FDCWD, dUp+"/"+dname, renameFlags(whiteout))
}

func (o *FS) renameDir(src *node, dd *mdir, dname string, dst *node, whiteout bool) error {
	sd, err := o.childDir(src)
	if err != nil {
		return err
	}
	// A lower dir at the destination would merge into the moved dir unless it is opaque.
	needOpaque := o.lowerDirAt(dd, dname)
	if len(sd.parts) == 1 && sd.parts[0].layer == 0 {
		dUp, err := o.ensureUpperDir(dd)
		if err != nil {
			return err
		}
		if needOpaque {
			if err := unix.Lsetxattr(src.real, xattrOpaque, []byte("y"), 0); err != nil {
				return err
			}
		}
		if err := o.prepareDirTarget(dUp+"/"+dname, dst); err != nil {
			return err
		}
		return moveDir(src.real, dUp+"/"+dname, renameFlags(whiteout))
	}

	tmp := o.tempName()
	if err := o.copyTree(sd, src, tmp, make(map[linkKey]string)); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := unix.Lsetxattr(tmp, xattrOpaque, []byte("y"), 0); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	dUp, err := o.ensureUpperDir(dd)
	if err == nil {
		err = o.prepareDirTarget(dUp+"/"+dname, dst)
	}
	if err == nil {
		err = moveDir(tmp, dUp+"/"+dname, 0)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if sd.hasUpper() {
		return o.replaceWithWhiteout(sd.parts[0].real, true)
	}
	sUp, err := o.ensureUpperDir(src.parent)
	if err != nil {
		return err
	}
	return unix.Mknod(sUp+"/"+src.name, unix.S_IFCHR, 0)
}

// lowerDirAt reports whether a layer of d below the upper has a visible dir called name.
func (o *FS) lowerDirAt(d *mdir, name string) bool {
	for _, p := range d.parts {
		if p.layer == 0 {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(p.real+"/"+name, &st); err != nil {
			continue
		}
		return isDir(&st)
	}
	return false
}

// prepareDirTarget turns an upper dir about to be replaced (merged-empty, so it holds only
// whiteouts) into a whiteout in one step; moveDir then puts the new dir over that. Emptying
// it in place instead would let a crash uncover the lower entries its whiteouts hide.
func (o *FS) prepareDirTarget(target string, dst *node) error {
	if dst != nil && dst.layer == 0 {
		return o.replaceWithWhiteout(target, true)
	}
	return nil
}

// moveDir renames dir from onto target, which may be missing, an empty dir or a
// whiteout; rename(2) cannot put a dir over a whiteout, so that case is an exchange.
func moveDir(from, target string, flags uint) error {
	var st unix.Stat_t
	if err := unix.Lstat(target, &st); err == nil && isWhiteout(&st) {
		if flags&unix.RENAME_WHITEOUT != 0 {
			// The whiteout now at target is exactly what the old name needs.
			return unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, target, unix.RENAME_EXCHANGE)
		}
		if err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, target, unix.RENAME_EXCHANGE); err != nil {
			return err
		}
		return unix.Unlink(from)
	}
	return unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, target, flags)
}

type linkKey struct {
	layer int
	ino   uint64
}

// copyTree recreates the merged dir d (whose node is top) at dstReal. Upper non-dirs are
// hard-linked; lower ones are copied, lower hard links inside the tree stay linked.
func (o *FS) copyTree(d *mdir, top *node, dstReal string, links map[linkKey]string) error {
	if err := unix.Mkdir(dstReal, 0o700); err != nil {
		return err
	}
	ents, err := o.merged(d, false)
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := dstReal + "/" + e.name
		switch {
		case isDir(&e.st):
			cd, err := o.childDir(e)
			if err != nil {
				return err
			}
			if err := o.copyTree(cd, e, p, links); err != nil {
				return err
			}
		case e.layer == 0:
			if err := unix.Link(e.real, p); err != nil {
				return err
			}
		default:
			k := linkKey{e.layer, e.st.Ino}
			if first, ok := links[k]; ok {
				if err := unix.Link(first, p); err != nil {
					return err
				}
				continue
			}
			if err := o.copyObject(e, p, true); err != nil {
				return err
			}
			if e.st.Nlink > 1 {
				links[k] = p
			}
		}
	}
	return copyMeta(top.real, &top.st, dstReal, fileID(top.layer, top.real, &top.st))
}
