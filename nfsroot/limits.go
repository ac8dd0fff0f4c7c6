package nfsroot

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// What one client address, and everyone together, may hold (../shared/DESIGN.md "Trust
// and limits"). An address no export allows (a stranger) may only NULL and MOUNT (to be
// refused), so it gets little of everything.
type limits struct {
	maxConns     int           // connections open at once, all addresses
	maxStrangers int           // of which from addresses no export allows
	perBoard     int           // connections from one board's address
	perStranger  int           // connections from one stranger's address
	idleBoard    time.Duration // a board's connection with no call for this long is closed
	idleStranger time.Duration // a stranger's is closed this long after it connected
	// writeTimeout closes a connection whose peer stopped reading replies, so its stuck
	// writers give their memory (and pipes) back instead of waiting forever.
	writeTimeout    time.Duration
	connBytes       int64 // bytes of calls and replies one connection may hold
	addrBytes       int64 // all connections of one address together
	totalBytes      int64 // the whole server
	inFlightPerConn int   // calls one connection runs at once
}

func defaultLimits() limits {
	// Every connection is a descriptor; leave half the table for open files, the
	// handle tables and the other services.
	maxConns := 4096
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < 2*uint64(maxConns) {
		maxConns = max(64, int(rl.Cur/2))
	}
	return limits{
		maxConns:     maxConns,
		maxStrangers: maxConns / 4, // boards always find room
		perBoard:     16,           // the Linux client uses one (nconnect up to 16)
		perStranger:  4,
		idleBoard:    15 * time.Minute, // the Linux client reconnects when it needs to
		idleStranger: 30 * time.Second,
		writeTimeout: 2 * time.Minute,
		// Four 1 MiB READs or WRITEs in flight per connection keep a board's readahead
		// busy; one address gets a few connections' worth, the server a few addresses'.
		connBytes:       4 << 20,
		addrBytes:       16 << 20,
		totalBytes:      96 << 20,
		inFlightPerConn: maxInFlight,
	}
}

// budget is a byte semaphore: a connection's reader takes what a call will hold (its
// record and, estimated, its reply) before reading the next one, and the writer gives it
// back once the reply is sent. A full budget stops the reader, so a peer that does not
// read its replies stops being read (backpressure) instead of making the server buffer.
type budget struct {
	limit int64

	mu      sync.Mutex
	used    int64
	peak    int64
	waiters int
	wake    chan struct{} // closed when bytes come back while someone waits
}

func newBudget(limit int64) *budget { return &budget{limit: limit, wake: make(chan struct{})} }

// acquire takes n bytes, waiting until they are free or ctx ends. A budget that holds
// nothing lets any single call in, however big, so no call waits forever.
func (b *budget) acquire(ctx context.Context, n int64) error {
	b.mu.Lock()
	for b.used > 0 && b.used+n > b.limit {
		b.waiters++
		ch := b.wake
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			b.mu.Lock()
			b.waiters--
			b.mu.Unlock()
			return ctx.Err()
		}
		b.mu.Lock()
		b.waiters--
	}
	b.used += n
	b.peak = max(b.peak, b.used)
	b.mu.Unlock()
	return nil
}

// tryAcquire takes n bytes if they are free now.
func (b *budget) tryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used > 0 && b.used+n > b.limit {
		return false
	}
	b.used += n
	b.peak = max(b.peak, b.used)
	return true
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.waiters > 0 {
		close(b.wake)
		b.wake = make(chan struct{})
	}
}

func (b *budget) inUse() (used, peak int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used, b.peak
}

// peer is what the server tracks per client address while it has connections open.
type peer struct {
	conns int
	bytes *budget
}

// admit counts a new connection in, or says why not: too many from its address, too many
// strangers, too many in all. The caller closes a refused connection at once.
func (s *Server) admit(addr netip.Addr, stranger bool) (*peer, string) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	p := s.peers[addr]
	perAddr := s.lim.perBoard
	if stranger {
		perAddr = s.lim.perStranger
	}
	switch {
	case p != nil && p.conns >= perAddr:
		s.stats.refusedAddr.Add(1)
		return nil, "too many connections from this address"
	case stranger && s.nstrangers >= s.lim.maxStrangers:
		s.stats.refusedStrangers.Add(1)
		return nil, "too many connections from addresses no export allows"
	case s.nconns >= s.lim.maxConns:
		s.stats.refusedTotal.Add(1)
		return nil, "too many connections"
	}
	if p == nil {
		p = &peer{bytes: newBudget(s.lim.addrBytes)}
		s.peers[addr] = p
	}
	p.conns++
	s.nconns++
	if stranger {
		s.nstrangers++
	}
	return p, ""
}

// leave counts a connection out.
func (s *Server) leave(addr netip.Addr, stranger bool) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	s.nconns--
	if s.nconns == 0 {
		s.pipes.closeIdle() // a server without connections holds no pipe
	}
	if stranger {
		s.nstrangers--
	}
	if p := s.peers[addr]; p != nil {
		if p.conns--; p.conns <= 0 {
			delete(s.peers, addr)
		}
	}
}

// accepted admits or refuses a connection the listener just accepted; it reports whether
// to serve it.
func (s *Server) accepted(c net.Conn) (addr netip.Addr, p *peer, stranger bool, ok bool) {
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	addr = ap.Addr().Unmap()
	stranger = !s.known(addr)
	p, why := s.admit(addr, stranger)
	if p == nil {
		// Closed at once, with a linger of 0 so the socket does not sit in TIME_WAIT.
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
		n := s.stats.refused.Add(1)
		s.rl.Log(s.log, slog.LevelWarn, addr.String(), "refusing connection: "+why,
			"board", s.boardFor(addr), "client", addr.String(), "refused", n)
		return addr, nil, stranger, false
	}
	return addr, p, stranger, true
}

// reserve takes n bytes from the connection's, its address's and the server's budgets,
// in that order, waiting while any is full; it gives back what it took if ctx ends.
func (cc *conn) reserve(ctx context.Context, n int64) error {
	bs := [...]*budget{cc.bytes, cc.peer.bytes, cc.s.bytes}
	for i, b := range bs {
		if b.tryAcquire(n) {
			continue
		}
		cc.s.stats.throttled.Add(1)
		if err := b.acquire(ctx, n); err != nil {
			for _, x := range bs[:i] {
				x.release(n)
			}
			return err
		}
	}
	return nil
}

func (cc *conn) unreserve(n int64) {
	cc.bytes.release(n)
	cc.peer.bytes.release(n)
	cc.s.bytes.release(n)
}

// callCost is what a call may hold until its reply is sent: its record's buffer and the
// buffer its reply is built in (replySize, rounded up as the pool does).
func callCost(h *rpcCallHdr, rec []byte) int64 {
	return int64(cap(rec) + bufCap(replySize(h)))
}

// replySize estimates a call's reply from its arguments: READ and READDIR(PLUS) say how
// much they want, GETACL may carry two ACLs of maxACLEntries, everything else is small.
func replySize(h *rpcCallHdr) int {
	const small = 1 << 10
	if h != nil && h.prog == progNFSACL && h.proc == 1 {
		return small + 2*maxACLEntries*12 // GETACL: an access and a default ACL
	}
	if h == nil || h.prog != progNFS || h.vers != 3 {
		return small
	}
	r := xdrReader{b: h.args}
	r.opaque(maxFHSize)
	var want uint32
	switch h.proc {
	case 6: // READ: offset, count
		r.u64()
		want = r.u32()
	case 16: // READDIR: cookie, verifier, count
		r.u64()
		r.u64()
		want = r.u32()
	case 17: // READDIRPLUS: cookie, verifier, dircount, maxcount
		r.u64()
		r.u64()
		r.u32()
		want = r.u32()
	}
	if r.err != nil {
		return small
	}
	return small + int(min(want, maxIO))
}
