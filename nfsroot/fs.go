package nfsroot

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/pifleet/pifleet/overlay"
	"github.com/willscott/go-nfs"
)

// FileSystem is what nfsroot needs from a board's root: the methods of *overlay.FS it
// calls, and no more. It is an interface so that a test can put a gate in front of one
// call; the server passes the board's *overlay.FS. Paths are slash paths from the root ("/").
type FileSystem interface {
	Lstat(name string) (fs.FileInfo, error)
	ReadDir(name string) ([]fs.FileInfo, error)
	Readlink(name string) (string, error)
	// OpenFile opens like os.OpenFile; the file stays open across READ, WRITE and COMMIT
	// (files.go), which read, write, sync, stat and read ACLs through its descriptor.
	OpenFile(name string, flag int, perm os.FileMode) (*overlay.File, error)
	// OpenLoc opens name for reading where the Lstat that gave loc found it, if nothing
	// changed since (else it looks name up again): READ after LOOKUP walks no path twice.
	OpenLoc(name string, loc overlay.Loc) (*overlay.File, error)
	Mkdir(name string, perm os.FileMode) error // fails with EEXIST, unlike MkdirAll
	Symlink(target, link string) error
	Link(oldname, newname string) error
	Mknod(name string, mode uint32, dev uint64) error
	Remove(name string) error
	Rename(from, to string) error
	Chmod(name string, mode os.FileMode) error
	Lchown(name string, uid, gid int) error
	Chtimes(name string, atime, mtime time.Time) error
	Truncate(name string, size int64) error
	// POSIX ACLs live in xattrs (acl.go); Setxattr and Removexattr copy a lower object up.
	Getxattr(name, attr string) ([]byte, error)
	Setxattr(name, attr string, value []byte, flags int) error
	Removexattr(name, attr string) error
}

// fstat is the part of a file's status NFS reports, taken from the overlay's Stat, and
// where the overlay found the file (for OpenLoc; zero when not found by a lookup).
type fstat struct {
	fileID              uint64
	mode                uint32 // raw st_mode: type bits and 07777
	uid, gid, nlink     uint32
	rdev                uint64
	size, blocks        int64
	atime, mtime, ctime time.Time
	loc                 overlay.Loc
}

const (
	sIFMT   = 0o170000
	sIFSOCK = 0o140000
	sIFLNK  = 0o120000
	sIFREG  = 0o100000
	sIFBLK  = 0o060000
	sIFDIR  = 0o040000
	sIFCHR  = 0o020000
	sIFIFO  = 0o010000
)

func (s *fstat) isDir() bool { return s.mode&sIFMT == sIFDIR }

// statOf extracts the status from a FileInfo's Sys(); false when it carries none, which
// would make stable fileids impossible, so callers answer SERVERFAULT.
func statOf(fi fs.FileInfo) (fstat, bool) {
	if s, ok := sysStat(fi.Sys()); ok {
		s.loc, _ = overlay.LocOf(fi)
		return s, true
	}
	return fstat{}, false
}

// nfsType maps st_mode's type bits to ftype3.
func nfsType(mode uint32) nfs.FileType {
	switch mode & sIFMT {
	case sIFDIR:
		return nfs.FileTypeDirectory
	case sIFLNK:
		return nfs.FileTypeLink
	case sIFCHR:
		return nfs.FileTypeCharacter
	case sIFBLK:
		return nfs.FileTypeBlock
	case sIFSOCK:
		return nfs.FileTypeSocket
	case sIFIFO:
		return nfs.FileTypeFIFO
	}
	return nfs.FileTypeRegular
}

// major/minor follow glibc's encoding of dev_t, which is what the overlay reports.
func devMajor(dev uint64) uint32 { return uint32((dev>>32)&0xfffff000 | (dev>>8)&0xfff) }
func devMinor(dev uint64) uint32 { return uint32((dev>>12)&0xffffff00 | dev&0xff) }
func mkdev(major, minor uint32) uint64 {
	ma, mi := uint64(major), uint64(minor)
	return (ma&0xfffff000)<<32 | (ma&0xfff)<<8 | (mi&0xffffff00)<<12 | mi&0xff
}

// attrOf is the fattr3 of a status, with fsid set to the export.
func attrOf(s *fstat, fsid uint64) nfs.FileAttribute {
	return nfs.FileAttribute{
		Type:     nfsType(s.mode),
		FileMode: s.mode & 0o7777,
		Nlink:    s.nlink,
		UID:      s.uid,
		GID:      s.gid,
		Filesize: uint64(s.size),
		Used:     uint64(s.blocks) * 512,
		SpecData: [2]uint32{devMajor(s.rdev), devMinor(s.rdev)},
		FSID:     fsid,
		Fileid:   s.fileID,
		Atime:    nfs.ToNFSTime(s.atime),
		Mtime:    nfs.ToNFSTime(s.mtime),
		Ctime:    nfs.ToNFSTime(s.ctime),
	}
}

// fattr writes a fattr3 (RFC 1813 2.6) by hand: this runs for every entry of a listing.
func (w *xdrWriter) fattr(a *nfs.FileAttribute) {
	w.u32(uint32(a.Type))
	w.u32(a.FileMode)
	w.u32(a.Nlink)
	w.u32(a.UID)
	w.u32(a.GID)
	w.u64(a.Filesize)
	w.u64(a.Used)
	w.u32(a.SpecData[0])
	w.u32(a.SpecData[1])
	w.u64(a.FSID)
	w.u64(a.Fileid)
	w.nfstime(a.Atime)
	w.nfstime(a.Mtime)
	w.nfstime(a.Ctime)
}

func (w *xdrWriter) nfstime(t nfs.FileTime) {
	w.u32(t.Seconds)
	w.u32(t.Nseconds)
}

// postOpAttr writes post_op_attr: present when s is not nil.
func (w *xdrWriter) postOpAttr(s *fstat, fsid uint64) {
	if s == nil {
		w.bool(false)
		return
	}
	w.bool(true)
	a := attrOf(s, fsid)
	w.fattr(&a)
}

// wcc writes wcc_data from the status before and after an operation.
func (w *xdrWriter) wcc(pre, post *fstat, fsid uint64) {
	if pre == nil {
		w.bool(false)
	} else {
		w.bool(true)
		w.u64(uint64(pre.size))
		w.nfstime(nfs.ToNFSTime(pre.mtime))
		w.nfstime(nfs.ToNFSTime(pre.ctime))
	}
	w.postOpAttr(post, fsid)
}

// statusOf maps a file system error to an NFS status by its errno.
func statusOf(err error) nfs.NFSStatus {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ENOENT:
			return nfs.NFSStatusNoEnt
		case syscall.EACCES:
			return nfs.NFSStatusAccess
		case syscall.EPERM:
			return nfs.NFSStatusPerm
		case syscall.EEXIST:
			return nfs.NFSStatusExist
		case syscall.ENOTDIR:
			return nfs.NFSStatusNotDir
		case syscall.EISDIR:
			return nfs.NFSStatusIsDir
		case syscall.EINVAL:
			return nfs.NFSStatusInval
		case syscall.ENOSPC:
			return nfs.NFSStatusNoSPC
		case syscall.EROFS:
			return nfs.NFSStatusROFS
		case syscall.EMLINK:
			return nfs.NFSStatusMlink
		case syscall.ENAMETOOLONG:
			return nfs.NFSStatusNameTooLong
		case syscall.ENOTEMPTY:
			return nfs.NFSStatusNotEmpty
		case syscall.EDQUOT:
			return nfs.NFSStatusDQuot
		case syscall.EXDEV:
			return nfs.NFSStatusXDev
		case syscall.EFBIG:
			return nfs.NFSStatusFBig
		case syscall.ENXIO:
			return nfs.NFSStatusNXIO
		case syscall.ENODEV:
			return nfs.NFSStatusNoDev
		case syscall.ENOTSUP:
			return nfs.NFSStatusNotSupp
		case syscall.ESTALE:
			return nfs.NFSStatusStale
		}
		return nfs.NFSStatusIO
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nfs.NFSStatusNoEnt
	case errors.Is(err, fs.ErrExist):
		return nfs.NFSStatusExist
	case errors.Is(err, fs.ErrPermission):
		return nfs.NFSStatusAccess
	case errors.Is(err, io.EOF):
		return nfs.NFSStatusIO
	}
	return nfs.NFSStatusIO
}
