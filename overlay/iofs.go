package overlay

import (
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// IOFS returns a read-only io/fs view of the merged subtree dir (TFTP serves a board's
// /boot/firmware through it). Symlinks resolve as the board would see them, inside the
// overlay root; whatever resolves outside dir is refused with fs.ErrPermission.
func (o *FS) IOFS(dir string) fs.FS { return &subFS{o: o, dir: dir} }

type subFS struct {
	o   *FS
	dir string
}

func (s *subFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	o := s.o
	o.mu.RLock()
	defer o.mu.RUnlock()
	base, err := o.resolve(s.dir, true)
	if err != nil {
		return nil, pathErr("open", name, err)
	}
	if !isDir(&base.st) {
		return nil, pathErr("open", name, unix.ENOTDIR)
	}
	n, err := o.resolve(joinPath(strings.TrimLeft(s.dir, "/"), name), true)
	if err != nil {
		return nil, pathErr("open", name, err)
	}
	if base.path() != "" && n.path() != base.path() && !strings.HasPrefix(n.path(), base.path()+"/") {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrPermission}
	}
	f := &subFile{o: o, n: n}
	if isDir(&n.st) {
		return f, nil
	}
	if n.st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, pathErr("open", name, unix.ENXIO)
	}
	if f.f, err = os.OpenFile(n.real, os.O_RDONLY|unix.O_NOFOLLOW, 0); err != nil {
		return nil, pathErr("open", name, err)
	}
	return f, nil
}

// subFile is a file or directory opened through IOFS. Directories keep no descriptor:
// ReadDir lists the merged view afresh.
type subFile struct {
	o    *FS
	n    *node
	f    *os.File
	ents []fs.DirEntry
	read bool
}

var (
	_ io.ReaderAt    = (*subFile)(nil)
	_ io.Seeker      = (*subFile)(nil)
	_ fs.ReadDirFile = (*subFile)(nil)
)

func (f *subFile) Stat() (fs.FileInfo, error) { return f.n.info(), nil }

func (f *subFile) Read(p []byte) (int, error) {
	if f.f == nil {
		return 0, pathErr("read", f.n.path(), unix.EISDIR)
	}
	return f.f.Read(p)
}

func (f *subFile) ReadAt(p []byte, off int64) (int, error) {
	if f.f == nil {
		return 0, pathErr("read", f.n.path(), unix.EISDIR)
	}
	return f.f.ReadAt(p, off)
}

func (f *subFile) Seek(off int64, whence int) (int64, error) {
	if f.f == nil {
		return 0, pathErr("seek", f.n.path(), unix.EISDIR)
	}
	return f.f.Seek(off, whence)
}

func (f *subFile) Close() error {
	if f.f == nil {
		return nil
	}
	return f.f.Close()
}

func (f *subFile) ReadDir(count int) ([]fs.DirEntry, error) {
	if f.f != nil {
		return nil, pathErr("readdir", f.n.path(), unix.ENOTDIR)
	}
	if !f.read {
		f.read = true
		f.o.mu.RLock()
		d, err := f.o.childDir(f.n)
		var ents []*node
		if err == nil {
			ents, err = f.o.merged(d, false)
		}
		f.o.mu.RUnlock()
		if err != nil {
			return nil, pathErr("readdir", f.n.path(), err)
		}
		for _, e := range ents {
			f.ents = append(f.ents, fs.FileInfoToDirEntry(e.info()))
		}
		sort.Slice(f.ents, func(i, j int) bool { return f.ents[i].Name() < f.ents[j].Name() })
	}
	if count <= 0 {
		out := f.ents
		f.ents = nil
		return out, nil
	}
	if len(f.ents) == 0 {
		return nil, io.EOF
	}
	count = min(count, len(f.ents))
	out := f.ents[:count]
	f.ents = f.ents[count:]
	return out, nil
}
