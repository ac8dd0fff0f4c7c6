package nfsroot

// Permission checks against the caller's AUTH_SYS credentials. The overlay acts as root,
// so every rule a kernel would apply for the caller is applied here first.

const (
	mayRead  = 4
	mayWrite = 2
	mayExec  = 1
)

func (c *cred) inGroup(g uint32) bool {
	if c.gid == g {
		return true
	}
	for _, x := range c.gids {
		if x == g {
			return true
		}
	}
	return false
}

// may reports whether c has all of want (mayRead|mayWrite|mayExec) on st by its mode bits.
// Root may do anything except execute a file no one may execute.
func (c *cred) may(st *fstat, want uint32) bool {
	if c.uid == 0 {
		return want&mayExec == 0 || st.isDir() || st.mode&0o111 != 0
	}
	var bits uint32
	switch {
	case c.uid == st.uid:
		bits = st.mode >> 6
	case c.inGroup(st.gid):
		bits = st.mode >> 3
	default:
		bits = st.mode
	}
	return bits&7&want == want
}

func (c *cred) owns(st *fstat) bool { return c.uid == 0 || c.uid == st.uid }

// mayReadData is READ's check. Like knfsd, the owner may read (the client checked the open
// mode when the file was opened, possibly before a chmod) and execute permission suffices,
// because the client reads a binary to execute it.
func (c *cred) mayReadData(st *fstat) bool {
	return c.owns(st) || c.may(st, mayRead) || (!st.isDir() && c.may(st, mayExec))
}

// mayWriteData is WRITE's check, with the same owner override.
func (c *cred) mayWriteData(st *fstat) bool { return c.owns(st) || c.may(st, mayWrite) }

// mayChangeEntries is the check for adding or removing names in dir.
func (c *cred) mayChangeEntries(dir *fstat) bool { return c.may(dir, mayWrite|mayExec) }

// mayUnlink adds the sticky-bit rule: in a sticky directory only the owner of the entry or of
// the directory (or root) may remove or rename it away.
func (c *cred) mayUnlink(dir, victim *fstat) bool {
	if !c.mayChangeEntries(dir) {
		return false
	}
	if dir.mode&0o1000 == 0 || c.uid == 0 {
		return true
	}
	return c.uid == dir.uid || c.uid == victim.uid
}

// ACCESS3 bits (RFC 1813 3.3.4).
const (
	access3Read    = 0x01
	access3Lookup  = 0x02
	access3Modify  = 0x04
	access3Extend  = 0x08
	access3Delete  = 0x10
	access3Execute = 0x20
)

// accessBits answers ACCESS truthfully: the subset of asked that the caller has.
func (c *cred) accessBits(st *fstat, asked uint32) uint32 {
	var got uint32
	if c.may(st, mayRead) {
		got |= access3Read
	}
	if st.isDir() {
		if c.may(st, mayExec) {
			got |= access3Lookup
		}
		if c.may(st, mayWrite|mayExec) {
			got |= access3Modify | access3Extend | access3Delete
		}
	} else {
		if c.may(st, mayWrite) {
			got |= access3Modify | access3Extend
		}
		if c.may(st, mayExec) {
			got |= access3Execute
		}
	}
	return got & asked
}
