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
	"time"
)

// Options configure a Server.
type Options struct {
	// Logger receives every log line, each with the board and client address; nil means
	// slog.Default().
	Logger *slog.Logger
	// OnMount is called after a board mounted its export; may be nil.
	OnMount func(board string, client netip.Addr)
}

// Server answers NFSv3 and MOUNT v3 for every board's export.
type Server struct {
	log     *slog.Logger
	onMount func(string, netip.Addr)
	// verf is the write verifier: it changes only when the server restarts, which tells
	// clients to resend UNSTABLE writes that were never committed.
	verf    [8]byte
	exports atomic.Pointer[exportSet]
	setMu   sync.Mutex

	// Buffers of received records and of replies, reused across calls: a 1 MiB READ or
	// WRITE would otherwise allocate its megabyte every time.
	records sync.Pool
	replies sync.Pool

	connMu sync.Mutex
	conns  map[netip.Addr]int // open connections per client address, for Mounted
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
	s := &Server{log: log, onMount: opts.OnMount, conns: make(map[netip.Addr]int)}
	s.records.New = func() any { b := make([]byte, 0, 64<<10); return &b }
	_, _ = rand.Read(s.verf[:])
	s.exports.Store(&exportSet{byID: map[uint64]*export{}, byPath: map[string]*export{}})
	return s
}

// SetExports atomically replaces the exports. Exports whose Board, Path and FS are unchanged
// keep their state (handle table, open files, mounts); removed ones close their files.
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
		for a := range s.conns {
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
	defer cancel()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.housekeeping(ctx)
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("%s listener %s: %w", what, l.Addr(), err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, c)
		}()
	}
}

// fileIdle is how long an unused file stays open: long enough for a board's burst of
// READs and WRITEs, short enough that idle boards hold no descriptors.
const fileIdle = time.Minute

// housekeeping fsyncs every board's handle table once a second while serving, bounding
// what a power loss can take to the last second of newly issued handles, and lets idle
// boards' open files and directory listings go.
func (s *Server) housekeeping(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, e := range s.exports.Load().byID {
			if err := e.flush(); err != nil {
				e.log.Error("flushing handle table", "client", "", "err", err)
			}
			e.files.closeIdle(fileIdle)
			e.dirs.expire()
			e.resolved.expire()
			e.acls.expire()
		}
	}
}
