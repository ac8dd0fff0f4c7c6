package nfsroot

import "golang.org/x/sys/unix"

// diskSpace reports the space of the file system holding the board's state (its upper),
// which is where the board's writes go.
func diskSpace(dir string) (tbytes, fbytes, abytes, tfiles, ffiles, afiles uint64) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, 0, 0, 0, 0
	}
	bs := uint64(st.Bsize)
	return st.Blocks * bs, st.Bfree * bs, st.Bavail * bs, st.Files, st.Ffree, st.Ffree
}
