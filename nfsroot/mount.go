package nfsroot

import (
	"log/slog"
	"path"
	"strings"
	"time"

	"github.com/willscott/go-nfs"
)

// MOUNT v3 (RFC 1813 appendix I). A board may mount only its own export and only from an
// address its export allows; everyone else gets MNT3ERR_ACCES, whatever path it asks for,
// so a probe cannot even learn which exports exist.

func (s *Server) mountProc(proc uint32) func(*conn, *rpcCallHdr, *xdrReader, *xdrWriter) error {
	switch nfs.MountProcedure(proc) {
	case nfs.MountProcNull:
		return func(*conn, *rpcCallHdr, *xdrReader, *xdrWriter) error { return nil }
	case nfs.MountProcMount:
		return s.onMnt
	case nfs.MountProcDump:
		return s.onDump
	case nfs.MountProcUmnt:
		return s.onUmnt
	case nfs.MountProcUmntAll:
		return s.onUmntAll
	case nfs.MountProcExport:
		return s.onExport
	}
	return nil
}

// exportFor finds the export a client asks for by path, if the client may use it. A path
// below an export (libnfs mounts the directory of the file it was given, knfsd allows it)
// returns the rest as a path inside the export.
func (s *Server) exportFor(p string, cc *conn) (*export, string) {
	p = path.Clean("/" + p)
	set := s.exports.Load()
	for dir, rest := p, "/"; ; {
		if e := set.byPath[dir]; e != nil {
			if !e.allowed(cc.addr) {
				return nil, ""
			}
			return e, rest
		}
		if dir == "/" {
			return nil, ""
		}
		rest = path.Join("/", path.Base(dir), rest)
		dir = path.Dir(dir)
	}
}

// mountPoint walks from the export root to sub, recording each step so the handle it
// returns resolves like any other.
func (e *export) mountPoint(sub string) (uint64, nfs.MountStatus) {
	id := e.rootID
	dir := "/"
	for _, name := range strings.Split(strings.Trim(sub, "/"), "/") {
		if name == "" {
			continue
		}
		p := joinPath(dir, name)
		fi, err := e.FS.Lstat(p)
		if err != nil {
			return 0, nfs.MountStatusErrNoEnt
		}
		st, ok := statOf(fi)
		if !ok {
			return 0, nfs.MountStatusErrServerFault
		}
		if !st.isDir() {
			return 0, nfs.MountStatusErrNotDir
		}
		if err := e.tbl.sync(e.learn(id, name, &st)); err != nil {
			return 0, nfs.MountStatusErrServerFault
		}
		id, dir = st.fileID, p
	}
	return id, nfs.MountStatusOk
}

func (s *Server) onMnt(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	p := r.str(maxPathLen)
	if r.err != nil {
		return r.err
	}
	e, sub := s.exportFor(p, cc)
	if e != nil && !h.hold(e) {
		e, sub = s.exportFor(p, cc) // removed meanwhile: the new table is in place
		if e != nil && !h.hold(e) {
			e = nil
		}
	}
	if e == nil {
		cc.warn("mount refused: not this client's export", "path", p)
		w.u32(uint32(nfs.MountStatusErrAcces))
		return nil
	}
	log := e.log.With("client", cc.addr.String())
	if err := e.init(); err != nil {
		s.rl.Log(log, slog.LevelError, cc.addr.String(), "mount failed", "err", err)
		w.u32(uint32(nfs.MountStatusErrServerFault))
		return nil
	}
	id, st := e.mountPoint(sub)
	if st != nfs.MountStatusOk {
		s.rl.Log(log, slog.LevelWarn, cc.addr.String(), "mount refused", "path", p, "status", st)
		w.u32(uint32(st))
		return nil
	}
	e.mu.Lock()
	e.mounts[cc.addr] = time.Now()
	e.mu.Unlock()
	e.touch()
	s.rl.Log(log, slog.LevelInfo, cc.addr.String(), "mounted", "machine", h.cred.machine)
	if s.onMount != nil {
		s.onMount(e.Board, cc.addr)
	}
	w.u32(uint32(nfs.MountStatusOk))
	w.opaque(e.handle(id))
	w.u32(1) // one auth flavor: AUTH_SYS
	w.u32(authSys)
	return nil
}

func (s *Server) onUmnt(cc *conn, _ *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	p := r.str(maxPathLen)
	if r.err != nil {
		return r.err
	}
	if e, _ := s.exportFor(p, cc); e != nil {
		e.mu.Lock()
		delete(e.mounts, cc.addr)
		e.mu.Unlock()
		s.rl.Log(e.log, slog.LevelInfo, cc.addr.String(), "unmounted", "client", cc.addr.String())
	}
	return nil
}

func (s *Server) onUmntAll(cc *conn, _ *rpcCallHdr, _ *xdrReader, _ *xdrWriter) error {
	for _, e := range s.exports.Load().byID {
		e.mu.Lock()
		delete(e.mounts, cc.addr)
		e.mu.Unlock()
	}
	return nil
}

// onDump lists the caller's own mounts only: other boards' mounts are not its business.
func (s *Server) onDump(cc *conn, _ *rpcCallHdr, _ *xdrReader, w *xdrWriter) error {
	for _, e := range s.exports.Load().byID {
		if !e.allowed(cc.addr) {
			continue
		}
		e.mu.Lock()
		for a := range e.mounts {
			if a == cc.addr {
				w.bool(true)
				w.str(a.String())
				w.str(e.Path)
			}
		}
		e.mu.Unlock()
	}
	w.bool(false)
	return nil
}

// onExport lists the exports the caller may mount, each open to the caller's address.
func (s *Server) onExport(cc *conn, _ *rpcCallHdr, _ *xdrReader, w *xdrWriter) error {
	for _, e := range s.exports.Load().byID {
		if !e.allowed(cc.addr) {
			continue
		}
		w.bool(true)
		w.str(e.Path)
		w.bool(true)
		w.str(cc.addr.String())
		w.bool(false)
	}
	w.bool(false)
	return nil
}
