package nfsroot

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pifleet/pifleet/internal/ratelog"
)

// Options configure a Server.
type Options struct {
	// Logger receives every log line, each with the board and client address; nil means
	// slog.Default().
	Logger *slog.Logger
	// OnMount is called after a board mounted its export; may be nil.
	OnMount func(board string, client netip.Addr)
	// Observer, if set, sees every answered NFS, MOUNT and NFS_ACL call (see Call). It
	// runs on the connection's goroutine before the reply is sent: keep it cheap.
	Observer func(Call)
	// ExactArrivals takes each call's Call.Arrived when its record was read, and answers
	// every call on its own goroutine, never inline on the connection's reader, so that
	// the next call's record is read as soon as it came in, not after the previous call's
	// answer. It costs a goroutine hand-off per call: for capturing a boot's concurrency
	// (PIFLEET_NFS_TRACE), not for serving.
	ExactArrivals bool
}

// Server answers NFSv3 and MOUNT v3 for every board's export.
type Server struct {
	log     *slog.Logger
	onMount func(string, netip.Addr)
	observe func(Call)
	exact   bool // Options.ExactArrivals
	// verf is the write verifier: it changes only when the server restarts, which tells
	// clients to resend UNSTABLE writes that were never committed.
	verf    [8]byte
	exports atomic.Pointer[exportSet]
	setMu   sync.Mutex

	// Buffers of received records and of replies, reused across calls (bufpool.go).
	bufs bufPool
	// Pipes that carry big READs' data from the page cache to the socket (splice.go).
	pipes pipePool

	lim        limits
	bytes      *budget // bytes all calls and queued replies hold (limits.totalBytes)
	connMu     sync.Mutex
	peers      map[netip.Addr]*peer // client addresses with open connections
	nconns     int
	nstrangers int

	// rl limits log lines about what clients do, per client address (or listener).
	rl    *ratelog.Limiter
	stats counters
}

// counters are what the server counts of the limits it enforces; Stats reads them.
type counters struct {
	acceptErrors atomic.Uint64
	refused      atomic.Uint64
	// refused, by the limit reached
	refusedAddr, refusedStrangers, refusedTotal atomic.Uint64
	idleClosed                                  atomic.Uint64
	throttled                                   atomic.Uint64
}

// Stats are the server's connections and the bytes they hold now, and counts since New
// of events that a healthy server sees rarely: limits reached, errors retried.
type Stats struct {
	Conns        int    // connections open
	Reserved     int64  // bytes held by calls in flight and replies not yet sent
	ReservedPeak int64  // the most Reserved has been
	AcceptErrors uint64 // Accept calls that failed and were retried (EMFILE, ...)
	ConnsRefused uint64 // connections closed at once: over a connection limit
	// ConnsRefused by the limit reached: connections per address, connections from
	// strangers (addresses no export allows) in all, connections in all.
	RefusedPerAddress, RefusedStrangers, RefusedTotal uint64
	IdleClosed                                        uint64 // connections closed for sending no call for too long
	Throttled                                         uint64 // times a connection was not read because its budget was full
	LogSuppressed                                     uint64 // log lines held back by the per-address rate limit
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.connMu.Lock()
	conns := s.nconns
	s.connMu.Unlock()
	used, peak := s.bytes.inUse()
	return Stats{
		Conns:             conns,
		Reserved:          used,
		ReservedPeak:      peak,
		AcceptErrors:      s.stats.acceptErrors.Load(),
		ConnsRefused:      s.stats.refused.Load(),
		RefusedPerAddress: s.stats.refusedAddr.Load(), RefusedStrangers: s.stats.refusedStrangers.Load(),
		RefusedTotal:  s.stats.refusedTotal.Load(),
		IdleClosed:    s.stats.idleClosed.Load(),
		Throttled:     s.stats.throttled.Load(),
		LogSuppressed: s.rl.Suppressed(),
	}
}

// exportSet is swapped whole on reload, so a request sees one consistent fleet.
type exportSet struct {
	byID   map[uint64]*export
	byPath map[string]*export
}

// New returns a Server with no exports.
func New(opts Options) *Server {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{log: log, onMount: opts.OnMount, observe: opts.Observer, exact: opts.ExactArrivals, peers: make(map[netip.Addr]*peer),
		rl: ratelog.New(log, logBurst, logEvery), lim: defaultLimits()}
	s.bytes = newBudget(s.lim.totalBytes)
	_, _ = rand.Read(s.verf[:])
	s.exports.Store(&exportSet{byID: map[uint64]*export{}, byPath: map[string]*export{}})
	return s
}

// SetExports atomically replaces the exports. Exports whose Board, Path and FS are unchanged
// keep their state (handle table, open files, mounts); removed ones close their files.
// It returns once the calls running against removed or replaced exports have finished;
// calls that arrive after see the new table (STALE for a removed export). A board reset
// relies on that: after SetExports without the board, nothing touches its upper.
func (s *Server) SetExports(exps []Export) {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	old := s.exports.Load()
	next := &exportSet{byID: make(map[uint64]*export, len(exps)), byPath: make(map[string]*export, len(exps))}
	for _, e := range exps {
		id := exportID(e.Board, e.Path)
		x := old.byID[id]
		if x != nil && x.FS == e.FS && x.StateDir == e.StateDir {
			// Same board, path and file system: keep the runtime state, take the new policy.
			x.setPolicy(e.Allow, e.RootSquash)
			x.changes.Add(2) // the server may have changed files for the reload (identity)
			next.byID[id] = x
			next.byPath[e.Path] = x
			continue
		}
		if _, dup := next.byPath[e.Path]; dup {
			s.log.Error("export path used twice; keeping the first", "board", e.Board, "export", e.Path, "client", "")
			continue
		}
		nx := newExport(e, s.log)
		next.byID[id] = nx
		next.byPath[e.Path] = nx
	}
	s.exports.Store(next)
	for id, x := range old.byID {
		if next.byID[id] != x {
			x.gate.fence()
			x.close()
		}
	}
}

// Mounted reports whether board has an active mount: an open connection from its address,
// or NFS traffic or a MNT (not undone by UMNT) in the last five minutes. A board powered off
// without unmounting stops counting five minutes after it fell silent.
func (s *Server) Mounted(board string) bool {
	for _, e := range s.exports.Load().byID {
		if e.Board != board {
			continue
		}
		if e.mounted() {
			return true
		}
		// An open connection from the board: the Linux client keeps one while mounted.
		s.connMu.Lock()
		for a := range s.peers {
			if e.allowed(a) {
				s.connMu.Unlock()
				return true
			}
		}
		s.connMu.Unlock()
	}
	return false
}

// ServeNFS serves NFS program 100003 version 3 on l until ctx ends. The listener answers
// MOUNT too, and NFS_ACL probes with PROG_UNAVAIL so Linux mounts without noacl.
func (s *Server) ServeNFS(ctx context.Context, l net.Listener) error {
	return s.serve(ctx, l, "nfs")
}

// ServeMount serves MOUNT program 100005 version 3 on l until ctx ends (NFS too).
func (s *Server) ServeMount(ctx context.Context, l net.Listener) error {
	return s.serve(ctx, l, "mount")
}

func (s *Server) serve(ctx context.Context, l net.Listener, what string) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Cancel before waiting: housekeeping and the connections run until ctx ends, so
	// waiting first would hang a server whose listener died (and hide that it did).
	defer func() {
		cancel()
		wg.Wait()
	}()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.housekeeping(ctx)
	}()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !temporaryAccept(err) {
				return fmt.Errorf("%s listener %s: %w", what, l.Addr(), err)
			}
			// Out of descriptors (EMFILE) and the like pass: retry as net/http does, so a
			// burst of connections slows the server down instead of stopping it.
			delay = min(max(2*delay, acceptDelayMin), acceptDelayMax)
			s.stats.acceptErrors.Add(1)
			s.rl.Log(s.log, slog.LevelWarn, "accept "+what, "accepting a connection failed; retrying",
				"listener", l.Addr().String(), "client", "", "err", err, "retry_in", delay.String(),
				"accept_errors", s.stats.acceptErrors.Load())
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
			continue
		}
		delay = 0
		addr, p, stranger, ok := s.accepted(c)
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.leave(addr, stranger)
			s.serveConn(ctx, c, addr, p, stranger)
		}()
	}
}

// Back-off of Accept after a temporary error, as net/http.Server does.
const (
	acceptDelayMin = 5 * time.Millisecond
	acceptDelayMax = time.Second
)

// temporaryAccept reports accept errors that pass on their own: out of descriptors or
// memory, a connection aborted before it was accepted, an interrupted call.
func temporaryAccept(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO, syscall.EPERM} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Log lines about one client address: a burst, then one a minute, then a summary.
const (
	logBurst = 5
	logEvery = time.Minute
)

// fileIdle is how long an unused file stays open: long enough for a board's burst of
// READs and WRITEs, short enough that idle boards hold no descriptors.
const fileIdle = time.Minute

// housekeeping fsyncs every board's handle table once a second while serving, bounding
// what a power loss can take to the last second of newly issued handles, and lets idle
// boards' open files and directory listings go.
func (s *Server) housekeeping(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastSummary := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if time.Since(lastSummary) >= logEvery {
			s.rl.Flush()
			lastSummary = time.Now()
		}
		for _, e := range s.exports.Load().byID {
			if err := e.flush(); err != nil {
				// Once a second while the disk is full: a few lines, then a summary.
				s.rl.Log(e.log, slog.LevelError, "board "+e.Board, "flushing handle table", "client", "", "err", err)
			}
			e.files.closeIdle(fileIdle)
			e.dirs.expire()
			e.resolved.expire()
			e.acls.expire()
		}
	}
}
