package nfsroot

import (
	"errors"
	"io"
	"slices"

	"github.com/willscott/go-nfs"
)

// stable_how of WRITE.
const (
	unstable = 0
	fileSync = 2
)

func (s *Server) onRead(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	off := r.u64()
	count := r.u32()
	if r.err != nil {
		return r.err
	}
	count = min(count, maxIO)
	q, id, status := s.bind(cc, h, fh)
	if status != nfs.NFSStatusOk {
		w.status(status)
		w.postOpAttr(nil, 0)
		return nil
	}
	f, p, st, status := q.openData(id, false)
	if status != nfs.NFSStatusOk {
		w.status(status)
		w.postOpAttr(st, q.e.id)
		return nil
	}
	defer q.e.files.put(f)
	if st != nil {
		// Size the buffer to what the file holds, not what was asked: a 64 KiB READ of a
		// 2 KiB file should not zero 64 KiB. A file growing meanwhile just reads short.
		count = uint32(max(0, min(int64(count), st.size-int64(min(off, 1<<62)))))
	}
	start := len(w.b)
	w.status(nfs.NFSStatusOk)
	w.postOpAttr(st, q.e.id)
	hdr := len(w.b)
	w.u32(0) // count, filled below
	w.u32(0) // eof
	w.u32(0) // data length
	dataAt := len(w.b)
	if pp := cc.pipe(int64(min(off, 1<<62)), int(count)); pp != nil {
		// The data goes from the page cache to the socket (splice.go); the pipe says how
		// much the file gave, which is what the header counts.
		eof, err := spliceRead(f, pp, int64(off), int(count))
		if err == nil {
			cc.s.pipes.spliced.Add(1)
			// The pipe's pages stand in for the reply buffer the call was charged for:
			// the header moves to a small one and the big one goes back to the pool now.
			hb := append(cc.s.bufs.get(dataAt), w.b[:dataAt]...)
			cc.s.bufs.put(w.b)
			w.b = hb
			w.data = pp
			n := pp.n
			eof = eof || (st != nil && int64(off)+int64(n) >= st.size)
			put32(w.b[hdr:], uint32(n))
			if eof {
				put32(w.b[hdr+4:], 1)
			}
			put32(w.b[hdr+8:], uint32(n))
			return nil
		}
		cc.putPipe(pp) // closed if it took part of the range; the copy below reads it all
	}
	w.b = slices.Grow(w.b, (int(count)+3)&^3)[:dataAt+(int(count)+3)&^3]
	n, err := f.f.ReadAt(w.b[dataAt:dataAt+int(count)], int64(off))
	if err != nil && !errors.Is(err, io.EOF) {
		w.b = w.b[:start]
		w.status(q.fail("read", p, err))
		w.postOpAttr(st, q.e.id)
		return nil
	}
	eof := errors.Is(err, io.EOF) || (st != nil && int64(off)+int64(n) >= st.size)
	w.b = w.b[:dataAt+((n+3)&^3)]
	for i := dataAt + n; i < len(w.b); i++ {
		w.b[i] = 0
	}
	put32(w.b[hdr:], uint32(n))
	if eof {
		put32(w.b[hdr+4:], 1)
	}
	put32(w.b[hdr+8:], uint32(n))
	return nil
}

// spliceRead moves the file's range into the empty pipe p.
func spliceRead(f *openFile, p *pipe, off int64, count int) (eof bool, err error) {
	rc, err := f.f.SyscallConn()
	if err != nil {
		return false, err
	}
	return p.fill(rc, off, count)
}

// openData finds the descriptor a READ (write false) or WRITE goes through, and the
// file's status. An open descriptor for the FileID is the file itself, wherever it now
// lives (and even if it was removed while open): its fstat is the attributes, and no path
// walk is needed; WRITE takes only a read-write one. Without one, the handle is resolved
// to a path, checked, and opened. On failure f is nil and st is what is known of the file,
// for the reply's attributes; on success the caller puts f back.
func (q *req) openData(id uint64, write bool) (f *openFile, p string, st *fstat, status nfs.NFSStatus) {
	if f = q.e.files.cached(id); f != nil && (f.rw || !write) {
		if st = q.fstat(f, ""); st == nil || st.fileID != id {
			q.e.files.put(f)
			f, st = nil, nil
		}
	} else if f != nil {
		q.e.files.put(f)
		f = nil
	}
	status = nfs.NFSStatusOk
	if f == nil {
		p, st, status = q.e.resolve(id)
	}
	switch {
	case status != nfs.NFSStatusOk:
	case st.isDir():
		status = nfs.NFSStatusIsDir
	case st.mode&sIFMT != sIFREG:
		status = nfs.NFSStatusInval
	case write && !q.mayWriteData(p, f, st), !write && !q.mayReadData(p, f, st):
		status = nfs.NFSStatusAccess
	}
	if status == nfs.NFSStatusOk && f == nil {
		var err error
		if f, err = q.e.files.get(q.e.FS, id, p, st.loc, write); err != nil {
			op := "open"
			if write {
				op = "open for write"
			}
			status = q.fail(op, p, err)
		}
	} else if status != nfs.NFSStatusOk && f != nil {
		q.e.files.put(f)
		f = nil
	}
	return f, p, st, status
}

func put32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}

func (s *Server) onWrite(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	off := r.u64()
	r.u32() // count: the opaque's own length is what is written
	stable := r.u32()
	data := r.opaque(maxIO)
	if r.err != nil {
		return r.err
	}
	q, id, status := s.bind(cc, h, fh)
	var p string
	var st *fstat
	var f *openFile
	if status == nfs.NFSStatusOk {
		f, p, st, status = q.openData(id, true)
	}
	if status == nfs.NFSStatusOk {
		defer q.e.files.put(f)
		// A write by anyone but root makes a setuid program an ordinary file, as
		// file_remove_privs does before the kernel writes.
		status = q.dropSuid(p, id, st, q.suidBitsToDrop(st))
	}
	if status == nfs.NFSStatusOk {
		status = q.writeAt(f, p, data, int64(off), stable != unstable)
	}
	if status != nfs.NFSStatusOk {
		q.unchangedReply(w, status, st)
		return nil
	}
	w.status(nfs.NFSStatusOk)
	w.wcc(st, q.fstat(f, p), q.e.id)
	w.u32(uint32(len(data)))
	if stable != unstable {
		w.u32(fileSync)
	} else {
		w.u32(unstable)
	}
	w.fixed(s.verf[:])
	return nil
}

// writeAt writes data; with sync set it is on disk before the reply says FILE_SYNC.
func (q *req) writeAt(f *openFile, p string, data []byte, off int64, sync bool) nfs.NFSStatus {
	if _, err := f.f.WriteAt(data, off); err != nil {
		return q.fail("write", p, err)
	}
	if sync {
		if err := f.f.Sync(); err != nil {
			return q.fail("fsync", p, err)
		}
		if err := q.e.tbl.durable(); err != nil {
			return q.fail("fsync handles", p, err)
		}
	}
	return nfs.NFSStatusOk
}

// unchangedReply writes the status and wcc_data of a COMMIT, or of a WRITE that failed:
// the attributes known before the call stand on both sides (none when the handle did not
// bind, q nil).
func (q *req) unchangedReply(w *xdrWriter, status nfs.NFSStatus, st *fstat) {
	w.status(status)
	if q == nil {
		w.wcc(nil, nil, 0)
		return
	}
	w.wcc(st, st, q.e.id)
}

func (s *Server) onCommit(cc *conn, h *rpcCallHdr, r *xdrReader, w *xdrWriter) error {
	fh := r.opaque(maxFHSize)
	r.u64()
	r.u32() // offset and count: the whole file is flushed, which covers any range
	if r.err != nil {
		return r.err
	}
	q, id, p, st, status := s.file(cc, h, fh)
	if status == nfs.NFSStatusOk && st.mode&sIFMT != sIFREG {
		status = nfs.NFSStatusInval
	}
	if status == nfs.NFSStatusOk {
		// fsync through any descriptor of the inode flushes all of its dirty data; reuse the
		// cached one when there is one so COMMIT never copies a file up.
		f, err := q.e.files.get(q.e.FS, id, p, st.loc, false)
		if err == nil {
			err = f.f.Sync()
			q.e.files.put(f)
		}
		if err == nil {
			// The handles the board holds must survive what its data survives.
			err = q.e.tbl.durable()
		}
		if err != nil {
			status = q.fail("commit", p, err)
		}
	}
	q.unchangedReply(w, status, st)
	if status == nfs.NFSStatusOk {
		w.fixed(s.verf[:])
	}
	return nil
}

// fstat is the status of an open file through its descriptor, cheaper than a path walk;
// it falls back to the path when the descriptor cannot say.
func (q *req) fstat(f *openFile, p string) *fstat {
	if fi, err := f.f.Stat(); err == nil {
		if st, ok := statOf(fi); ok {
			return &st
		}
	}
	st, _ := q.lstat(p)
	return st
}
