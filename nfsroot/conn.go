package nfsroot

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// maxInFlight bounds the requests one connection runs at once: enough to keep a board's
	// readahead busy, small enough that one board cannot take every core or much memory.
	maxInFlight = 16
	// writeTimeout closes a connection whose peer stopped reading replies, so its stuck
	// writers give their memory back instead of waiting forever.
	writeTimeout = 2 * time.Minute
)

// conn is one client connection.
type conn struct {
	s    *Server
	c    net.Conn
	addr netip.Addr
	log  *slog.Logger
	wmu  sync.Mutex

	warnings atomic.Int32 // warnings logged; capped so a hostile peer cannot flood the log
}

const maxWarningsPerConn = 20

// warn logs a warning about what the peer sent, at most maxWarningsPerConn per connection.
func (cc *conn) warn(msg string, args ...any) {
	switch n := cc.warnings.Add(1); {
	case n < maxWarningsPerConn:
		cc.log.Warn(msg, args...)
	case n == maxWarningsPerConn:
		cc.log.Warn(msg+"; further warnings on this connection suppressed", args...)
	}
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	addr := ap.Addr().Unmap()
	cc := &conn{s: s, c: c, addr: addr, log: s.log.With("board", s.boardFor(addr), "client", addr.String())}
	s.connMu.Lock()
	s.conns[addr]++
	s.connMu.Unlock()
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		close(done)
		c.Close()
		s.connMu.Lock()
		if s.conns[addr]--; s.conns[addr] <= 0 {
			delete(s.conns, addr)
		}
		s.connMu.Unlock()
	}()
	go func() {
		select {
		case <-ctx.Done():
			c.Close()
		case <-done:
		}
	}()
	br := bufio.NewReaderSize(c, 64<<10)
	sem := make(chan struct{}, maxInFlight)
	known := false
	for {
		bp := s.records.Get().(*[]byte)
		// Checked until the address turns out to belong to a board (its IP may be learned
		// after it connected), then trusted for the connection's life: calls are still
		// checked one by one against their export.
		limit := maxRecord
		if !known {
			if known = s.known(addr); !known {
				limit = maxStrangerRecord
			}
		}
		rec, err := readRecord(br, *bp, limit)
		if err != nil {
			s.records.Put(bp)
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), ctx.Err() != nil:
			case errors.Is(err, syscall.ECONNRESET): // a board rebooting or powered off
				cc.log.Info("connection reset by the board")
			default:
				cc.log.Warn("closing connection", "err", err)
			}
			return
		}
		*bp = rec
		h, cerr := parseCall(rec)
		if h == nil {
			s.records.Put(bp) // a reply or junk without an xid: nothing to answer
			continue
		}
		// With nothing else waiting on the socket, answer on this goroutine: handing a
		// lone request to another goroutine costs a thread wake-up per call, which on a
		// loaded machine is most of a small call's latency. Pipelined requests, and calls
		// that may wait on the disk, get their own goroutines so they run side by side.
		if br.Buffered() == 0 && !mayBlock(h) {
			cc.write(s.dispatch(cc, h, cerr))
			s.records.Put(bp)
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() {
				s.records.Put(bp)
				<-sem
				wg.Done()
			}()
			cc.write(s.dispatch(cc, h, cerr))
		}()
	}
}

// mayBlock reports calls that can wait on an fsync: COMMIT and stable WRITEs.
func mayBlock(h *rpcCallHdr) bool {
	if h.prog != progNFS {
		return false
	}
	switch h.proc {
	case 21:
		return true
	case 7:
		r := xdrReader{b: h.args}
		r.opaque(maxFHSize)
		r.u64()
		r.u32()
		return r.u32() != unstable || r.err != nil
	}
	return false
}

// mutates reports NFS procedures that change the tree or attributes.
func mutates(proc uint32) bool {
	switch proc {
	case 2, 7, 8, 9, 10, 11, 12, 13, 14, 15: // SETATTR WRITE CREATE MKDIR SYMLINK MKNOD REMOVE RMDIR RENAME LINK
		return true
	}
	return false
}

// exportOfArgs finds the export named by the file handle every NFS call starts with.
func (s *Server) exportOfArgs(args []byte) *export {
	r := xdrReader{b: args}
	exp, _, _, ok := parseHandle(r.opaque(maxFHSize))
	if !ok {
		return nil
	}
	return s.exports.Load().byID[exp]
}

// boardFor names the board a client address belongs to, for the connection's log lines.
func (s *Server) boardFor(a netip.Addr) string {
	for _, e := range s.exports.Load().byID {
		if e.allowed(a) {
			return e.Board
		}
	}
	return "unknown"
}

// known reports whether any export allows the address.
func (s *Server) known(a netip.Addr) bool { return s.boardFor(a) != "unknown" }

func (cc *conn) write(rec []byte) {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	_ = cc.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := cc.c.Write(rec); err != nil {
		cc.log.Warn("writing reply; closing connection", "err", err)
		cc.c.Close()
	}
	cc.s.putReply(rec)
}

func (s *Server) getReply() []byte {
	if b, ok := s.replies.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return make([]byte, 0, 8<<10)
}

// putReply keeps a sent reply's buffer for the next one; giant ones go to the collector.
func (s *Server) putReply(b []byte) {
	if cap(b) > 2*maxRecord {
		return
	}
	b = b[:0]
	s.replies.Put(&b)
}

// errGarbage makes dispatch answer GARBAGE_ARGS.
var errGarbage = errors.New("garbage arguments")

// dispatch answers one call and returns the reply record.
func (s *Server) dispatch(cc *conn, h *rpcCallHdr, cerr *callError) []byte {
	defer h.release() // before the reply is sent: a reset waits for calls, not for peers
	w := replyBuf(s.getReply(), h.xid)
	if cerr != nil {
		cc.warn("refusing call", "prog", h.prog, "vers", h.vers, "proc", h.proc, "err", cerr.err)
		w.callError(cerr, 0, 0)
		return w.finish()
	}
	var handler func(*conn, *rpcCallHdr, *xdrReader, *xdrWriter) error
	switch h.prog {
	case progNFS:
		if h.vers != 3 {
			w.callError(&callError{stat: acceptProgMismatch}, 3, 3)
			return w.finish()
		}
		handler = s.nfsProc(h.proc)
	case progMount:
		if h.vers != 3 {
			w.callError(&callError{stat: acceptProgMismatch}, 3, 3)
			return w.finish()
		}
		handler = s.mountProc(h.proc)
	case progNFSACL:
		if h.vers != 3 {
			w.callError(&callError{stat: acceptProgMismatch}, 3, 3)
			return w.finish()
		}
		handler = s.nfsaclProc(h.proc)
	default:
		// NLM and the rest: not offered (boards mount with nolock).
		w.accepted(acceptProgUnavail)
		return w.finish()
	}
	if handler == nil {
		w.accepted(acceptProcUnavail)
		return w.finish()
	}
	if h.prog == progNFS && mutates(h.proc) {
		// Cached directory listings are reused only while nothing in the export changed;
		// mark the change before and after it happens (see export.changes).
		if e := s.exportOfArgs(h.args); e != nil {
			e.changing.Add(1)
			e.changes.Add(1)
			defer func() {
				e.changes.Add(1)
				e.changing.Add(-1)
			}()
		}
	}
	mark := len(w.b)
	w.accepted(acceptSuccess)
	r := &xdrReader{b: h.args}
	if err := handler(cc, h, r, w); err != nil {
		cc.warn("garbage arguments", "prog", h.prog, "proc", h.proc, "err", err)
		w.b = w.b[:mark]
		w.accepted(acceptGarbageArgs)
	}
	return w.finish()
}
