package overlay

import (
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Stat describes name, following symlinks inside the overlay root.
func (o *FS) Stat(name string) (os.FileInfo, error) { return o.stat("stat", name, true) }

// Lstat describes name without following a final symlink. It is the NFS LOOKUP/GETATTR
// hot path: for a name in an already resolved dir it costs one lstat per layer that
// dir is made of, and no xattr read unless the object is in the upper.
func (o *FS) Lstat(name string) (os.FileInfo, error) { return o.stat("lstat", name, false) }

func (o *FS) stat(op, name string, follow bool) (os.FileInfo, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	n, err := o.resolve(name, follow)
	if err != nil {
		return nil, pathErr(op, name, err)
	}
	fi := &foundInfo{loc: Loc{o: o, name: name, gen: o.gen, layer: n.layer, mode: n.st.Mode, real: n.real}}
	n.fill(&fi.fileInfo)
	return fi, nil
}

// createKind says what createIn makes: it decides opaqueness and group inheritance.
type createKind int

const (
	newObject createKind = iota // file, device, fifo, socket, symlink
	newDir
	newLink // hard link to an existing inode
)

// createIn makes the new object name in the merged dir d through mk, in the upper. If the
// upper holds a whiteout there, the object is made in Work and renamed over it (a
// directory is exchanged with it and made opaque, so the lower dir it replaces stays
// hidden); the name never shows the lower object in between.
func (o *FS) createIn(d *mdir, name string, kind createKind, mk func(string) error) (string, error) {
	dir := kind == newDir
	if len(name) > 255 {
		return "", unix.ENAMETOOLONG
	}
	upDir, err := o.ensureUpperDir(d)
	if err != nil {
		return "", err
	}
	dst := upDir + "/" + name
	var st unix.Stat_t
	err = unix.Lstat(dst, &st)
	if err == unix.ENOENT {
		return dst, mk(dst)
	}
	if err != nil {
		return "", err
	}
	if !isWhiteout(&st) {
		return "", unix.EEXIST
	}
	tmp := o.tempName()
	if err := mk(tmp); err != nil {
		return "", err
	}
	// A hard link makes no inode: its group stays the file's own.
	if kind != newLink {
		if err := inheritGroup(upDir, tmp); err != nil {
			os.RemoveAll(tmp)
			return "", err
		}
	}
	if dir {
		if err := unix.Lsetxattr(tmp, xattrOpaque, []byte("y"), 0); err != nil {
			os.RemoveAll(tmp)
			return "", err
		}
		if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_EXCHANGE); err != nil {
			os.RemoveAll(tmp)
			return "", err
		}
		unix.Unlink(tmp)
		return dst, nil
	}
	if err := unix.Rename(tmp, dst); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	return dst, nil
}

// inheritGroup gives an object made in Work the group a setgid parent dir would have
// given it had it been made in place. The mode stays what the caller asked for, as in the
// direct path, where chmod after mkdir makes it exact.
func inheritGroup(parent, obj string) error {
	var pst, st unix.Stat_t
	if err := unix.Stat(parent, &pst); err != nil {
		return err
	}
	if pst.Mode&unix.S_ISGID == 0 {
		return nil
	}
	if err := unix.Lstat(obj, &st); err != nil {
		return err
	}
	if err := unix.Lchown(obj, -1, int(pst.Gid)); err != nil {
		return err
	}
	if isSymlink(&st) {
		return nil
	}
	return unix.Chmod(obj, st.Mode&0o7777) // chown cleared setuid/setgid
}

// Mkdir creates one directory with exactly perm (no umask).
func (o *FS) Mkdir(name string, perm os.FileMode) error {
	o.lock()
	defer o.mu.Unlock()
	d, base, n, err := o.walk(name, false)
	if err != nil {
		return pathErr("mkdir", name, err)
	}
	if n != nil || d == nil {
		return pathErr("mkdir", name, unix.EEXIST)
	}
	return pathErr("mkdir", name, o.mkdirIn(d, base, perm))
}

func (o *FS) mkdirIn(d *mdir, name string, perm os.FileMode) error {
	_, err := o.createIn(d, name, newDir, func(p string) error {
		if err := unix.Mkdir(p, 0o700); err != nil {
			return err
		}
		return unix.Chmod(p, permBits(perm))
	})
	o.dirs.clear()
	return err
}

// MkdirAll creates name and any missing parents with perm; existing dirs are left alone.
// It walks the path once, so deep paths cost linear time.
func (o *FS) MkdirAll(name string, perm os.FileMode) error {
	o.lock()
	defer o.mu.Unlock()
	stack := []*mdir{o.rootDir()}
	done := ""
	for _, c := range strings.Split(name, "/") {
		done = joinPath(done, c)
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		cur := stack[len(stack)-1]
		n, err := o.lookupIn(cur, c)
		if err == unix.ENOENT {
			if err = o.mkdirIn(cur, c, perm); err != nil {
				return pathErr("mkdir", done, err)
			}
			cur = withUpper(cur, o.upperPath(cur.path))
			n, err = o.lookupIn(cur, c)
		}
		if err == nil && isSymlink(&n.st) {
			// Rare: let the general walk follow it inside the root.
			n, err = o.resolve(joinPath(cur.path, c), true)
		}
		if err != nil {
			return pathErr("mkdir", done, err)
		}
		d, err := o.childDir(n)
		if err != nil {
			return pathErr("mkdir", done, err)
		}
		stack = append(stack, d)
	}
	return nil
}

// withUpper is d after its upper dir was created at upper.
func withUpper(d *mdir, upper string) *mdir {
	if d.hasUpper() {
		return d
	}
	return &mdir{path: d.path, parts: append([]layerDir{{layer: 0, real: upper}}, d.parts...)}
}

// ReadDir lists the merged dir name sorted by name: each name once, from the topmost
// layer that has it; whiteouts hide names, an opaque dir hides everything below it.
func (o *FS) ReadDir(name string) ([]os.FileInfo, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	n, err := o.resolve(name, true)
	if err != nil {
		return nil, pathErr("readdir", name, err)
	}
	d, err := o.childDir(n)
	if err != nil {
		return nil, pathErr("readdir", name, err)
	}
	ents, err := o.merged(d, false)
	if err != nil {
		return nil, pathErr("readdir", name, err)
	}
	infos := make([]os.FileInfo, len(ents))
	for i, e := range ents {
		infos[i] = e.info()
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name() < infos[j].Name() })
	return infos, nil
}

// merged returns the visible entries of d; firstOnly stops at the first one (emptiness).
func (o *FS) merged(d *mdir, firstOnly bool) ([]*node, error) {
	// A dir made of one layer, the common case, needs no duplicate tracking.
	var seen map[string]bool
	if len(d.parts) > 1 {
		seen = make(map[string]bool)
	}
	var out []*node
	for i, p := range d.parts {
		err := statNames(p.real, func(name string, st *unix.Stat_t) bool {
			if seen != nil {
				if seen[name] {
					return true
				}
				seen[name] = true
			}
			if isWhiteout(st) {
				return true
			}
			out = append(out, &node{parent: d, name: name, part: i, layer: p.layer, real: p.real + "/" + name, st: *st})
			return !firstOnly
		})
		if err != nil {
			return nil, err
		}
		if firstOnly && len(out) > 0 {
			return out, nil
		}
	}
	return out, nil
}

// statNames calls f with each entry of dir and its lstat, until f returns false. Entries
// are stat'ed relative to the open directory (fstatat), not by their full path: a big
// directory costs one path walk, not one per entry. Entries gone meanwhile are skipped.
func statNames(dir string, f func(name string, st *unix.Stat_t) bool) error {
	d, err := os.Open(dir)
	if err != nil {
		return underlying(err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return underlying(err)
	}
	rc, err := d.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		var st unix.Stat_t
		for _, name := range names {
			if err := unix.Fstatat(int(fd), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if err == unix.ENOENT {
					continue
				}
				serr = err
				return
			}
			if !f(name, &st) {
				return
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, underlying(err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	return names, underlying(err)
}

func (o *FS) isEmptyDir(d *mdir) (bool, error) {
	ents, err := o.merged(d, true)
	return len(ents) == 0, err
}

// lowerHas reports whether a layer of d below the upper would show name once the upper's
// own entry is gone: then removing it must leave a whiteout.
func (o *FS) lowerHas(d *mdir, name string) bool {
	for _, p := range d.parts {
		if p.layer == 0 {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(p.real+"/"+name, &st); err != nil {
			continue
		}
		return !isWhiteout(&st)
	}
	return false
}

// Remove removes a file or an empty (in the merged view) directory. If a lower still has
// the name, a whiteout takes its place in the upper; a lower object is never touched.
func (o *FS) Remove(name string) error {
	o.lock()
	defer o.mu.Unlock()
	n, err := o.resolve(name, false)
	if err != nil {
		return pathErr("remove", name, err)
	}
	return pathErr("remove", name, o.removeNode(n))
}

func (o *FS) removeNode(n *node) error {
	if n.parent == nil {
		return unix.EBUSY
	}
	dir := isDir(&n.st)
	if dir {
		d, err := o.childDir(n)
		if err != nil {
			return err
		}
		empty, err := o.isEmptyDir(d)
		if err != nil {
			return err
		}
		if !empty {
			return unix.ENOTEMPTY
		}
	}
	if dir || isSymlink(&n.st) {
		defer o.dirs.clear()
	}
	if n.layer != 0 {
		upDir, err := o.ensureUpperDir(n.parent)
		if err != nil {
			return err
		}
		return unix.Mknod(upDir+"/"+n.name, unix.S_IFCHR, 0)
	}
	needWhiteout := o.lowerHas(n.parent, n.name)
	switch {
	case needWhiteout:
		return o.replaceWithWhiteout(n.real, dir)
	case dir:
		// Moved out first, emptied after: a crash never leaves the dir without the
		// whiteouts that hide its lower entries.
		tmp := o.tempName()
		if err := unix.Rename(n.real, tmp); err != nil {
			return err
		}
		return os.RemoveAll(tmp)
	default:
		return unix.Unlink(n.real)
	}
}

// replaceWithWhiteout swaps the upper object at real for a whiteout in one step, so the
// lower object below never shows through.
func (o *FS) replaceWithWhiteout(real string, dir bool) error {
	tmp := o.tempName()
	if err := unix.Mknod(tmp, unix.S_IFCHR, 0); err != nil {
		return err
	}
	if !dir {
		if err := unix.Rename(tmp, real); err != nil {
			unix.Unlink(tmp)
			return err
		}
		return nil
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, real, unix.RENAME_EXCHANGE); err != nil {
		unix.Unlink(tmp)
		return err
	}
	return os.RemoveAll(tmp)
}
