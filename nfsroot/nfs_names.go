package nfsroot

import "github.com/willscott/go-nfs"

// REMOVE, RMDIR, RENAME and LINK: the calls that take names away or add names to existing
// objects, and keep the handle table in step so every handle still finds its object.

func (s *Server) onRemove(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	return s.remove(cc, h, r, w, false)
}

func (s *Server) onRmdir(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	return s.remove(cc, h, r, w, true)
}

func (s *Server) remove(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter, dir bool) error {
	fh, name := readDirop(r)
	if r.err != nil {
		return r.err
	}
	q, dirID, dirPath, dirSt, status := s.parent(cc, h, fh, name)
	if status == nfs.NFSStatusOk && (name == "." || name == "..") {
		status = nfs.NFSStatusInval
		if dir && name == ".." {
			status = nfs.NFSStatusNotEmpty
		}
	}
	p := joinPath(dirPath, name)
	var victim *fstat
	if status == nfs.NFSStatusOk {
		victim, status = q.lstat(p)
	}
	switch {
	case status != nfs.NFSStatusOk:
	case dir && !victim.isDir():
		status = nfs.NFSStatusNotDir
	case !dir && victim.isDir():
		status = nfs.NFSStatusIsDir
	case !q.mayUnlink(dirPath, dirSt, victim):
		status = nfs.NFSStatusAccess
	}
	if status == nfs.NFSStatusOk {
		if err := q.e.FS.Remove(p); err != nil {
			status = q.fail("remove", p, err)
		} else {
			// Not synced: a lost removal record only leaves a link that fails verification.
			q.e.forget(dirID, name, victim.fileID)
		}
	}
	if q == nil {
		w.status(status)
		w.wcc(nil, nil, 0)
		return nil
	}
	post, _ := q.lstat(dirPath)
	w.status(status)
	w.wcc(dirSt, post, q.e.id)
	return nil
}

// parentIn is parent for the second handle of RENAME or LINK, which must name a directory
// of q's export: NFS cannot move or link across exports (XDEV).
func (s *Server) parentIn(q *req, cc *conn, h *rpcCallHdr, fh []byte, name string) (uint64, string, *fstat, nfs.NFSStatus) {
	dq, dirID, dirPath, dirSt, status := s.parent(cc, h, fh, name)
	if status == nfs.NFSStatusOk && dq.e != q.e {
		status = nfs.NFSStatusXDev
	}
	return dirID, dirPath, dirSt, status
}

func (s *Server) onRename(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	ffh, fname := readDirop(r)
	tfh, tname := readDirop(r)
	if r.err != nil {
		return r.err
	}
	q, fdirID, fdirPath, fdirSt, status := s.parent(cc, h, ffh, fname)
	var tdirID uint64
	var tdirPath string
	var tdirSt *fstat
	if status == nfs.NFSStatusOk {
		tdirID, tdirPath, tdirSt, status = s.parentIn(q, cc, h, tfh, tname)
	}
	if status == nfs.NFSStatusOk && (fname == "." || fname == ".." || tname == "." || tname == "..") {
		status = nfs.NFSStatusInval
	}
	from, to := joinPath(fdirPath, fname), joinPath(tdirPath, tname)
	var victim, target *fstat
	if status == nfs.NFSStatusOk {
		victim, status = q.lstat(from)
	}
	if status == nfs.NFSStatusOk && !q.mayUnlink(fdirPath, fdirSt, victim) {
		status = nfs.NFSStatusAccess
	}
	if status == nfs.NFSStatusOk {
		if t, s := q.lstat(to); s == nfs.NFSStatusOk {
			target = t
			if !q.mayUnlink(tdirPath, tdirSt, target) {
				status = nfs.NFSStatusAccess
			}
		}
	}
	if status == nfs.NFSStatusOk && (target == nil || target.fileID != victim.fileID) {
		q.e.files.forget(victim.fileID)
		if err := q.e.FS.Rename(from, to); err != nil {
			status = q.fail("rename", from, err)
		} else {
			if target != nil {
				q.e.forget(tdirID, tname, target.fileID)
			}
			q.e.forget(fdirID, fname, victim.fileID)
			moved, s := q.lstat(to)
			if s == nfs.NFSStatusOk {
				// The moved object keeps its FileID; its handle must find it at once.
				status = errStatus(q.e.tbl.sync(q.e.learn(tdirID, tname, moved)))
			}
		}
	}
	if q == nil {
		w.status(status)
		w.wcc(nil, nil, 0)
		w.wcc(nil, nil, 0)
		return nil
	}
	fpost, _ := q.lstat(fdirPath)
	w.status(status)
	w.wcc(fdirSt, fpost, q.e.id)
	if tdirSt != nil {
		tpost, _ := q.lstat(tdirPath)
		w.wcc(tdirSt, tpost, q.e.id)
	} else {
		w.wcc(nil, nil, 0)
	}
	return nil
}

func (s *Server) onLink(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	dfh, name := readDirop(r)
	if r.err != nil {
		return r.err
	}
	q, id, p, st, status := s.file(cc, h, fh)
	var dirID uint64
	var dirPath string
	var dirSt *fstat
	if status == nfs.NFSStatusOk {
		dirID, dirPath, dirSt, status = s.parentIn(q, cc, h, dfh, name)
	}
	switch {
	case status != nfs.NFSStatusOk:
	case st.isDir():
		status = nfs.NFSStatusIsDir
	case name == "." || name == "..":
		status = nfs.NFSStatusExist
	case !q.mayLink(p, st):
		status = nfs.NFSStatusPerm // fs.protected_hardlinks
	}
	if status == nfs.NFSStatusOk {
		np := joinPath(dirPath, name)
		q.e.files.forget(id)
		if err := q.e.FS.Link(p, np); err != nil {
			status = q.fail("link", np, err)
		} else {
			status = errStatus(q.e.tbl.sync(q.e.learn(dirID, name, st)))
		}
	}
	if q == nil {
		w.status(status)
		w.postOpAttr(nil, 0)
		w.wcc(nil, nil, 0)
		return nil
	}
	post, _ := q.lstat(p)
	w.status(status)
	w.postOpAttr(post, q.e.id)
	if dirSt != nil {
		dpost, _ := q.lstat(dirPath)
		w.wcc(dirSt, dpost, q.e.id)
	} else {
		w.wcc(nil, nil, 0)
	}
	return nil
}
