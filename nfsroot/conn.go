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
	// readahead busy, small enough that one board cannot take every core (bytes are
	// bounded by the connection's budget, see limits).
	maxInFlight = 16
	// deadlineSlack: a deadline is moved only when it would move by more than its
	// timeout/deadlineSlack, not on every call (each move costs a runtime timer update); a
	// timeout may so end up to 1/64 early.
	deadlineSlack = 64
)

// conn is one client connection.
type conn struct {
	s    *Server
	c    net.Conn
	addr netip.Addr
	log  *slog.Logger
	wmu  sync.Mutex
	// writeDeadline is the socket's write deadline as last set (under wmu).
	writeDeadline time.Time
	peer          *peer   // its address's share of the limits
	bytes         *budget // its own: calls in flight and replies not yet sent
	// raw is the TCP socket for spliced READ replies (splice.go); nil: every reply is
	// copied. pipes counts the pipes its calls hold (at most pipesPerConn), calls the
	// calls read and not yet answered.
	raw   syscall.RawConn
	pipes atomic.Int32
	calls atomic.Int32
}

// warn logs a warning about what the peer sent, rate-limited per client address.
func (cc *conn) warn(msg string, args ...any) {
	cc.s.rl.Log(cc.log, slog.LevelWarn, cc.addr.String(), msg, args...)
}

// readerSize is the connection's read buffer: enough for a burst of small pipelined
// calls; big records bypass it, and thousands of idle connections hold 4 KiB each.
const readerSize = 4 << 10

func (s *Server) serveConn(ctx context.Context, c net.Conn, addr netip.Addr, p *peer, stranger bool) {
	cc := &conn{s: s, c: c, addr: addr, peer: p, bytes: newBudget(s.lim.connBytes),
		log: s.log.With("board", s.boardFor(addr), "client", addr.String())}
	if sc, ok := c.(syscall.Conn); ok {
		cc.raw, _ = sc.SyscallConn()
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		wg.Wait() // replies of calls in flight are still sent after the peer's EOF
		cancel()
		c.Close()
	}()
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	br := bufio.NewReaderSize(c, readerSize)
	sem := make(chan struct{}, s.lim.inFlightPerConn)
	known := !stranger
	connected := time.Now()
	var readDeadline time.Time // as last set
	for {
		// Checked until the address turns out to belong to a board (its IP may be learned
		// after it connected), then trusted for the connection's life: calls are still
		// checked one by one against their export.
		if !known {
			known = s.known(addr)
		}
		// A board's connection may idle for idleBoard between calls; a stranger's lives
		// idleStranger in all, whatever it sends: it has no business staying.
		limit, deadline := maxRecord, time.Now().Add(s.lim.idleBoard)
		if !known {
			limit, deadline = maxStrangerRecord, connected.Add(s.lim.idleStranger)
		}
		// Wait for the next call holding no record buffer: an idle connection costs its
		// read buffer and nothing more.
		if deadline.Sub(readDeadline) > s.lim.idleBoard/deadlineSlack || deadline.Before(readDeadline) {
			readDeadline = deadline
			_ = c.SetReadDeadline(deadline)
		}
		if _, err := br.Peek(1); err != nil {
			cc.closing(ctx, err)
			return
		}
		rec, err := readRecordGrow(br, s.bufs.get(0), limit, &s.bufs)
		if err != nil {
			cc.closing(ctx, err)
			return
		}
		h, cerr := parseCall(rec)
		if h == nil {
			s.bufs.put(rec) // a reply or junk without an xid: nothing to answer
			continue
		}
		if s.exact {
			h.arrived = time.Now()
		}
		// Hold the call's bytes before running it: with the budget spent (replies the
		// peer does not read, calls that wait on the disk) the socket is not read.
		cost := callCost(h, rec)
		if err := cc.reserve(ctx, cost); err != nil {
			s.bufs.put(rec)
			return
		}
		cc.calls.Add(1) // until its reply is sent (write)
		// With nothing else waiting on the socket, answer on this goroutine: handing a
		// lone request to another goroutine costs a thread wake-up per call, which on a
		// loaded machine is most of a small call's latency. Pipelined requests, and calls
		// that may wait on the disk, get their own goroutines so they run side by side.
		if br.Buffered() == 0 && !mayBlock(h) && !s.exact {
			rep := s.dispatch(cc, h, cerr)
			s.bufs.put(rec)
			cc.write(rep, cost)
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() {
				<-sem
				wg.Done()
			}()
			rep := s.dispatch(cc, h, cerr)
			s.bufs.put(rec)
			cc.write(rep, cost)
		}()
	}
}

// pipe returns an empty pipe for a READ of count bytes to splice, or nil: copy it (too
// small or too big, other calls of the connection in flight, no socket to splice to,
// this connection holds pipesPerConn, or no pipe free).
func (cc *conn) pipe(off int64, count int) *pipe {
	if cc.raw == nil || count < spliceMin || cc.calls.Load() > 1 {
		return nil
	}
	if cc.pipes.Add(1) > pipesPerConn {
		cc.pipes.Add(-1)
		return nil
	}
	p := cc.s.pipes.get(off, count)
	if p == nil {
		cc.pipes.Add(-1)
	}
	return p
}

// putPipe gives back a pipe the connection took and did not send.
func (cc *conn) putPipe(p *pipe) {
	cc.pipes.Add(-1)
	cc.s.pipes.put(p)
}

// closing logs why the connection ends, if that is news: a peer that closed or a board
// that reset its connection (it rebooted) is not.
func (cc *conn) closing(ctx context.Context, err error) {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), ctx.Err() != nil:
	case errors.Is(err, syscall.ECONNRESET): // a board rebooting or powered off
		cc.log.Debug("connection reset by the board")
	case errors.As(err, &ne) && ne.Timeout():
		cc.s.stats.idleClosed.Add(1)
		cc.log.Debug("closing idle connection (or a stranger's, after its time)")
	default:
		cc.warn("closing connection", "err", err)
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

// write sends a reply and gives back the bytes its call held. Replies leave one at a
// time, each whole (wmu): a spliced READ's head, data and padding are one record.
func (cc *conn) write(rep reply, cost int64) {
	rec := rep.rec
	cc.wmu.Lock()
	if d := time.Now().Add(cc.s.lim.writeTimeout); d.Sub(cc.writeDeadline) > cc.s.lim.writeTimeout/deadlineSlack {
		cc.writeDeadline = d
		_ = cc.c.SetWriteDeadline(d)
	}
	var err error
	if rep.data != nil {
		err = rep.data.send(cc.raw, rec)
	} else {
		_, err = cc.c.Write(rec)
	}
	cc.wmu.Unlock()
	if rep.data != nil {
		cc.putPipe(rep.data) // closed, not reused, if it was not sent whole
	}
	if err != nil {
		if !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			cc.warn("writing reply; closing connection", "err", err)
		}
		cc.c.Close()
	}
	cc.s.bufs.put(rec)
	cc.unreserve(cost)
	cc.calls.Add(-1)
}

// errGarbage makes dispatch answer GARBAGE_ARGS.
var errGarbage = errors.New("garbage arguments")

// dispatch answers one call and returns the reply. With an Observer, it times the call
// (one time.Now pair, nothing allocated) and reports it once answered.
func (s *Server) dispatch(cc *conn, h *rpcCallHdr, cerr *callError) reply {
	defer h.release() // before the reply is sent: a reset waits for calls, not for peers
	w := replyBuf(s.bufs.get(replySize(h)), h.xid)
	if s.observe == nil {
		s.answer(cc, h, cerr, w)
		return reply{rec: w.finish(), data: w.data}
	}
	start := time.Now()
	if h.arrived.IsZero() {
		h.arrived = start
	}
	s.answer(cc, h, cerr, w)
	rec := w.finish()
	s.observe(callOf(h, rec, time.Since(start)))
	return reply{rec: rec, data: w.data}
}

// reply is an answered call's reply record. With data set (a spliced READ) rec is the
// record's head: the pipe's bytes and their XDR padding follow it, and rec's record mark
// counts them.
type reply struct {
	rec  []byte
	data *pipe
}

// answer runs one call's procedure and writes its reply into w.
func (s *Server) answer(cc *conn, h *rpcCallHdr, cerr *callError, w *xdrWriter) {
	if cerr != nil {
		cc.warn("refusing call", "prog", h.prog, "vers", h.vers, "proc", h.proc, "err", cerr.err)
		w.callError(cerr, 0, 0)
		return
	}
	var handler func(*conn, *rpcCallHdr, *xdrReader, *xdrWriter) error
	switch h.prog {
	case progNFS:
		if h.vers != 3 {
			w.callError(&callError{stat: acceptProgMismatch}, 3, 3)
			return
		}
		handler = s.nfsProc(h.proc)
	case progMount:
		if h.vers != 3 {
			w.callError(&callError{stat: acceptProgMismatch}, 3, 3)
			return
		}
		handler = s.mountProc(h.proc)
	case progNFSACL:
		if h.vers != 3 {
			w.callError(&callError{stat: acceptProgMismatch}, 3, 3)
			return
		}
		handler = s.nfsaclProc(h.proc)
	default:
		// NLM and the rest: not offered (boards mount with nolock).
		w.accepted(acceptProgUnavail)
		return
	}
	if handler == nil {
		w.accepted(acceptProcUnavail)
		return
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
}
