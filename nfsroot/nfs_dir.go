package nfsroot

import (
	"strings"

	"github.com/willscott/go-nfs"
)

// checkName validates a file name from the wire: one path component, no separators.
func checkName(name string) nfs.NFSStatus {
	switch {
	case len(name) > maxNameLen:
		return nfs.NFSStatusNameTooLong
	case name == "":
		return nfs.NFSStatusNoEnt
	case strings.ContainsAny(name, "/\x00"):
		return nfs.NFSStatusAccess
	}
	return nfs.NFSStatusOk
}

// dirop reads diropargs3: a directory handle and a name. Names longer than a path are
// garbage; names between NAME_MAX and that are answered with NAMETOOLONG.
func readDirop(r *xdrReader) ([]byte, string) {
	fh := r.opaque(maxFHSize)
	return fh, r.str(maxPathLen)
}

func (s *Server) onLookup(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh, name := readDirop(r)
	if r.err != nil {
		return r.err
	}
	q, dirID, dirPath, dirSt, status := s.file(cc, h, fh)
	if status == nfs.NFSStatusOk {
		status = checkName(name)
	}
	if status == nfs.NFSStatusOk && !dirSt.isDir() {
		status = nfs.NFSStatusNotDir
	}
	if status == nfs.NFSStatusOk && !q.may(dirPath, dirSt, mayExec) {
		status = nfs.NFSStatusAccess
	}
	var id uint64
	var st *fstat
	if status == nfs.NFSStatusOk {
		id, st, status = q.lookup(dirID, dirPath, dirSt, name)
	}
	w.status(status)
	if status != nfs.NFSStatusOk {
		if q != nil {
			w.postOpAttr(dirSt, q.e.id)
		} else {
			w.postOpAttr(nil, 0)
		}
		return nil
	}
	w.opaque(q.e.handle(id))
	w.postOpAttr(st, q.e.id)
	w.postOpAttr(dirSt, q.e.id)
	return nil
}

// lookup finds name in a directory and makes its handle durable before returning it.
func (q *req) lookup(dirID uint64, dirPath string, dirSt *fstat, name string) (uint64, *fstat, nfs.NFSStatus) {
	switch name {
	case ".":
		return dirID, dirSt, nfs.NFSStatusOk
	case "..":
		if dirID == q.e.rootID {
			return dirID, dirSt, nfs.NFSStatusOk
		}
		ls := q.e.tbl.linksOf(dirID)
		if len(ls) == 0 {
			return 0, nil, nfs.NFSStatusStale
		}
		_, st, status := q.e.resolve(ls[0].parent)
		return ls[0].parent, st, status
	}
	p := joinPath(dirPath, name)
	before, quiet := q.e.changes.Load(), q.e.changing.Load() == 0
	st, status := q.lstat(p)
	if status != nfs.NFSStatusOk {
		return 0, nil, status
	}
	// The GETATTR, ACCESS or READ that usually follows finds the file without a path walk.
	q.e.remember(st.fileID, p, st, before, quiet)
	if err := q.e.tbl.sync(q.e.learn(dirID, name, st)); err != nil {
		q.logger().Error("recording handle", "path", joinPath(dirPath, name), "err", err)
		return 0, nil, nfs.NFSStatusServerFault
	}
	return st.fileID, st, nfs.NFSStatusOk
}

// listing returns the directory entries for a READDIR(PLUS) starting at cookie. A cookie is
// the index after the entry it follows in the listing named by the verifier.
func (q *req) listing(dirID uint64, dirPath string, dirSt *fstat, cookie, verf uint64) (*dirList, nfs.NFSStatus) {
	if cookie != 0 {
		if l := q.e.dirs.get(dirID, verf); l != nil {
			return l, nfs.NFSStatusOk
		}
	}
	before := q.e.changes.Load()
	if q.e.changing.Load() == 0 {
		if l := q.e.dirs.fresh(dirID, before, dirSt); l != nil {
			return l, nfs.NFSStatusOk
		}
	}
	ents, err := q.e.FS.ReadDir(dirPath)
	if err != nil {
		return nil, q.fail("readdir", dirPath, err)
	}
	// Something changed while reading: serve it, never reuse it.
	reusable := q.e.changing.Load() == 0 && q.e.changes.Load() == before
	// A client continuing an expired listing gets a fresh one read from the same index on:
	// entries may shift if the directory changed, as on any server without stable cookies.
	return q.e.dirs.put(dirID, ents, before, reusable, dirSt), nfs.NFSStatusOk
}

func (s *Server) onReaddir(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	return s.readdir(cc, h, r, w, false)
}

func (s *Server) onReaddirplus(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	return s.readdir(cc, h, r, w, true)
}

func (s *Server) readdir(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter, plus bool) error {
	fh := r.opaque(maxFHSize)
	cookie := r.u64()
	verfb := r.fixed(8)
	dircount := r.u32()
	maxcount := dircount
	if plus {
		maxcount = r.u32()
	}
	if r.err != nil {
		return r.err
	}
	verf := uint64(0)
	for _, b := range verfb {
		verf = verf<<8 | uint64(b)
	}
	q, dirID, dirPath, dirSt, status := s.file(cc, h, fh)
	if status == nfs.NFSStatusOk && !dirSt.isDir() {
		status = nfs.NFSStatusNotDir
	}
	if status == nfs.NFSStatusOk && !q.may(dirPath, dirSt, mayRead) {
		status = nfs.NFSStatusAccess
	}
	var l *dirList
	if status == nfs.NFSStatusOk {
		l, status = q.listing(dirID, dirPath, dirSt, cookie, verf)
	}
	// Positions 0 and 1 are "." and "..", as knfsd and ganesha list them (some clients,
	// go-nfs-client among them, need "."); the entry at position i has cookie i+1.
	total := 0
	if l != nil {
		total = len(l.ents) + 2
	}
	if status == nfs.NFSStatusOk && cookie > uint64(total) {
		status = nfs.NFSStatusBadCookie
	}
	if status != nfs.NFSStatusOk {
		w.status(status)
		if q != nil {
			w.postOpAttr(dirSt, q.e.id)
		} else {
			w.postOpAttr(nil, 0)
		}
		return nil
	}
	start := len(w.b)
	w.status(nfs.NFSStatusOk)
	w.postOpAttr(dirSt, q.e.id)
	w.u64(l.verf)
	limit := int(min(maxcount, maxIO)) - 8 // room for the list end and eof
	dirBytes := 0
	var seq uint64
	i := int(cookie)
	for ; i < total; i++ {
		var st fstat
		var name string
		switch i {
		case 0:
			st, name = *dirSt, "."
		case 1:
			name = ".."
			_, pst, s := q.lookup(dirID, dirPath, dirSt, "..")
			if s != nfs.NFSStatusOk {
				continue
			}
			st = *pst
		default:
			fi := l.ents[i-2]
			var ok bool
			if st, ok = statOf(fi); !ok {
				continue
			}
			name = fi.Name()
		}
		mark := len(w.b)
		w.bool(true)
		w.u64(st.fileID)
		w.str(name)
		w.u64(uint64(i + 1))
		dirBytes += 8 + 4 + len(name) + 8
		if plus {
			w.postOpAttr(&st, q.e.id)
			w.bool(true)
			w.handle(q.e, st.fileID)
			if s := q.e.learn(dirID, name, &st); s != 0 {
				seq = s
			}
		}
		// READDIRPLUS fills up to maxcount and ignores dircount, as knfsd does: the
		// Linux client sends dircount = maxcount/8, which would cost twice the round trips.
		if len(w.b)-start > limit || (!plus && dirBytes > int(dircount)) {
			w.b = w.b[:mark]
			break
		}
	}
	if i == int(cookie) && i < total {
		w.b = w.b[:start]
		w.status(nfs.NFSStatusTooSmall)
		w.postOpAttr(dirSt, q.e.id)
		return nil
	}
	if err := q.e.tbl.sync(seq); err != nil {
		q.logger().Error("recording handles", "path", dirPath, "err", err)
		w.b = w.b[:start]
		w.status(nfs.NFSStatusServerFault)
		w.postOpAttr(dirSt, q.e.id)
		return nil
	}
	w.bool(false)
	w.bool(i >= total)
	return nil
}
