package nfsroot

import (
	"time"

	"github.com/willscott/go-nfs"
)

// time_how of set_atime/set_mtime.
const (
	dontChange      = 0
	setToServerTime = 1
	setToClientTime = 2
)

// sattr is a decoded sattr3 (RFC 1813 2.6).
type sattr struct {
	mode, uid, gid *uint32
	size           *uint64
	atimeHow       uint32
	atime          time.Time
	mtimeHow       uint32
	mtime          time.Time
}

func readSattr(r *xdrReader) sattr {
	var a sattr
	opt32 := func() *uint32 {
		if r.bool() {
			v := r.u32()
			return &v
		}
		return nil
	}
	a.mode, a.uid, a.gid = opt32(), opt32(), opt32()
	if r.bool() {
		v := r.u64()
		a.size = &v
	}
	readTime := func() (uint32, time.Time) {
		how := r.u32()
		if how == setToClientTime {
			sec, nsec := r.u32(), r.u32()
			return how, time.Unix(int64(sec), int64(nsec%1e9))
		}
		return how, time.Time{}
	}
	a.atimeHow, a.atime = readTime()
	a.mtimeHow, a.mtime = readTime()
	return a
}

// apply performs a SETATTR (or the attributes of a new object) on p as the caller.
// Checks come first, then size, owner, mode and times in that order: chown clears
// setuid/setgid, so a mode asked for together with an owner is applied after it.
func (q *req) apply(p string, fileID uint64, st *fstat, a sattr) nfs.NFSStatus {
	c := &q.cred
	fsys := q.e.FS
	if a.size != nil {
		if st.isDir() {
			return nfs.NFSStatusIsDir
		}
		if st.mode&sIFMT != sIFREG {
			return nfs.NFSStatusInval
		}
		if !q.mayWriteData(p, nil, st) {
			return nfs.NFSStatusAccess
		}
	}
	uid, gid := st.uid, st.gid
	if a.uid != nil {
		uid = *a.uid
	}
	if a.gid != nil {
		gid = *a.gid
	}
	if c.uid != 0 {
		if uid != st.uid {
			return nfs.NFSStatusPerm
		}
		if gid != st.gid && (c.uid != st.uid || !c.inGroup(gid)) {
			return nfs.NFSStatusPerm
		}
		if a.mode != nil && c.uid != st.uid {
			return nfs.NFSStatusPerm
		}
		if a.atimeHow == setToClientTime || a.mtimeHow == setToClientTime {
			if c.uid != st.uid {
				return nfs.NFSStatusPerm
			}
		} else if (a.atimeHow == setToServerTime || a.mtimeHow == setToServerTime) && !c.owns(st) && !q.may(p, st, mayWrite) {
			return nfs.NFSStatusAccess
		}
	}
	q.e.files.forget(fileID)      // any change may copy the file up
	defer q.e.acls.forget(fileID) // chmod and chown change what the ACL check sees
	// Which of setuid/setgid the change clears (unless a mode is asked for too, which then
	// says what the bits become): a size change by anyone but root, as do_truncate does;
	// any chown of a non-directory, even to the owner it has, as chown(2) does for root too.
	var drop uint32
	if a.size != nil {
		drop = q.suidBitsToDrop(st)
	}
	chown := a.uid != nil || a.gid != nil
	if chown && !st.isDir() {
		drop |= setuidBitsToDrop(st, c.uid == 0 || c.inGroup(st.gid))
	}
	if a.size != nil {
		if err := fsys.Truncate(p, int64(*a.size)); err != nil {
			return q.fail("truncate", p, err)
		}
	}
	// A chown of a non-directory is done even to the same owner: the kernel then also
	// drops its file capabilities (security.capability), as chown(2) does.
	if uid != st.uid || gid != st.gid || (chown && !st.isDir()) {
		if err := fsys.Lchown(p, int(uid), int(gid)); err != nil {
			return q.fail("chown", p, err)
		}
	}
	if a.mode == nil {
		if status := q.dropSuid(p, fileID, st, drop); status != nfs.NFSStatusOk {
			return status
		}
	}
	if a.mode != nil && st.mode&sIFMT != sIFLNK {
		m := *a.mode & 0o7777
		// A non-root caller outside the file's group cannot set setgid (chmod(2) rule).
		if c.uid != 0 && !c.inGroup(gid) {
			m &^= 0o2000
		}
		if err := fsys.Chmod(p, goMode(m)); err != nil {
			return q.fail("chmod", p, err)
		}
	}
	if a.atimeHow != dontChange || a.mtimeHow != dontChange {
		now := time.Now()
		at, mt := st.atime, st.mtime
		switch a.atimeHow {
		case setToServerTime:
			at = now
		case setToClientTime:
			at = a.atime
		}
		switch a.mtimeHow {
		case setToServerTime:
			mt = now
		case setToClientTime:
			mt = a.mtime
		}
		if st.mode&sIFMT != sIFLNK {
			if err := fsys.Chtimes(p, at, mt); err != nil {
				return q.fail("utimes", p, err)
			}
		}
	}
	return nfs.NFSStatusOk
}

func (s *Server) onSetattr(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	a := readSattr(r)
	guard := r.bool()
	var gsec, gnsec uint32
	if guard {
		gsec, gnsec = r.u32(), r.u32()
	}
	if r.err != nil {
		return r.err
	}
	q, id, p, st, status := s.file(cc, h, fh)
	if status != nfs.NFSStatusOk {
		w.status(status)
		w.wcc(nil, nil, 0)
		return nil
	}
	if guard && !nfs.ToNFSTime(st.ctime).EqualTimespec(int64(gsec), int64(gnsec)) {
		w.status(nfs.NFSStatusNotSync)
		w.wcc(st, st, q.e.id)
		return nil
	}
	status = q.apply(p, id, st, a)
	post, _ := q.lstat(p)
	w.status(status)
	w.wcc(st, post, q.e.id)
	return nil
}
