package nfsroot

import (
	"log/slog"
	"os"

	"github.com/willscott/go-nfs"
)

type procFunc = func(*conn, *rpcCallHdr, *xdrReader, *xdrWriter) error

func (s *Server) nfsProc(proc uint32) procFunc {
	switch nfs.NFSProcedure(proc) {
	case nfs.NFSProcedureNull:
		return func(*conn, *rpcCallHdr, *xdrReader, *xdrWriter) error { return nil }
	case nfs.NFSProcedureGetAttr:
		return s.onGetattr
	case nfs.NFSProcedureSetAttr:
		return s.onSetattr
	case nfs.NFSProcedureLookup:
		return s.onLookup
	case nfs.NFSProcedureAccess:
		return s.onAccess
	case nfs.NFSProcedureReadlink:
		return s.onReadlink
	case nfs.NFSProcedureRead:
		return s.onRead
	case nfs.NFSProcedureWrite:
		return s.onWrite
	case nfs.NFSProcedureCreate:
		return s.onCreate
	case nfs.NFSProcedureMkDir:
		return s.onMkdir
	case nfs.NFSProcedureSymlink:
		return s.onSymlink
	case nfs.NFSProcedureMkNod:
		return s.onMknod
	case nfs.NFSProcedureRemove:
		return s.onRemove
	case nfs.NFSProcedureRmDir:
		return s.onRmdir
	case nfs.NFSProcedureRename:
		return s.onRename
	case nfs.NFSProcedureLink:
		return s.onLink
	case nfs.NFSProcedureReadDir:
		return s.onReaddir
	case nfs.NFSProcedureReadDirPlus:
		return s.onReaddirplus
	case nfs.NFSProcedureFSStat:
		return s.onFsstat
	case nfs.NFSProcedureFSInfo:
		return s.onFsinfo
	case nfs.NFSProcedurePathConf:
		return s.onPathconf
	case nfs.NFSProcedureCommit:
		return s.onCommit
	}
	return nil
}

// req is one NFS call bound to the export its file handle names.
type req struct {
	e    *export
	cc   *conn
	cred cred
}

// logger is the export's logger with the client's address; built only when a line is
// logged, since most calls log nothing.
func (q *req) logger() *slog.Logger { return q.e.log.With("client", q.cc.addr.String()) }

// bind routes a handle to its export: the handle must be ours, its export must exist and
// allow the caller's address, and its instance must be current. Another board's handle is
// refused here, before any file system work.
func (s *Server) bind(cc *conn, h *rpcCallHdr, fh []byte) (*req, uint64, nfs.NFSStatus) {
	expID, inst, fileID, ok := parseHandle(fh)
	if !ok {
		return nil, 0, nfs.NFSStatusBadHandle
	}
	e := s.exportByID(h, expID)
	if e == nil {
		return nil, 0, nfs.NFSStatusStale
	}
	if !e.allowed(cc.addr) {
		cc.warn("refused another board's file handle", "owner", e.Board)
		return nil, 0, nfs.NFSStatusAccess
	}
	if err := e.init(); err != nil {
		e.log.Error("export unavailable", "client", cc.addr.String(), "err", err)
		return nil, 0, nfs.NFSStatusServerFault
	}
	if inst != e.inst {
		return nil, 0, nfs.NFSStatusStale
	}
	e.touch()
	return &req{e: e, cc: cc, cred: e.effective(h.cred)}, fileID, nfs.NFSStatusOk
}

// file binds and resolves a handle to a path and its status.
func (s *Server) file(cc *conn, h *rpcCallHdr, fh []byte) (*req, uint64, string, *fstat, nfs.NFSStatus) {
	q, id, st := s.bind(cc, h, fh)
	if st != nfs.NFSStatusOk {
		return nil, 0, "", nil, st
	}
	p, attr, st := q.e.resolve(id)
	return q, id, p, attr, st
}

// lstat returns the status of path.
func (q *req) lstat(p string) (*fstat, nfs.NFSStatus) {
	if p == "" { // a handle that did not resolve: no attributes rather than the root's
		return nil, nfs.NFSStatusStale
	}
	fi, err := q.e.FS.Lstat(p)
	if err != nil {
		return nil, statusOf(err)
	}
	st, ok := statOf(fi)
	if !ok {
		q.logger().Error("file has no status", "path", p)
		return nil, nfs.NFSStatusServerFault
	}
	return &st, nfs.NFSStatusOk
}

// fail logs an unexpected file system error with its context and maps it to a status.
func (q *req) fail(op, p string, err error) nfs.NFSStatus {
	st := statusOf(err)
	if st == nfs.NFSStatusIO || st == nfs.NFSStatusServerFault {
		q.logger().Error(op+" failed", "path", p, "err", err)
	}
	return st
}

func (w *xdrWriter) status(st nfs.NFSStatus) { w.u32(uint32(st)) }

// statusAttr writes the status and post_op_attr that ACCESS, READLINK, FSSTAT, FSINFO and
// PATHCONF replies begin with: attributes only on success, when q is bound and st is the
// object's status. It reports whether the rest of a successful reply follows.
func (w *xdrWriter) statusAttr(status nfs.NFSStatus, q *req, st *fstat) bool {
	w.status(status)
	if status != nfs.NFSStatusOk {
		w.postOpAttr(nil, 0)
		return false
	}
	w.postOpAttr(st, q.e.id)
	return true
}

func (s *Server) onGetattr(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	if r.err != nil {
		return r.err
	}
	q, _, _, st, status := s.file(cc, h, fh)
	w.status(status)
	if status == nfs.NFSStatusOk {
		a := attrOf(st, q.e.id)
		w.fattr(&a)
	}
	return nil
}

func (s *Server) onAccess(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	asked := r.u32()
	if r.err != nil {
		return r.err
	}
	q, _, p, st, status := s.file(cc, h, fh)
	if !w.statusAttr(status, q, st) {
		return nil
	}
	w.u32(q.accessBits(p, st, asked))
	return nil
}

func (s *Server) onReadlink(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	if r.err != nil {
		return r.err
	}
	q, _, p, st, status := s.file(cc, h, fh)
	if status == nfs.NFSStatusOk && st.mode&sIFMT != sIFLNK {
		status = nfs.NFSStatusInval
	}
	var target string
	if status == nfs.NFSStatusOk {
		var err error
		if target, err = q.e.FS.Readlink(p); err != nil {
			status = q.fail("readlink", p, err)
		}
	}
	if !w.statusAttr(status, q, st) {
		return nil
	}
	w.str(target)
	return nil
}

func (s *Server) onFsstat(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	if r.err != nil {
		return r.err
	}
	q, _, _, st, status := s.file(cc, h, fh)
	if !w.statusAttr(status, q, st) {
		return nil
	}
	tb, fb, ab, tf, ff, af := diskSpace(q.e.StateDir)
	w.u64(tb)
	w.u64(fb)
	w.u64(ab)
	w.u64(tf)
	w.u64(ff)
	w.u64(af)
	w.u32(0) // invarsec: the numbers may change at any time
	return nil
}

func (s *Server) onFsinfo(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	if r.err != nil {
		return r.err
	}
	q, _, _, st, status := s.file(cc, h, fh)
	if !w.statusAttr(status, q, st) {
		return nil
	}
	w.u32(maxIO)   // rtmax
	w.u32(maxIO)   // rtpref
	w.u32(4096)    // rtmult
	w.u32(maxIO)   // wtmax
	w.u32(maxIO)   // wtpref
	w.u32(4096)    // wtmult
	w.u32(1 << 16) // dtpref
	w.u64(1<<63 - 1)
	w.u32(0) // time_delta: nanosecond timestamps
	w.u32(1)
	w.u32(0x1 | 0x2 | 0x8 | 0x10) // FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME
	return nil
}

func (s *Server) onPathconf(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	if r.err != nil {
		return r.err
	}
	q, _, _, st, status := s.file(cc, h, fh)
	if !w.statusAttr(status, q, st) {
		return nil
	}
	w.u32(65000)      // linkmax, as ext4
	w.u32(maxNameLen) // name_max
	w.bool(true)      // no_trunc: long names are refused, not cut
	w.bool(true)      // chown_restricted
	w.bool(false)     // case_insensitive
	w.bool(true)      // case_preserving
	return nil
}

// goMode turns mode bits from the wire into an os.FileMode the overlay's Chmod honours.
func goMode(m uint32) os.FileMode {
	fm := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}
