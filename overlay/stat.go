package overlay

import (
	"encoding/binary"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Stat is what fi.Sys() holds for every os.FileInfo the FS returns: the full Unix
// attributes an NFS server needs, plus a FileID that survives copy-up, rename and restarts.
type Stat struct {
	FileID              uint64 // stable identity within the overlay; see fileID for the scheme
	Mode                uint32 // raw st_mode: type bits, permissions, setuid/setgid/sticky
	Uid, Gid            uint32
	Nlink               uint32
	Rdev                uint64
	Size                int64
	Blocks              int64 // 512-byte blocks used
	Atime, Mtime, Ctime time.Time
}

// xattrFileID records, on an upper object made by copy-up or directory rename, the FileID
// its origin had. The kernel ignores trusted.* names it does not know.
const xattrFileID = "trusted.pifleet.fileid"

// FileID scheme: the top 8 bits name the layer the object's identity comes from (0 = upper,
// i+1 = lower i), the low 56 bits are its st_ino there. Layers on one file system or on
// several cannot collide because the layer is part of the id. An upper object made from
// another one (copy-up, directory rename) carries its origin's id in xattrFileID, so the id
// does not change when the object moves to the upper. Inode numbers of 2^56 or more (rare:
// ext4 and btrfs never get there) are folded, which may collide.
const (
	layerShift = 56
	inoMask    = 1<<layerShift - 1
)

func makeFileID(layer int, ino uint64) uint64 {
	if ino > inoMask {
		ino = (ino ^ ino>>layerShift) & inoMask
	}
	return uint64(layer)<<layerShift | ino
}

// fileID computes the id of the object at real in layer. Only upper objects can carry a
// recorded id, so a lookup in a lower never reads an xattr.
func fileID(layer int, real string, st *unix.Stat_t) uint64 {
	if layer == 0 {
		var buf [8]byte
		if n, err := unix.Lgetxattr(real, xattrFileID, buf[:]); err == nil && n == 8 {
			return decodeFileID(buf[:])
		}
	}
	return makeFileID(layer, st.Ino)
}

func encodeFileID(id uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, id)
	return b
}

func tsTime(ts unix.Timespec) time.Time { return time.Unix(ts.Sec, ts.Nsec) }

func toStat(id uint64, st *unix.Stat_t) Stat {
	return Stat{
		FileID: id,
		Mode:   st.Mode,
		Uid:    st.Uid,
		Gid:    st.Gid,
		Nlink:  uint32(st.Nlink),
		Rdev:   st.Rdev,
		Size:   st.Size,
		Blocks: st.Blocks,
		Atime:  tsTime(st.Atim),
		Mtime:  tsTime(st.Mtim),
		Ctime:  tsTime(st.Ctim),
	}
}

// fileInfo is the os.FileInfo of a merged object.
type fileInfo struct {
	name string
	st   Stat
}

func (fi *fileInfo) Name() string       { return fi.name }
func (fi *fileInfo) Size() int64        { return fi.st.Size }
func (fi *fileInfo) Mode() os.FileMode  { return fileMode(fi.st.Mode) }
func (fi *fileInfo) ModTime() time.Time { return fi.st.Mtime }
func (fi *fileInfo) IsDir() bool        { return fi.st.Mode&unix.S_IFMT == unix.S_IFDIR }
func (fi *fileInfo) Sys() any           { return &fi.st }

// fileMode converts a raw st_mode to Go's portable bits.
func fileMode(m uint32) os.FileMode {
	mode := os.FileMode(m & 0o777)
	if m&unix.S_ISUID != 0 {
		mode |= os.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		mode |= os.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= os.ModeSticky
	}
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= os.ModeDir
	case unix.S_IFLNK:
		mode |= os.ModeSymlink
	case unix.S_IFIFO:
		mode |= os.ModeNamedPipe
	case unix.S_IFSOCK:
		mode |= os.ModeSocket
	case unix.S_IFCHR:
		mode |= os.ModeDevice | os.ModeCharDevice
	case unix.S_IFBLK:
		mode |= os.ModeDevice
	}
	return mode
}

// permBits converts Go's permission and special bits to the raw ones chmod takes.
func permBits(mode fs.FileMode) uint32 {
	m := uint32(mode.Perm())
	if mode&os.ModeSetuid != 0 {
		m |= unix.S_ISUID
	}
	if mode&os.ModeSetgid != 0 {
		m |= unix.S_ISGID
	}
	if mode&os.ModeSticky != 0 {
		m |= unix.S_ISVTX
	}
	return m
}

func isWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

func isDir(st *unix.Stat_t) bool     { return st.Mode&unix.S_IFMT == unix.S_IFDIR }
func isSymlink(st *unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFLNK }

func decodeFileID(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }
