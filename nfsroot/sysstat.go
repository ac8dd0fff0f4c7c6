package nfsroot

import "github.com/pifleet/pifleet/overlay"

// sysStat reads the status a FileInfo's Sys() carries: the overlay's Stat, whose FileID
// is stable across copy-up, rename and restart.
func sysStat(sys any) (fstat, bool) {
	st, ok := sys.(*overlay.Stat)
	if !ok {
		return fstat{}, false
	}
	return fstat{
		fileID: st.FileID, mode: st.Mode, uid: st.Uid, gid: st.Gid, nlink: st.Nlink,
		rdev: st.Rdev, size: st.Size, blocks: st.Blocks,
		atime: st.Atime, mtime: st.Mtime, ctime: st.Ctime,
	}, true
}

var _ FileSystem = (*overlay.FS)(nil)
