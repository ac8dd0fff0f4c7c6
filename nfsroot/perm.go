package nfsroot

import (
	"errors"
	"syscall"

	"github.com/willscott/go-nfs"
)

// Permission checks against the caller's AUTH_SYS credentials. The overlay acts as root,
// so every rule a kernel would apply for the caller is applied here first: mode bits, and a
// file's POSIX access ACL (acl.go) for callers who are neither root nor its owner.

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

// may reports whether the caller has all of want (mayRead|mayWrite|mayExec) on the object
// at p with status st, as the kernel's generic_permission decides: root may do anything
// except execute a file no one may execute; the owner gets the owner bits; anyone else is
// checked against the access ACL when the file has one, else the group or other bits.
// As in the kernel, the ACL is consulted only when the group bits (the mask) are not all
// clear.
func (q *req) may(p string, st *fstat, want uint32) bool { return q.mayFile(p, nil, st, want) }

// mayFile is may for an object that may be known only by an open file f (p ""), whose ACL
// is then read through the descriptor.
func (q *req) mayFile(p string, f *openFile, st *fstat, want uint32) bool {
	c := &q.cred
	if c.uid == 0 {
		return want&mayExec == 0 || st.isDir() || st.mode&0o111 != 0
	}
	if c.uid == st.uid {
		return st.mode>>6&want == want
	}
	if st.mode&0o070 != 0 {
		if acl := q.accessACL(p, f, st); acl != nil {
			return acl.permits(c, st.gid, want)
		}
	}
	bits := st.mode
	if c.inGroup(st.gid) {
		bits >>= 3
	}
	return bits&7&want == want
}

// accessACL returns the object's access ACL, nil when it has none. An ACL that cannot be
// read or decoded comes back empty (not nil), which grants nothing: the kernel too refuses
// access when it cannot get a file's ACL.
func (q *req) accessACL(p string, f *openFile, st *fstat) posixACL {
	if acl, ok := q.e.acls.get(st.fileID, st.ctime); ok {
		return acl
	}
	var val []byte
	err := errors.New("no path and no open file")
	switch {
	case p != "":
		val, err = q.e.FS.Getxattr(p, xattrACLAccess)
	case f != nil:
		val, err = f.f.Getxattr(xattrACLAccess)
	}
	var acl posixACL
	switch {
	case noXattr(err):
	case err != nil:
		q.cc.warn("reading ACL; refusing access", "path", p, "fileid", st.fileID, "err", err)
		return posixACL{}
	default:
		if acl, err = parseACLXattr(val); err != nil {
			q.cc.warn("unreadable ACL; refusing access", "path", p, "fileid", st.fileID, "err", err)
			acl = posixACL{}
		}
	}
	q.e.acls.put(st.fileID, st.ctime, acl)
	return acl
}

// noXattr reports the errors that mean "this object has no such attribute".
func noXattr(err error) bool {
	return errors.Is(err, syscall.ENODATA) || errors.Is(err, syscall.ENOTSUP)
}

func (c *cred) owns(st *fstat) bool { return c.uid == 0 || c.uid == st.uid }

// mayReadData is READ's check. Like knfsd, the owner may read (the client checked the open
// mode when the file was opened, possibly before a chmod) and execute permission suffices,
// because the client reads a binary to execute it.
func (q *req) mayReadData(p string, f *openFile, st *fstat) bool {
	return q.cred.owns(st) || q.mayFile(p, f, st, mayRead) || (!st.isDir() && q.mayFile(p, f, st, mayExec))
}

// mayWriteData is WRITE's check, with the same owner override.
func (q *req) mayWriteData(p string, f *openFile, st *fstat) bool {
	return q.cred.owns(st) || q.mayFile(p, f, st, mayWrite)
}

// mayChangeEntries is the check for adding or removing names in dir.
func (q *req) mayChangeEntries(p string, dir *fstat) bool { return q.may(p, dir, mayWrite|mayExec) }

// mayUnlink adds the sticky-bit rule: in a sticky directory only the owner of the entry or of
// the directory (or root) may remove or rename it away.
func (q *req) mayUnlink(p string, dir, victim *fstat) bool {
	if !q.mayChangeEntries(p, dir) {
		return false
	}
	c := &q.cred
	if dir.mode&0o1000 == 0 || c.uid == 0 {
		return true
	}
	return c.uid == dir.uid || c.uid == victim.uid
}

// mayLink is fs.protected_hardlinks (on in every distribution): a caller may link to a file
// only if it owns it, or it is a regular file that is neither setuid nor setgid-executable
// and the caller may read and write it. Root may link anything.
func (q *req) mayLink(p string, st *fstat) bool {
	if q.cred.owns(st) {
		return true
	}
	if st.mode&sIFMT != sIFREG || st.mode&0o4000 != 0 || st.mode&0o2010 == 0o2010 {
		return false
	}
	return q.may(p, st, mayRead|mayWrite)
}

// suidBitsToDrop is what the kernel's setattr_should_drop_suidgid clears when the caller
// changes a file's data or size: setuid always, setgid when it means "run as the group"
// (group-exec set) or the caller is not in the file's group. Root keeps them (CAP_FSETID),
// which the server itself always holds, so this is done here for the caller.
func (q *req) suidBitsToDrop(st *fstat) uint32 {
	if q.cred.uid == 0 || st.mode&sIFMT != sIFREG {
		return 0
	}
	return setuidBitsToDrop(st, q.cred.inGroup(st.gid))
}

// setuidBitsToDrop is the setuid/setgid part of st's mode that a change of owner, data or
// size clears: setuid; setgid with group-exec, or for a caller outside the group.
func setuidBitsToDrop(st *fstat, inGroup bool) uint32 {
	drop := st.mode & 0o4000
	if st.mode&0o2000 != 0 && (st.mode&0o010 != 0 || !inGroup) {
		drop |= 0o2000
	}
	return drop
}

// dropSuid clears the bits suidBitsToDrop names on p (resolving id when p is unknown).
func (q *req) dropSuid(p string, id uint64, st *fstat, drop uint32) nfs.NFSStatus {
	if drop == 0 {
		return nfs.NFSStatusOk
	}
	if p == "" {
		var status nfs.NFSStatus
		if p, _, status = q.e.resolve(id); status != nfs.NFSStatusOk {
			return status
		}
	}
	defer q.e.acls.forget(id)
	if err := q.e.FS.Chmod(p, goMode(st.mode&0o7777&^drop)); err != nil {
		return q.fail("clear setuid", p, err)
	}
	return nfs.NFSStatusOk
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
func (q *req) accessBits(p string, st *fstat, asked uint32) uint32 {
	var got uint32
	if q.may(p, st, mayRead) {
		got |= access3Read
	}
	if st.isDir() {
		if q.may(p, st, mayExec) {
			got |= access3Lookup
		}
		if q.may(p, st, mayWrite|mayExec) {
			got |= access3Modify | access3Extend | access3Delete
		}
	} else {
		if q.may(p, st, mayWrite) {
			got |= access3Modify | access3Extend
		}
		if q.may(p, st, mayExec) {
			got |= access3Execute
		}
	}
	return got & asked
}
