package nfsroot

import (
	"errors"

	"github.com/willscott/go-nfs"
)

// NFS_ACL version 3 (program 100227, Linux include/linux/nfsacl.h; not in any RFC): the
// side protocol the Linux, Solaris and FreeBSD clients use for POSIX ACLs over NFSv3, on the
// NFS port. It reads and writes the same system.posix_acl_* xattrs an image carries, so
// getfacl/setfacl on a board show and change what the server enforces (perm.go).

// NFS_ACL procedures and GETACL/SETACL mask bits.
const (
	aclProcNull   = 0
	aclProcGetACL = 1
	aclProcSetACL = 2

	nfsACL        = 0x0001 // the access ACL's entries
	nfsACLCnt     = 0x0002 // the access ACL's entry count
	nfsDfACL      = 0x0004 // the default ACL's entries
	nfsDfACLCnt   = 0x0008 // the default ACL's entry count
	nfsACLMask    = 0x000f
	nfsACLDefault = 0x1000 // tag flag of default ACL entries on the wire
)

func (s *Server) nfsaclProc(proc uint32) procFunc {
	switch proc {
	case aclProcNull:
		return func(*conn, *rpcCallHdr, *xdrReader, *xdrWriter) error { return nil }
	case aclProcGetACL:
		return s.onGetACL
	case aclProcSetACL:
		return s.onSetACL
	}
	return nil
}

func (s *Server) onGetACL(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	mask := r.u32()
	if r.err != nil {
		return r.err
	}
	// Like knfsd, anyone who holds the handle may read the ACLs, as getfacl needs
	// nothing but the path.
	q, _, p, st, status := s.file(cc, h, fh)
	if status == nfs.NFSStatusOk && mask&^nfsACLMask != 0 {
		status = nfs.NFSStatusInval
	}
	var access, def posixACL
	if status == nfs.NFSStatusOk && mask&(nfsACL|nfsACLCnt) != 0 {
		if access, status = q.readACL(p, xattrACLAccess); access == nil {
			access = aclFromMode(st.mode) // a file without an ACL has the minimal one
		}
	}
	if status == nfs.NFSStatusOk && mask&(nfsDfACL|nfsDfACLCnt) != 0 && st.isDir() {
		def, status = q.readACL(p, xattrACLDefault)
	}
	if !w.statusAttr(status, q, st) {
		return nil
	}
	w.u32(mask)
	w.nfsACL(access, mask&nfsACL != 0, 0, st)
	w.nfsACL(def, mask&nfsDfACL != 0, nfsACLDefault, st)
	return nil
}

// readACL reads one of the object's ACL xattrs; nil when it has none.
func (q *req) readACL(p, attr string) (posixACL, nfs.NFSStatus) {
	val, err := q.e.FS.Getxattr(p, attr)
	if err != nil {
		if noXattr(err) {
			return nil, nfs.NFSStatusOk
		}
		return nil, q.fail("getxattr "+attr, p, err)
	}
	acl, err := parseACLXattr(val)
	if err != nil {
		q.cc.warn("unreadable ACL", "path", p, "attr", attr, "err", err)
		return nil, nfs.NFSStatusIO
	}
	return acl, nfs.NFSStatusOk
}

// nfsACL writes an ACL as nfsacl_encode does: the entry count, then the entries when
// asked for. A minimal ACL (3 entries) goes out with a mask equal to the group entry,
// which some servers' clients expect; the owner and owning group carry the file's ids.
func (w *xdrWriter) nfsACL(acl posixACL, entries bool, flag uint32, st *fstat) {
	list := acl
	if len(acl) == 3 {
		list = posixACL{acl[0], acl[1], {tag: aclMask, perm: acl[1].perm}, acl[2]}
	}
	w.u32(uint32(len(list)))
	if !entries {
		w.u32(0)
		return
	}
	w.u32(uint32(len(list)))
	for _, e := range list {
		w.u32(e.tag | flag)
		switch e.tag {
		case aclUserObj:
			w.u32(st.uid)
		case aclGroupObj:
			w.u32(st.gid)
		case aclUser, aclGroup:
			w.u32(e.id)
		default:
			w.u32(0)
		}
		w.u32(e.perm & 7)
	}
}

// errBadNFSACL makes SETACL's arguments garbage, as knfsd's decoder does.
var errBadNFSACL = errors.New("nfsacl: malformed ACL")

// readNFSACL decodes one ACL of SETACL's arguments: an entry count, then an array of at most
// that many (tag, id, perm) entries. It returns nil for an ACL not asked for (want false) or
// with no entries, which SETACL takes as "remove". The result is sorted but not validated:
// an invalid ACL is INVAL, not garbage.
func readNFSACL(r *xdrReader, want bool) (posixACL, error) {
	n := r.u32()
	if r.err != nil {
		return nil, r.err
	}
	if n > maxACLEntries {
		return nil, errTooLong
	}
	sub := xdrReader{b: r.fixed(4 + 12*int(n))}
	if r.err != nil {
		return nil, r.err
	}
	alen := sub.u32()
	if alen > n || (want && alen != n) {
		return nil, errBadNFSACL
	}
	if !want || n == 0 {
		return nil, nil
	}
	acl := make(posixACL, n)
	for i := range acl {
		e := aclEntry{tag: sub.u32() &^ nfsACLDefault, id: sub.u32(), perm: sub.u32()}
		switch e.tag {
		case aclUser, aclGroup:
			if e.id == aclUndefinedID {
				return nil, errBadNFSACL
			}
		case aclUserObj, aclGroupObj, aclOther:
			if e.perm&^7 != 0 {
				return nil, errBadNFSACL
			}
			e.id = aclUndefinedID
		case aclMask:
			e.perm &= 7 // Solaris sets more bits in the mask
			e.id = aclUndefinedID
		default:
			return nil, errBadNFSACL
		}
		acl[i] = e
	}
	sortACL(acl)
	// A client sends a minimal ACL with a mask equal to the group entry (see nfsACL):
	// that mask says nothing and is dropped, as posix_acl_from_nfsacl does.
	if len(acl) == 4 && acl[1].tag == aclGroupObj && acl[2].tag == aclMask && acl[2].perm == acl[1].perm {
		acl = posixACL{acl[0], acl[1], acl[3]}
	}
	return acl, nil
}

func (s *Server) onSetACL(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	mask := r.u32()
	if r.err != nil {
		return r.err
	}
	if mask&^nfsACLMask != 0 {
		return errGarbage
	}
	access, err := readNFSACL(r, mask&nfsACL != 0)
	if err != nil {
		return err
	}
	def, err := readNFSACL(r, mask&nfsDfACL != 0)
	if err != nil {
		return err
	}
	q, id, p, st, status := s.file(cc, h, fh)
	if status != nfs.NFSStatusOk {
		w.status(status)
		w.postOpAttr(nil, 0)
		return nil
	}
	// A change of mode must make cached listings miss, as every mutating NFS call does
	// (see export.changes).
	q.e.changing.Add(1)
	q.e.changes.Add(1)
	status = q.setACLs(p, id, st, access, def)
	q.e.changes.Add(1)
	q.e.changing.Add(-1)
	post, _ := q.lstat(p)
	w.status(status)
	w.postOpAttr(post, q.e.id)
	return nil
}

// setACLs sets (or, for nil, removes) the access and default ACLs of p, as knfsd's SETACL
// does through set_posix_acl: only the owner or root; a default ACL only on a directory;
// an access ACL sets the mode's permission bits (the group bits become the mask), is
// stored only when the mode cannot say it all, and clears setgid for a caller outside the
// file's group. The change goes through the overlay, which copies a lower object up.
func (q *req) setACLs(p string, id uint64, st *fstat, access, def posixACL) nfs.NFSStatus {
	c := &q.cred
	if !c.owns(st) {
		return nfs.NFSStatusPerm
	}
	if st.mode&sIFMT == sIFLNK {
		return nfs.NFSStatusNotSupp // symlinks have no ACLs
	}
	if (access != nil && access.valid() != nil) || (def != nil && def.valid() != nil) {
		return nfs.NFSStatusInval
	}
	if def != nil && !st.isDir() {
		return nfs.NFSStatusAccess
	}
	q.e.files.forget(id) // the change may copy the file up
	defer q.e.acls.forget(id)
	if access != nil {
		mode, equiv := access.equivMode(st.mode & 0o7777)
		if c.uid != 0 && !c.inGroup(st.gid) {
			mode &^= 0o2000
		}
		if equiv {
			access = nil
		} else if err := q.e.FS.Setxattr(p, xattrACLAccess, access.xattr(), 0); err != nil {
			return q.fail("set ACL", p, err)
		}
		if mode != st.mode&0o7777 {
			if err := q.e.FS.Chmod(p, goMode(mode)); err != nil {
				return q.fail("chmod for ACL", p, err)
			}
		}
	}
	if access == nil {
		if status := q.removeACL(p, xattrACLAccess); status != nfs.NFSStatusOk {
			return status
		}
	}
	if !st.isDir() {
		return nfs.NFSStatusOk
	}
	if def == nil {
		return q.removeACL(p, xattrACLDefault)
	}
	if err := q.e.FS.Setxattr(p, xattrACLDefault, def.xattr(), 0); err != nil {
		return q.fail("set default ACL", p, err)
	}
	return nfs.NFSStatusOk
}

// removeACL removes an ACL xattr if there is one; only an upper object is touched.
func (q *req) removeACL(p, attr string) nfs.NFSStatus {
	if _, err := q.e.FS.Getxattr(p, attr); noXattr(err) {
		return nfs.NFSStatusOk // nothing to remove: do not copy the object up for nothing
	}
	if err := q.e.FS.Removexattr(p, attr); err != nil && !noXattr(err) {
		return q.fail("remove ACL", p, err)
	}
	return nfs.NFSStatusOk
}

// inheritACL is posix_acl_create for an object made in dir with mode: with a default ACL
// on dir, the object's access ACL is that ACL limited by mode (createMasq), and mode is
// limited by it; a new directory also gets dir's default ACL. Without one, nothing
// changes (no umask: the client applied it, or left it off because of the default ACL).
func (q *req) inheritACL(dirPath string, mode uint32) (access, def posixACL, newMode uint32, status nfs.NFSStatus) {
	def, status = q.readACL(dirPath, xattrACLDefault)
	if status != nfs.NFSStatusOk || def == nil {
		return nil, nil, mode, status
	}
	access, newMode, equiv := def.createMasq(mode)
	if equiv {
		access = nil
	}
	return access, def, newMode, nfs.NFSStatusOk
}

// applyInherited stores what inheritACL decided on the new object p. The kernel under the
// overlay may have inherited an ACL already (from an upper parent) with another mode, so
// the result is set explicitly either way.
func (q *req) applyInherited(p string, isDir bool, access, def posixACL) nfs.NFSStatus {
	if access != nil {
		if err := q.e.FS.Setxattr(p, xattrACLAccess, access.xattr(), 0); err != nil {
			return q.fail("inherit ACL", p, err)
		}
	} else if status := q.removeACL(p, xattrACLAccess); status != nfs.NFSStatusOk {
		return status
	}
	if isDir && def != nil {
		if err := q.e.FS.Setxattr(p, xattrACLDefault, def.xattr(), 0); err != nil {
			return q.fail("inherit default ACL", p, err)
		}
	}
	return nfs.NFSStatusOk
}
