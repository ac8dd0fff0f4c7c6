package nfsroot

import (
	"os"
	"path"
	"time"

	"github.com/willscott/go-nfs"
)

// parent binds a directory handle for an operation that adds or removes name in it,
// checking the name and the caller's write+search permission on the directory.
func (s *Server) parent(cc *conn, h *rpcCallHdr, fh []byte, name string) (*req, uint64, string, *fstat, nfs.NFSStatus) {
	q, dirID, dirPath, dirSt, status := s.file(cc, h, fh)
	if status != nfs.NFSStatusOk {
		return q, dirID, dirPath, dirSt, status
	}
	if !dirSt.isDir() {
		return q, dirID, dirPath, dirSt, nfs.NFSStatusNotDir
	}
	if status = checkName(name); status != nfs.NFSStatusOk {
		return q, dirID, dirPath, dirSt, status
	}
	if !q.mayChangeEntries(dirPath, dirSt) {
		return q, dirID, dirPath, dirSt, nfs.NFSStatusAccess
	}
	return q, dirID, dirPath, dirSt, nfs.NFSStatusOk
}

// newParent is parent for CREATE, MKDIR and SYMLINK, which make a new name: "." and ".."
// always exist. (MKNOD checks the type first, so it has its own order.)
func (s *Server) newParent(cc *conn, h *rpcCallHdr, fh []byte, name string) (*req, uint64, string, *fstat, nfs.NFSStatus) {
	q, dirID, dirPath, dirSt, status := s.parent(cc, h, fh, name)
	if status == nfs.NFSStatusOk && (name == "." || name == "..") {
		status = nfs.NFSStatusExist
	}
	return q, dirID, dirPath, dirSt, status
}

// newOwner is who owns a new object: the caller, with the directory's group when the
// directory is setgid (BSD group semantics, as Linux does).
func (q *req) newOwner(dirSt *fstat, a sattr) (uid, gid uint32) {
	uid, gid = q.cred.uid, q.cred.gid
	if dirSt.mode&0o2000 != 0 {
		gid = dirSt.gid
	}
	// Root may create on behalf of someone else in one go (the client's CREATE with
	// owner); others are checked as a SETATTR would be.
	if q.cred.uid == 0 {
		if a.uid != nil {
			uid = *a.uid
		}
		if a.gid != nil {
			gid = *a.gid
		}
	}
	return uid, gid
}

// finishNew gives a freshly created object its owner, mode and times, and records its
// name durably; it returns the object's status for the reply.
func (q *req) finishNew(dirID uint64, dirSt *fstat, p, name string, a sattr, mode uint32) (*fstat, nfs.NFSStatus) {
	uid, gid := q.newOwner(dirSt, a)
	if err := q.e.FS.Lchown(p, int(uid), int(gid)); err != nil {
		return nil, q.fail("chown new", p, err)
	}
	st, status := q.lstat(p)
	if status != nfs.NFSStatusOk {
		return nil, status
	}
	if st.mode&sIFMT != sIFLNK {
		// A default ACL on the directory limits the mode and gives the object its ACLs.
		access, def, mode, status := q.inheritACL(path.Dir(p), mode)
		if status != nfs.NFSStatusOk {
			return nil, status
		}
		if err := q.e.FS.Chmod(p, goMode(mode)); err != nil {
			return nil, q.fail("chmod new", p, err)
		}
		if def != nil {
			if status := q.applyInherited(p, st.isDir(), access, def); status != nfs.NFSStatusOk {
				return nil, status
			}
		}
		q.e.acls.forget(st.fileID) // a FileID can be an inode number used before
	}
	if a.atimeHow != dontChange || a.mtimeHow != dontChange {
		b := a
		b.mode, b.uid, b.gid, b.size = nil, nil, nil, nil
		if status := q.apply(p, st.fileID, st, b); status != nfs.NFSStatusOk {
			return nil, status
		}
	}
	if st, status = q.lstat(p); status != nfs.NFSStatusOk {
		return nil, status
	}
	if err := q.e.tbl.sync(q.e.learn(dirID, name, st)); err != nil {
		q.logger().Error("recording handle", "path", p, "err", err)
		return nil, nfs.NFSStatusServerFault
	}
	return st, nfs.NFSStatusOk
}

// newMode is the mode bits of a new object: those asked for, less setgid for a caller
// outside the group, plus setgid for a directory made in a setgid directory.
func (q *req) newMode(a sattr, def uint32, dirSt *fstat, isDir bool) uint32 {
	m := def
	if a.mode != nil {
		m = *a.mode & 0o7777
	}
	_, gid := q.newOwner(dirSt, a)
	if q.cred.uid != 0 && !q.cred.inGroup(gid) && !isDir {
		m &^= 0o2000
	}
	if isDir && dirSt.mode&0o2000 != 0 {
		m |= 0o2000
	}
	return m
}

// createdReply writes the CREATE/MKDIR/SYMLINK/MKNOD reply.
func (q *req) createdReply(w *xdrWriter, status nfs.NFSStatus, st, dirPre *fstat, dirPath string) {
	w.status(status)
	if q == nil {
		w.wcc(nil, nil, 0)
		return
	}
	dirPost, _ := q.lstat(dirPath)
	if status == nfs.NFSStatusOk {
		w.bool(true)
		w.opaque(q.e.handle(st.fileID))
		w.postOpAttr(st, q.e.id)
	}
	w.wcc(dirPre, dirPost, q.e.id)
}

// CREATE modes (createmode3).
const (
	createUnchecked = 0
	createGuarded   = 1
	createExclusive = 2
)

func (s *Server) onCreate(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh, name := readDirop(r)
	how := r.u32()
	var a sattr
	var verf []byte
	switch how {
	case createUnchecked, createGuarded:
		a = readSattr(r)
	case createExclusive:
		verf = r.fixed(8)
	default:
		return errGarbage
	}
	if r.err != nil {
		return r.err
	}
	q, dirID, dirPath, dirSt, status := s.newParent(cc, h, fh, name)
	var st *fstat
	if status == nfs.NFSStatusOk {
		st, status = q.create(dirID, dirPath, dirSt, name, how, a, verf)
	}
	q.createdReply(w, status, st, dirSt, dirPath)
	return nil
}

func (q *req) create(dirID uint64, dirPath string, dirSt *fstat, name string, how uint32, a sattr, verf []byte) (*fstat, nfs.NFSStatus) {
	p := joinPath(dirPath, name)
	if old, status := q.lstat(p); status == nfs.NFSStatusOk {
		switch {
		case how == createGuarded:
			return nil, nfs.NFSStatusExist
		case how == createExclusive:
			// A retransmitted exclusive create finds the verifier it stored in the times.
			if old.mode&sIFMT == sIFREG && exclusiveMatch(old, verf) {
				return old, nfs.NFSStatusOk
			}
			return nil, nfs.NFSStatusExist
		case old.mode&sIFMT != sIFREG:
			return nil, nfs.NFSStatusExist
		}
		// UNCHECKED on an existing file: only the size (truncation) applies, as knfsd does.
		b := sattr{size: a.size}
		if status := q.apply(p, old.fileID, old, b); status != nfs.NFSStatusOk {
			return nil, status
		}
		st, status := q.lstat(p)
		if status == nfs.NFSStatusOk {
			status = errStatus(q.e.tbl.sync(q.e.learn(dirID, name, st)))
		}
		return st, status
	}
	mode := q.newMode(a, 0o644, dirSt, false)
	if how == createExclusive {
		mode = 0
	}
	f, err := q.e.FS.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, q.fail("create", p, err)
	}
	if err := f.Close(); err != nil {
		return nil, q.fail("create", p, err)
	}
	if how == createExclusive {
		at := time.Unix(int64(be32(verf[0:4])), 0)
		mt := time.Unix(int64(be32(verf[4:8])), 0)
		if err := q.e.FS.Chtimes(p, at, mt); err != nil {
			return nil, q.fail("create exclusive", p, err)
		}
	}
	return q.finishNew(dirID, dirSt, p, name, a, mode)
}

func exclusiveMatch(st *fstat, verf []byte) bool {
	return st.atime.Unix() == int64(be32(verf[0:4])) && st.mtime.Unix() == int64(be32(verf[4:8]))
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func errStatus(err error) nfs.NFSStatus {
	if err != nil {
		return nfs.NFSStatusServerFault
	}
	return nfs.NFSStatusOk
}

func (s *Server) onMkdir(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh, name := readDirop(r)
	a := readSattr(r)
	if r.err != nil {
		return r.err
	}
	q, dirID, dirPath, dirSt, status := s.newParent(cc, h, fh, name)
	var st *fstat
	if status == nfs.NFSStatusOk {
		p := joinPath(dirPath, name)
		if err := q.e.FS.Mkdir(p, 0o700); err != nil {
			status = q.fail("mkdir", p, err)
		} else {
			st, status = q.finishNew(dirID, dirSt, p, name, a, q.newMode(a, 0o755, dirSt, true))
		}
	}
	q.createdReply(w, status, st, dirSt, dirPath)
	return nil
}

func (s *Server) onSymlink(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh, name := readDirop(r)
	a := readSattr(r)
	target := r.str(maxPathLen)
	if r.err != nil {
		return r.err
	}
	q, dirID, dirPath, dirSt, status := s.newParent(cc, h, fh, name)
	var st *fstat
	if status == nfs.NFSStatusOk {
		p := joinPath(dirPath, name)
		if err := q.e.FS.Symlink(target, p); err != nil {
			status = q.fail("symlink", p, err)
		} else {
			a.mode = nil
			st, status = q.finishNew(dirID, dirSt, p, name, a, 0o777)
		}
	}
	q.createdReply(w, status, st, dirSt, dirPath)
	return nil
}

// ftype3 values MKNOD accepts.
const (
	nf3Blk  = 3
	nf3Chr  = 4
	nf3Sock = 6
	nf3Fifo = 7
)

func (s *Server) onMknod(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh, name := readDirop(r)
	typ := r.u32()
	var a sattr
	var major, minor uint32
	var ifmt uint32
	switch typ {
	case nf3Chr, nf3Blk:
		a = readSattr(r)
		major, minor = r.u32(), r.u32()
		ifmt = sIFCHR
		if typ == nf3Blk {
			ifmt = sIFBLK
		}
	case nf3Sock, nf3Fifo:
		a = readSattr(r)
		ifmt = sIFIFO
		if typ == nf3Sock {
			ifmt = sIFSOCK
		}
	}
	if r.err != nil {
		return r.err
	}
	q, dirID, dirPath, dirSt, status := s.parent(cc, h, fh, name)
	switch {
	case status != nfs.NFSStatusOk:
	case ifmt == 0:
		status = nfs.NFSStatusBadType
	case name == "." || name == "..":
		status = nfs.NFSStatusExist
	case (ifmt == sIFCHR || ifmt == sIFBLK) && q.cred.uid != 0:
		status = nfs.NFSStatusPerm // mknod(2): devices need CAP_MKNOD
	}
	var st *fstat
	if status == nfs.NFSStatusOk {
		p := joinPath(dirPath, name)
		mode := q.newMode(a, 0o644, dirSt, false)
		if err := q.e.FS.Mknod(p, ifmt|mode, mkdev(major, minor)); err != nil {
			status = q.fail("mknod", p, err)
		} else {
			st, status = q.finishNew(dirID, dirSt, p, name, a, mode)
		}
	}
	q.createdReply(w, status, st, dirSt, dirPath)
	return nil
}
