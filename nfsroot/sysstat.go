package nfsroot

import (
	"syscall"

	"github.com/pifleet/pifleet/overlay"
)

// sysStat reads the status a FileInfo's Sys() carries: the overlay's Stat, whose FileID
// is stable across copy-up, rename and restart, or a plain syscall.Stat_t.
func sysStat(sys any) (fstat, bool) {
	switch st := sys.(type) {
	case *overlay.Stat:
		return fstat{
			fileID: st.FileID, mode: st.Mode, uid: st.Uid, gid: st.Gid, nlink: st.Nlink,
			rdev: st.Rdev, size: st.Size, blocks: st.Blocks,
			atime: st.Atime, mtime: st.Mtime, ctime: st.Ctime,
		}, true
	case *syscall.Stat_t:
		return sysStatFromSyscall(st), true
	}
	return fstat{}, false
}

var _ FileSystem = (*overlay.FS)(nil)
