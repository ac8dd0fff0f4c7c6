package overlay

import (
	"io/fs"
	"os"
	"path"
	"syscall"

	"golang.org/x/sys/unix"
)

// File is what Open, OpenFile and Create return: an open file that also offers WriteAt,
// Sync, Stat and Getxattr, because the NFS server keeps files open across READ, WRITE and
// COMMIT and checks permissions of a file it knows only by its descriptor.
type File struct {
	name  string
	f     *os.File
	layer int
}

// Name is the name the file was opened with.
func (f *File) Name() string { return f.name }

// Read reads from the current offset.
func (f *File) Read(p []byte) (int, error) { return f.f.Read(p) }

// ReadAt reads at off without moving the offset.
func (f *File) ReadAt(p []byte, off int64) (int, error) { return f.f.ReadAt(p, off) }

// Write writes at the current offset (at the end when opened with O_APPEND).
func (f *File) Write(p []byte) (int, error) { return f.f.Write(p) }

// WriteAt writes at off without moving the offset.
func (f *File) WriteAt(p []byte, off int64) (int, error) { return f.f.WriteAt(p, off) }

// Seek moves the offset.
func (f *File) Seek(off int64, whence int) (int64, error) { return f.f.Seek(off, whence) }

// SyscallConn gives access to the file's descriptor, for the NFS server's READ, which
// splices file data into the client's socket instead of copying it through a buffer.
func (f *File) SyscallConn() (syscall.RawConn, error) { return f.f.SyscallConn() }

// Close releases the file.
func (f *File) Close() error { return f.f.Close() }

// Sync flushes the file's data and metadata to disk (NFS COMMIT).
func (f *File) Sync() error { return f.f.Sync() }

// Truncate changes the size of the file.
func (f *File) Truncate(size int64) error { return f.f.Truncate(size) }

// Stat describes the open file, with *Stat in Sys() like the FS's own Stat.
func (f *File) Stat() (os.FileInfo, error) {
	rc, err := f.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	var id uint64
	var serr error
	err = rc.Control(func(fd uintptr) {
		if serr = unix.Fstat(int(fd), &st); serr != nil {
			return
		}
		id = makeFileID(f.layer, st.Ino)
		if f.layer == 0 {
			var buf [8]byte
			if n, err := unix.Fgetxattr(int(fd), xattrFileID, buf[:]); err == nil && n == 8 {
				id = decodeFileID(buf[:])
			}
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return nil, pathErr("stat", f.name, err)
	}
	return &fileInfo{name: path.Base(f.name), st: toStat(id, &st)}, nil
}

// Open opens name for reading.
func (o *FS) Open(name string) (*File, error) { return o.OpenFile(name, os.O_RDONLY, 0) }

// Create creates or truncates name for reading and writing.
func (o *FS) Create(name string) (*File, error) {
	return o.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
}

// OpenFile opens name like os.OpenFile. Opening a lower file for writing (or with
// O_TRUNC) copies it up first. A new file gets exactly perm (no umask) and is owned by
// the server; the caller chowns it. Parents are not created. O_CREATE|O_EXCL is atomic.
// Device nodes, fifos and sockets cannot be opened: they would be the server's devices.
func (o *FS) OpenFile(name string, flag int, perm os.FileMode) (*File, error) {
	acc := flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
	writes := acc != os.O_RDONLY || flag&os.O_TRUNC != 0
	if !writes && flag&os.O_CREATE == 0 {
		o.mu.RLock()
		defer o.mu.RUnlock()
		n, err := o.resolve(name, true)
		if err != nil {
			return nil, pathErr("open", name, err)
		}
		return o.openNode(name, n, flag)
	}
	var pre *precopied
	if flag&(os.O_TRUNC|os.O_EXCL) == 0 {
		pre = o.precopy(name, true)
		defer pre.discard()
	}
	o.lock()
	defer o.mu.Unlock()
	excl := flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0
	d, base, n, err := o.walk(name, !excl)
	if err != nil {
		return nil, pathErr("open", name, err)
	}
	if n == nil {
		if flag&os.O_CREATE == 0 || d == nil {
			return nil, pathErr("open", name, unix.ENOENT)
		}
		var f *os.File
		_, err := o.createIn(d, base, newObject, func(p string) error {
			var err error
			f, err = os.OpenFile(p, flag&^os.O_TRUNC|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
			if err != nil {
				return err
			}
			if err = f.Chmod(perm & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)); err != nil {
				f.Close()
				os.Remove(p)
			}
			return err
		})
		if err != nil {
			return nil, pathErr("create", name, err)
		}
		return &File{name: name, f: f}, nil
	}
	if excl {
		return nil, pathErr("open", name, unix.EEXIST)
	}
	if isDir(&n.st) && writes {
		return nil, pathErr("open", name, unix.EISDIR)
	}
	if writes && n.layer != 0 {
		if n, err = o.copyUpWith(n, flag&os.O_TRUNC == 0, pre); err != nil {
			return nil, pathErr("open", name, err)
		}
	}
	return o.openNode(name, n, flag&^(os.O_CREATE|os.O_EXCL))
}

// Loc is where a Stat or Lstat of this FS found an object: its layer and real path, and
// the FS's change count then. OpenLoc opens the file there without a second lookup for as
// long as nothing in the upper has changed since (a copy-up, whiteout, rename, any change
// made through the FS moves the count); a Loc of another FS, or of another state of this
// one, is never used. The zero Loc is valid and never used either.
type Loc struct {
	o     *FS
	name  string // as given to Stat or Lstat
	gen   uint64
	layer int
	mode  uint32
	real  string
}

// LocOf returns the location fi was found at, if fi came from Stat or Lstat of an FS.
func LocOf(fi fs.FileInfo) (Loc, bool) {
	f, ok := fi.(*foundInfo)
	if !ok {
		return Loc{}, false
	}
	return f.loc, true
}

// foundInfo is what Stat and Lstat return: the object's status and where it was found.
type foundInfo struct {
	fileInfo
	loc Loc
}

// OpenLoc opens name for reading, as Open does. loc is where an earlier Stat or Lstat of
// name found it (LocOf): if the FS has not changed since, the regular file is opened right
// there, without walking the path again; otherwise (or for any other loc) name is looked
// up as Open would. Either way the file opened is the one name resolves to now, which is
// what an NFS READ after a LOOKUP needs, at the cost of one open instead of a lookup and
// an open.
func (o *FS) OpenLoc(name string, loc Loc) (*File, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if loc.o != o || loc.gen != o.gen || loc.name != name || loc.real == "" || loc.mode&unix.S_IFMT != unix.S_IFREG {
		n, err := o.resolve(name, true)
		if err != nil {
			return nil, pathErr("open", name, err)
		}
		return o.openNode(name, n, os.O_RDONLY)
	}
	f, err := openReal(loc.real, os.O_RDONLY|unix.O_NOFOLLOW)
	if err != nil {
		return nil, pathErr("open", name, err)
	}
	return &File{name: name, f: f, layer: loc.layer}, nil
}

func (o *FS) openNode(name string, n *node, flag int) (*File, error) {
	switch n.st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR:
	default:
		return nil, pathErr("open", name, unix.ENXIO)
	}
	f, err := openReal(n.real, flag|unix.O_NOFOLLOW)
	if err != nil {
		return nil, pathErr("open", name, err)
	}
	return &File{name: name, f: f, layer: n.layer}, nil
}

// openReal opens an existing real file or directory like os.OpenFile, but does not offer
// the descriptor to the netpoller: os.OpenFile does for every file (fcntl twice, epoll_ctl,
// which a regular file or directory refuses, and fcntl twice again), five syscalls that
// were a third of those of a small file's NFS READ.
func openReal(p string, flag int) (*os.File, error) {
	for {
		fd, err := unix.Open(p, flag|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: p, Err: err}
		}
		return os.NewFile(uintptr(fd), p), nil
	}
}

// Getxattr returns the value of attr on the open file, wherever its name now is (or after
// it was removed): what a permission check on an open file's handle must read.
func (f *File) Getxattr(attr string) ([]byte, error) {
	if privateXattr(attr) {
		return nil, pathErr("getxattr", f.name, unix.ENODATA)
	}
	rc, err := f.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var val []byte
	var gerr error
	err = rc.Control(func(fd uintptr) {
		for range 4 { // the value may grow between the size query and the read
			var n int
			if n, gerr = unix.Fgetxattr(int(fd), attr, nil); gerr != nil {
				return
			}
			val = make([]byte, n+64)
			n, gerr = unix.Fgetxattr(int(fd), attr, val)
			if gerr == nil {
				val = val[:n]
				return
			}
			if gerr != unix.ERANGE {
				return
			}
		}
	})
	if err == nil {
		err = gerr
	}
	if err != nil {
		return nil, pathErr("getxattr", f.name, err)
	}
	return val, nil
}
