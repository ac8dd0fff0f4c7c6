// Package tftp serves each board its own read-only boot tree over TFTP: the board's
// /boot/firmware (through its overlay) plus the files pifleet generates for it.
//
// A request names a file as "<serial>/f", "<mac-with-dashes>/f" or just "f". The board
// is the one the client's address is bound to on evidence tied to its MAC (identify:
// the kernel's neighbour entry, a fixed IP, a lease); a prefix must name that board and
// never picks one itself (resolve.go). The file is read from the board's tree or
// generated (generated.go), and sent lock-step (transfer.go), because a Raspberry Pi's
// boot ROM and EEPROM bootloader follow nothing else.
//
// Why not github.com/pin/tftp's server: its read handler never sees the negotiated
// options (so the transfer cannot be logged or sized per block), it clamps blksize to
// MTU-28 (4 bytes too many: the TFTP header), answers every failure with "file not
// found", sets a timer and allocates an address per block and reads the file one block
// per syscall (~0.75x of tftpd-hpa). The protocol is small enough to own; pin/tftp stays
// the reference client in the tests and provides the netascii translation.
package tftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/pin/tftp/v3/netascii"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/neigh"
	"github.com/pifleet/pifleet/internal/ratelog"
)

// Config configures a Server.
type Config struct {
	// Addr is the UDP address to listen on: the server's boot address and port, e.g.
	// "10.0.0.1:69" (tests: "127.0.0.1:0"). IPv4 only: no Pi or U-Boot netboots over
	// IPv6 TFTP.
	Addr string
	// Fleet tells which board a request belongs to.
	Fleet boot.Fleet
	// Events receives every transfer as the board's last-boot timeline; may be nil.
	Events *boot.Timeline
	// Logger gets one line per transfer (rate-limited per client address); nil discards.
	Logger *slog.Logger
	// MaxBlockSize caps the blksize option; 0 = DefaultMaxBlockSize (1468, a full
	// Ethernet frame). It is further clamped to the path MTU.
	MaxBlockSize int
	// Timeout is how long to wait for an ACK before resending; 0 = 1 s. A client's
	// timeout option (RFC 2349) of at most MaxClientTimeout overrides it for its
	// transfer; a longer one is not granted.
	Timeout time.Duration
	// Retries is how often a packet is resent before the transfer is dropped; 0 = 5.
	Retries int
	// MaxTransfers caps the transfers running at once; 0 = DefaultMaxTransfers.
	MaxTransfers int
	// MaxPerClient caps the transfers of one client address at once; 0 =
	// DefaultMaxPerClient. A Pi or U-Boot fetches one file at a time.
	MaxPerClient int
}

// Limits on what clients can hold (DESIGN.md, "Trust and limits"). A request over a cap
// gets an ERROR "too many transfers" at once, is counted in Stats.OverCap, and costs a
// rate-limited log line.
const (
	DefaultMaxTransfers = 512
	DefaultMaxPerClient = 8
	// MaxClientTimeout is the longest timeout option granted: with the default 5
	// retries a stalled client is dropped within about 30 s.
	MaxClientTimeout = 5 * time.Second
)

// Log lines per client address: a Pi 4's whole boot is about 30 lines, a flood from one
// address costs a burst and then one line a second, and every logFlush a summary says
// how many lines each address had held back.
const (
	logBurst = 64
	logEvery = time.Second
	logFlush = time.Minute
)

// listenBuffer is the port-69 socket's receive buffer: a burst of thousands of RRQs
// (a rack powering on, or a flood) waits there while the read loop drains it.
const listenBuffer = 4 << 20

// dialers create the transfer sockets, so the read loop only reads, checks the caps
// and hands requests on.
const dialers = 2

// Stats counts transfers since the server started (for the status page and metrics).
type Stats struct {
	Reads   int64 // files sent completely
	Probes  int64 // transfers a Pi ended after the first block ("Early terminate")
	Missing int64 // requests for files that do not exist
	Errors  int64 // requests refused for other reasons (a bad name, WRQ, another board's prefix) and failed transfers
	Bytes   int64 // payload bytes sent
	// Refused counts requests for a board's files (by serial or MAC prefix) from an
	// address that is bound to no board (not counted in Errors).
	Refused int64
	// OverCap counts requests answered "too many transfers" (total or per client).
	OverCap int64
}

// Server is a TFTP server for the fleet. Create it with New, run it with Serve.
type Server struct {
	cfg   Config
	log   *slog.Logger
	conn  *net.UDPConn
	pconn *ipv4.PacketConn
	neigh *neigh.Table // nil: no neighbour evidence (netlink unavailable)
	// resolving holds a token per transfer waiting for a client's MAC (identify).
	resolving chan struct{}
	maxBlk    int
	wg        sync.WaitGroup
	jobs      chan *transfer // admitted, for the dialers
	reads     atomic.Int64
	probes    atomic.Int64
	missing   atomic.Int64
	errs      atomic.Int64
	refused   atomic.Int64
	overCap   atomic.Int64
	bytes     atomic.Int64

	// logs rate-limits the log lines each client address causes (logBurst, then one
	// every logEvery); Serve logs the counts of what it held back every logFlush.
	logs *ratelog.Limiter

	// unknown remembers clients not in the fleet, so each is logged once rather than
	// for every retransmitted request. Bounded: cleared when full.
	mu      sync.Mutex
	unknown map[netip.Addr]struct{}

	// inFlight holds the transfers admitted and not yet ended, by client address and
	// port and file name; perClient and running count them for the caps. A Pi resends
	// its RRQ when the first DATA is slow to come; a second transfer of the same file
	// to the same port would race the first from another TID.
	flightMu  sync.Mutex
	inFlight  map[flight]*transfer
	perClient map[netip.Addr]int
	running   int
}

// flight identifies a transfer by what the client asked and where it listens.
type flight struct {
	client netip.AddrPort
	name   string
}

// transfer is one admitted request, from the read loop to its end.
type transfer struct {
	key      flight
	req      request
	local    net.IP       // the address the request came to (nil: broadcast)
	ifIndex  int          // the interface it came in on
	arrived  time.Time    // when the kernel received the RRQ
	ackedAt  atomic.Int64 // when the server took the client's first ACK (Unix ns), or 0
	cancel   context.CancelFunc
	canceled atomic.Bool // superseded by the client's restart
}

// maxUnknownClients bounds the memory spent remembering strangers.
const maxUnknownClients = 1024

// New binds cfg.Addr. The socket is created now so that Addr is known before Serve; so
// is the neighbour-table socket, in the same network namespace.
func New(cfg Config) (*Server, error) {
	if cfg.Fleet == nil {
		return nil, errors.New("tftp: no fleet")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBlockSize == 0 {
		cfg.MaxBlockSize = DefaultMaxBlockSize
	}
	if cfg.MaxBlockSize < defaultBlockSize || cfg.MaxBlockSize > maxWireBlockSize {
		return nil, fmt.Errorf("tftp: max block size %d outside %d..%d", cfg.MaxBlockSize, defaultBlockSize, maxWireBlockSize)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	if cfg.MaxTransfers <= 0 {
		cfg.MaxTransfers = DefaultMaxTransfers
	}
	if cfg.MaxPerClient <= 0 {
		cfg.MaxPerClient = DefaultMaxPerClient
	}
	pc, err := net.ListenPacket("udp4", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("tftp: listen on %s: %w", cfg.Addr, err)
	}
	conn := pc.(*net.UDPConn)
	growReceiveBuffer(conn, listenBuffer)
	if rc, err := conn.SyscallConn(); err == nil {
		// The kernel's receive time of each request: what tells a client's restart
		// from its retransmission (admit), and when a board's step began.
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) })
	}
	p := ipv4.NewPacketConn(conn)
	// The destination address and interface of each request: replies must come from
	// the address the board talked to, and the neighbour entry is the interface's.
	if err := p.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tftp: listen on %s: enable packet info: %w", cfg.Addr, err)
	}
	log := cfg.Logger.With("proto", "tftp")
	nt, err := neigh.Open()
	if err != nil {
		log.Warn("no neighbour table: boards without a fixed IP or a lease are not recognised", "err", err)
		nt = nil
	}
	return &Server{
		cfg:       cfg,
		log:       log,
		conn:      conn,
		pconn:     p,
		neigh:     nt,
		logs:      ratelog.New(log, logBurst, logEvery),
		resolving: make(chan struct{}, maxResolving),
		maxBlk:    cfg.MaxBlockSize,
		jobs:      make(chan *transfer, cfg.MaxTransfers),
		unknown:   make(map[netip.Addr]struct{}),
		inFlight:  make(map[flight]*transfer),
		perClient: make(map[netip.Addr]int),
	}, nil
}

// parseControl reads a request's IP_PKTINFO (the address it was sent to and the
// interface it came in on) and its kernel receive time (SO_TIMESTAMPNS; the time
// of reading when absent).
func parseControl(oob []byte) (*ipv4.ControlMessage, time.Time) {
	arrived := time.Time{}
	var cm *ipv4.ControlMessage
	msgs, _ := unix.ParseSocketControlMessage(oob)
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&m.Data[0]))
			cm = &ipv4.ControlMessage{IfIndex: int(pi.Ifindex), Dst: net.IP(append([]byte(nil), pi.Addr[:]...))}
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})):
			ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
			arrived = time.Unix(ts.Unix())
		}
	}
	if arrived.IsZero() {
		arrived = time.Now()
	}
	return cm, arrived
}

// growReceiveBuffer asks for a receive buffer of size bytes: SO_RCVBUFFORCE (root, past
// net.core.rmem_max), else SO_RCVBUF (capped by rmem_max). Best effort.
func growReceiveBuffer(c *net.UDPConn, size int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size) != nil {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, size)
		}
	})
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.conn.LocalAddr() }

// Stats returns the transfer counters.
func (s *Server) Stats() Stats {
	return Stats{
		Reads: s.reads.Load(), Probes: s.probes.Load(), Missing: s.missing.Load(),
		Errors: s.errs.Load(), Bytes: s.bytes.Load(), Refused: s.refused.Load(), OverCap: s.overCap.Load(),
	}
}

// Serve answers requests until ctx is cancelled, then waits for the transfers in
// flight to stop and closes the sockets. It returns nil after a cancel.
//
// The read loop does as little as it can per datagram: parse, check the caps, hand the
// request to a dialer. The dialers create each transfer's socket in the network
// namespace of the listening socket (whatever thread Serve runs on), and start the
// transfer on its own goroutine, which identifies the client and sends the file.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()
	if s.neigh != nil {
		defer s.neigh.Close() // after the transfers, which look clients up
	}
	defer s.wg.Wait()
	if err := s.startDialers(ctx); err != nil {
		s.conn.Close()
		close(s.jobs)
		return err
	}
	defer close(s.jobs)
	// The counts of rate-limited log lines, now and then and at the end.
	stopFlush := make(chan struct{})
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		tick := time.NewTicker(logFlush)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				s.logs.Flush()
			case <-stopFlush:
				s.logs.Flush()
				return
			}
		}
	}()
	defer func() { close(stopFlush); <-flushed }()
	buf := make([]byte, 1500) // a request bigger than one frame is not one we serve
	oob := make([]byte, 128)
	for {
		n, oobn, _, src, err := s.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.conn.Close()
			return fmt.Errorf("tftp: read request: %w", err)
		}
		if n < 2 {
			continue
		}
		client := netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		cm, arrived := parseControl(oob[:oobn])
		req, err := parseRequest(buf[:n])
		if err != nil {
			if req.op == opRRQ || req.op == opWRQ {
				s.logf(slog.LevelDebug, client.Addr(), "malformed request", "client", client, "err", err)
				s.answer(cm, client, errCodeIllegal, "malformed request")
			}
			// Stray DATA/ACK/ERROR for a finished transfer, or noise: never answer,
			// port 69 must not become a reflector.
			continue
		}
		if req.op == opWRQ {
			s.logf(slog.LevelInfo, client.Addr(), "write refused", "client", client, "file", req.name)
			s.errs.Add(1)
			s.answer(cm, client, errCodeAccess, "pifleet serves boot files read-only")
			continue
		}
		tr := &transfer{key: flight{client, req.name}, req: req, arrived: arrived}
		if cm != nil {
			tr.ifIndex = cm.IfIndex
			if !cm.Dst.Equal(net.IPv4bcast) {
				tr.local = cm.Dst // a broadcast request is answered from the default address
			}
		}
		switch s.admit(tr) {
		case admitted:
			s.jobs <- tr // never blocks: the channel holds MaxTransfers, admit caps them
		case duplicate:
			// The same request again while its transfer runs: that transfer's own
			// resends answer it.
			s.logf(slog.LevelDebug, client.Addr(), "duplicate request ignored", "client", client, "file", req.name)
		case overCap:
			s.overCap.Add(1)
			s.logf(slog.LevelWarn, client.Addr(), "tftp request refused: too many transfers", "client", client,
				"file", req.name, "max_total", s.cfg.MaxTransfers, "max_per_client", s.cfg.MaxPerClient)
			s.answer(cm, client, errCodeUndefined, "too many transfers, try again")
		}
	}
}

// Outcomes of admit.
const (
	admitted = iota
	duplicate
	overCap
)

// restartGap is how long after a transfer's first ACK a repeat of its RRQ must arrive
// to count as the client starting over. A retransmitted RRQ is sent before the client
// has any answer, but it can sit in the socket queue while the transfer runs (the
// kernel's receive time is missing for the first packets after timestamps are turned
// on); a board that resets takes seconds to ask again.
const restartGap = time.Second

// admit registers a transfer unless it repeats one running or a cap is reached. A
// repeat of a request whose transfer the client has already acknowledged blocks of is
// not a retransmission but a client that started over (a board reset mid-file, or
// U-Boot reusing its port after a reboot): the old transfer is ended and the new one
// admitted, rather than ignored until the old one times out.
func (s *Server) admit(t *transfer) int {
	s.flightMu.Lock()
	defer s.flightMu.Unlock()
	if old, ok := s.inFlight[t.key]; ok {
		if a := old.ackedAt.Load(); a == 0 || t.arrived.UnixNano() < a+int64(restartGap) {
			return duplicate // sent before the client had any answer: a retransmission
		}
		old.canceled.Store(true)
		if old.cancel != nil {
			old.cancel()
		}
		s.dropLocked(old) // its slot passes to the new one
	}
	a := t.key.client.Addr()
	if s.running >= s.cfg.MaxTransfers || s.perClient[a] >= s.cfg.MaxPerClient {
		return overCap
	}
	s.inFlight[t.key] = t
	s.perClient[a]++
	s.running++
	return admitted
}

// land unregisters a transfer that ended (unless a restart already did).
func (s *Server) land(t *transfer) {
	s.flightMu.Lock()
	defer s.flightMu.Unlock()
	if s.inFlight[t.key] == t {
		s.dropLocked(t)
	}
}

func (s *Server) dropLocked(t *transfer) {
	delete(s.inFlight, t.key)
	a := t.key.client.Addr()
	if s.perClient[a]--; s.perClient[a] <= 0 {
		delete(s.perClient, a)
	}
	s.running--
}

// startDialers starts the goroutines that create transfer sockets. A socket belongs to
// the network namespace of the thread that creates it; a dialer whose thread is in
// another namespace than the listening socket's (tests run servers inside namespaces
// they create) enters that one and keeps its thread, so Serve may run anywhere.
func (s *Server) startDialers(ctx context.Context) error {
	ns, err := socketNetns(s.conn)
	if err != nil {
		return fmt.Errorf("tftp: %w", err)
	}
	ready := make(chan error, dialers)
	for range dialers {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if ns >= 0 {
				runtime.LockOSThread()
				if same, err := sameNetns(ns); err != nil {
					ready <- err
					return
				} else if same {
					runtime.UnlockOSThread()
				} else if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
					// Still locked: the thread leaves with the goroutine.
					ready <- fmt.Errorf("tftp: enter the listening socket's network namespace: %w", err)
					return
				}
				// After a Setns the thread stays locked for good, so it is never reused
				// in the wrong namespace.
			}
			ready <- nil
			for t := range s.jobs {
				s.dial(ctx, t)
			}
		}()
	}
	var errs []error
	for range dialers {
		errs = append(errs, <-ready)
	}
	if ns >= 0 {
		unix.Close(ns)
	}
	return errors.Join(errs...)
}

// socketNetns returns a descriptor of c's network namespace, or -1 when it cannot be
// asked (without CAP_NET_ADMIN; then no other namespace could be entered either).
func socketNetns(c *net.UDPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	ns := -1
	var ierr error
	rc.Control(func(fd uintptr) {
		ns, ierr = unix.IoctlRetInt(int(fd), unix.SIOCGSKNS)
	})
	if ierr != nil {
		return -1, nil
	}
	return ns, nil
}

// sameNetns reports whether the calling thread is in the network namespace ns.
func sameNetns(ns int) (bool, error) {
	var theirs, ours unix.Stat_t
	if err := unix.Fstat(ns, &theirs); err != nil {
		return false, fmt.Errorf("tftp: network namespace of the listening socket: %w", err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &ours); err != nil {
		return false, fmt.Errorf("tftp: network namespace of this thread: %w", err)
	}
	return theirs.Dev == ours.Dev && theirs.Ino == ours.Ino, nil
}

// dial opens an admitted transfer's socket and starts it; after a cancel it only
// releases the slot.
func (s *Server) dial(ctx context.Context, t *transfer) {
	if ctx.Err() != nil || t.canceled.Load() {
		s.land(t)
		return
	}
	sock, maxBlk, err := s.dialClient(t.local, t.key.client)
	if err != nil {
		s.land(t)
		s.logf(slog.LevelWarn, t.key.client.Addr(), "cannot answer request", "client", t.key.client, "file", t.req.name, "err", err)
		return
	}
	tctx, cancel := context.WithCancel(ctx)
	s.flightMu.Lock()
	t.cancel = cancel
	superseded := t.canceled.Load()
	s.flightMu.Unlock()
	if superseded {
		cancel()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.land(t)
		defer cancel()
		defer sock.Close()
		s.serveRead(tctx, sock, t, maxBlk)
	}()
}

// dialClient opens the transfer's own socket (its TID, RFC 1350): bound to the address
// the request came in on, connected to the client's address and port, so the kernel
// drops strangers' packets and routes once. maxBlk is the block size the path to the
// client carries unfragmented.
func (s *Server) dialClient(local net.IP, client netip.AddrPort) (*socket, int, error) {
	sock, err := dialSocket(local, client)
	if err != nil {
		return nil, 0, err
	}
	maxBlk := s.maxBlk
	if sock.mtu > frameOverhead {
		maxBlk = max(defaultBlockSize, min(maxBlk, sock.mtu-frameOverhead))
	}
	return sock, maxBlk, nil
}

// answer sends an ERROR for a request that gets no transfer, from port 69 itself: no
// socket is spent on it, and the read loop goes straight back to draining requests.
func (s *Server) answer(cm *ipv4.ControlMessage, client netip.AddrPort, code uint16, msg string) {
	buf := make([]byte, 5+len(msg))
	var wcm *ipv4.ControlMessage
	if cm != nil && !cm.Dst.Equal(net.IPv4bcast) {
		wcm = &ipv4.ControlMessage{Src: cm.Dst}
	}
	s.pconn.WriteTo(buf[:packError(buf, code, msg)], wcm, net.UDPAddrFromAddrPort(client))
}

// logf logs a line about client unless its log budget is spent.
func (s *Server) logf(level slog.Level, client netip.Addr, msg string, attrs ...any) {
	s.logs.Log(nil, level, client.String(), msg, attrs...)
}

// identify finds the board the client's address belongs to, on evidence only (see
// boot.Fleet): the neighbour entry for the address on the interface the request came
// in on, passed to Fleet.Bind, which lets a fixed IP or a lease decide first; without
// an entry, the address's fixed IP, lease or earlier binding. An address none of these
// knows, without an entry (a client that took our MAC from a DHCP reply instead of
// ARPing), is resolved: the kernel sends an ARP request and the entry is waited for
// up to resolveWait. mac is the neighbour entry's MAC, if there was one.
func (s *Server) identify(t *transfer) (b *boot.Board, mac net.HardwareAddr) {
	ip := t.key.client.Addr()
	if s.neigh == nil {
		b, _ = s.cfg.Fleet.BoardByIP(ip)
		return b, nil
	}
	m, ok := s.lookup(t.ifIndex, ip)
	if !ok {
		if b, known := s.cfg.Fleet.BoardByIP(ip); known || ip.IsLoopback() {
			return b, nil // loopback has no neighbours to ask
		}
		select {
		case s.resolving <- struct{}{}:
			defer func() { <-s.resolving }()
		default:
			return nil, nil // a flood of unknown addresses: no slot to wait in
		}
		if err := s.neigh.Resolve(t.ifIndex, ip); err != nil {
			s.logf(slog.LevelWarn, ip, "cannot resolve the client's MAC", "client", ip, "err", err)
			return nil, nil
		}
		for deadline := time.Now().Add(resolveWait); !ok && time.Now().Before(deadline); {
			time.Sleep(resolvePoll)
			m, ok = s.lookup(t.ifIndex, ip)
		}
		if !ok {
			return nil, nil
		}
	}
	b, _ = s.cfg.Fleet.Bind(ip, m)
	return b, m
}

// How long identify waits for the kernel to resolve a client's MAC, how often it looks,
// and how many transfers may wait at once. A client on the boot LAN answers an ARP
// request in well under a millisecond; an address that never answers (spoofed, or a
// host gone) must not let a flood hold the transfer slots: past maxResolving waits, an
// unknown address without an entry is refused at once.
const (
	resolveWait  = 500 * time.Millisecond
	resolvePoll  = 10 * time.Millisecond
	maxResolving = 16
)

// lookup reads the neighbour entry of ip on ifIndex; a failed lookup is logged.
func (s *Server) lookup(ifIndex int, ip netip.Addr) (net.HardwareAddr, bool) {
	m, ok, err := s.neigh.Lookup(ifIndex, ip)
	if err != nil {
		s.logf(slog.LevelWarn, ip, "neighbour table lookup failed", "client", ip, "err", err)
	}
	return m, ok
}

// serveRead handles one RRQ from resolution to the last ACK, and logs and records it.
func (s *Server) serveRead(ctx context.Context, sock *socket, t *transfer, maxBlk int) {
	client, req, start := t.key.client, t.req, t.arrived
	// Counted last, after the event is recorded: whoever sees the count can see the event.
	var counter *atomic.Int64
	defer func() {
		if counter != nil {
			counter.Add(1)
		}
	}()
	snd := &sender{sock: sock, timeout: s.cfg.Timeout, retries: s.cfg.Retries, ackedAt: &t.ackedAt}
	byAddr, mac := s.identify(t)
	board, path, err := resolve(s.cfg.Fleet, byAddr, req.name)
	var f *file
	if err == nil {
		f, err = open(board, path)
	}
	if err != nil {
		code, what := errCodeAccess, "error"
		msg := "access violation"
		switch {
		case errors.Is(err, errUnknownClient):
			code, msg = errCodeNotFound, "file not found"
			counter = &s.missing
			s.logUnknown(client, mac, req.name)
		case errors.Is(err, errNotBound):
			msg, what = "this address is not the board's", "refused"
			counter = &s.refused
			if len(mac) > 0 { // a host that is no board's typed a board's prefix
				s.seen(client.Addr(), mac, "")
			}
		case errors.Is(err, fs.ErrNotExist):
			code, msg, what = errCodeNotFound, "file not found", "missing"
			counter = &s.missing
		default:
			counter = &s.errs
		}
		// The slot is freed before the ERROR leaves: a client may ask again the moment
		// it reads it, and must find its slot free.
		s.land(t)
		snd.pkt = make([]byte, 5+len(msg))
		snd.sendError(code, msg)
		switch {
		case board != nil:
			s.finish(board, client, mac, req.name, what, 0, start, err)
		case !errors.Is(err, errUnknownClient):
			// A name no board could own (too long, NUL): nobody to charge it to.
			s.logf(slog.LevelWarn, client.Addr(), "tftp request refused", "client", client.Addr(), "file", req.name, "err", err)
		}
		return
	}
	defer f.Close()

	if req.mode != "octet" && req.mode != "netascii" {
		s.land(t)
		snd.pkt = make([]byte, 64)
		snd.sendError(errCodeIllegal, "mode must be octet or netascii")
		counter = &s.errs
		s.finish(board, client, mac, req.name, "error", 0, start, fmt.Errorf("unsupported mode %q", req.mode))
		return
	}
	r, size := f.r, f.size
	if req.mode == "netascii" {
		r, size = netascii.ToReader(r), -1 // size on the wire unknown up front
	}
	if f.c != nil && size != 0 {
		// One read syscall per chunk rather than per block: the file read would
		// otherwise cost as much as the send.
		r = newChunkReader(r)
	}
	neg := negotiate(req.opts, maxBlk, size, s.cfg.Timeout)
	snd.timeout = neg.timeout
	snd.pkt = make([]byte, 4+max(neg.blockSize, defaultBlockSize))
	snd.ack = make([]byte, 4+defaultBlockSize)
	n, err := snd.run(ctx, r, neg)
	s.land(t)
	s.bytes.Add(n)
	var ce *clientError
	switch {
	case t.canceled.Load():
		// The client asked for the file again from the same port after acknowledging
		// some of it: it started over, and the new transfer is what counts.
		s.logf(slog.LevelInfo, client.Addr(), "tftp transfer restarted by the client", "board", board.Name,
			"client", client.Addr(), "file", req.name, "bytes", n)
	case err == nil:
		counter = &s.reads
		s.finish(board, client, mac, req.name, "read", n, start, nil)
	case errors.As(err, &ce) && ce.earlyTerminate():
		counter = &s.probes
		s.finish(board, client, mac, req.name, "probe", n, start, nil)
	default:
		counter = &s.errs
		s.finish(board, client, mac, req.name, "error", n, start, err)
	}
}

// finish logs one transfer with everything needed to follow a board's boot, and records
// it in the board's timeline. mac is the client's neighbour entry, if there was one.
//
// The event's time is when the request arrived, not when the transfer ended: a client
// asks for its next file right after the last ACK, and that request's event may be
// recorded first. Ordering by Time keeps a board's steps in the order it took them.
//
// Lines are rate-limited per client address, and so are the events of refused
// requests: a host typing a board's serial is evidence worth seeing on the board's
// page, but a flood of them must not push the board's own boot out of its timeline.
func (s *Server) finish(b *boot.Board, client netip.AddrPort, neighMAC net.HardwareAddr, name, what string, n int64, start time.Time, err error) {
	d := time.Since(start)
	logged := s.logs.Allow(client.Addr().String())
	if !logged && what == "refused" {
		return
	}
	mac := ""
	if len(b.MAC) > 0 {
		mac = b.MAC.String()
	}
	attrs := []any{"board", b.Name, "mac", mac, "serial", b.Serial, "client", client.Addr(),
		"file", name, "what", what, "bytes", n, "duration", d}
	switch {
	case !logged:
	case what == "error":
		s.log.Warn("tftp transfer failed", append(attrs, "err", err)...)
	case what == "refused":
		s.log.Warn("tftp request refused: the client's address is not bound to the board its file names",
			append(attrs, "client_mac", neighMAC.String(), "err", err)...)
	case what == "missing":
		s.log.Info("tftp file not found", attrs...)
	default:
		s.log.Info("tftp "+what, attrs...)
	}
	if s.cfg.Events == nil {
		return
	}
	ev := boot.Event{Time: start, Board: b.Name, MAC: mac, Serial: b.Serial, Client: client.Addr(), Stage: boot.StageTFTP,
		What: what, File: name, Bytes: n, Duration: d}
	if err != nil {
		ev.Err = err.Error()
	}
	s.cfg.Events.Record(ev)
}

// seen lists a client among the clients not in the fleet: by its MAC when its
// neighbour entry named one (that is no board's), else by its address.
func (s *Server) seen(client netip.Addr, mac net.HardwareAddr, serial string) {
	if s.cfg.Events == nil {
		return
	}
	if len(mac) > 0 {
		if _, ok := s.cfg.Fleet.BoardByMAC(mac); ok {
			return
		}
	}
	s.cfg.Events.Seen(boot.Sighting{Via: "tftp", MAC: mac, IP: client.Unmap(), Serial: serial})
}

// logUnknown logs a client that is not in the fleet, once per address, and lists it
// among the clients seen.
func (s *Server) logUnknown(client netip.AddrPort, mac net.HardwareAddr, name string) {
	serial := ""
	if first, _, ok := strings.Cut(name, "/"); ok && isSerial(first) {
		serial = strings.ToLower(first) // what it says, not evidence
	}
	s.seen(client.Addr(), mac, serial)
	s.mu.Lock()
	_, seen := s.unknown[client.Addr()]
	if !seen {
		if len(s.unknown) >= maxUnknownClients {
			clear(s.unknown)
		}
		s.unknown[client.Addr()] = struct{}{}
	}
	s.mu.Unlock()
	if !seen {
		s.log.Info("tftp request from a client not in the fleet, ignoring it", "client", client.Addr(), "client_mac", mac.String(), "file", name)
	}
}

// chunkReader reads its source readChunk bytes at a time and hands them out in blocks.
type chunkReader struct {
	src      io.Reader
	buf      []byte
	off, end int
	err      error
}

func newChunkReader(r io.Reader) *chunkReader {
	return &chunkReader{src: r, buf: make([]byte, readChunk)}
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if c.off == c.end {
		if c.err != nil {
			return 0, c.err
		}
		c.off = 0
		c.end, c.err = io.ReadFull(c.src, c.buf)
		if c.err == io.ErrUnexpectedEOF {
			c.err = io.EOF
		}
		if c.end == 0 {
			return 0, c.err
		}
	}
	n := copy(p, c.buf[c.off:c.end])
	c.off += n
	return n, nil
}
