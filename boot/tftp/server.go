// Package tftp serves each board its own read-only boot tree over TFTP: the board's
// /boot/firmware (through its overlay) plus the files pifleet generates for it.
//
// A request names a file as "<serial>/f", "<mac-with-dashes>/f" or just "f"; the board is
// found by that prefix or by the client's address (resolve.go), the file is read from the
// board's tree or generated (generated.go), and sent lock-step (transfer.go), because a
// Raspberry Pi's boot ROM and EEPROM bootloader follow nothing else.
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/pin/tftp/v3/netascii"
	"golang.org/x/net/ipv4"

	"github.com/pifleet/pifleet/boot"
)

// Config configures a Server.
type Config struct {
	// Addr is the UDP address to listen on, e.g. ":69" (tests: "127.0.0.1:0"). IPv4
	// only: no Pi or U-Boot netboots over IPv6 TFTP.
	Addr string
	// Fleet tells which board a request belongs to.
	Fleet boot.Fleet
	// Events receives every transfer as the board's last-boot timeline; may be nil.
	Events *boot.Timeline
	// Logger gets one line per transfer; nil discards.
	Logger *slog.Logger
	// MaxBlockSize caps the blksize option; 0 = DefaultMaxBlockSize (1468, a full
	// Ethernet frame). It is further clamped to the interface MTU.
	MaxBlockSize int
	// Timeout is how long to wait for an ACK before resending; 0 = 1 s. A client's
	// timeout option (RFC 2349) overrides it for its transfer.
	Timeout time.Duration
	// Retries is how often a packet is resent before the transfer is dropped; 0 = 5.
	Retries int
}

// Stats counts transfers since the server started (for the status page and metrics).
type Stats struct {
	Reads   int64 // files sent completely
	Probes  int64 // transfers a Pi ended after the first block ("Early terminate")
	Missing int64 // requests for files that do not exist
	Errors  int64 // refused requests and failed transfers
	Bytes   int64 // payload bytes sent
	// How ACKs were waited for (see pacer): directly, as a C server does, or in the
	// netpoller. Fast clients get mostly the first, clients over a network the second.
	DirectWaits, PolledWaits int64
}

// Server is a TFTP server for the fleet. Create it with New, run it with Serve.
type Server struct {
	cfg     Config
	log     *slog.Logger
	conn    *net.UDPConn
	pconn   *ipv4.PacketConn
	maxBlk  int
	wg      sync.WaitGroup
	reads   atomic.Int64
	probes  atomic.Int64
	missing atomic.Int64
	errs    atomic.Int64
	bytes   atomic.Int64
	direct  atomic.Int64
	polled  atomic.Int64

	// unknown remembers clients not in the fleet, so each is logged once rather than
	// for every retransmitted request. Bounded: cleared when full.
	mu      sync.Mutex
	unknown map[netip.Addr]struct{}

	// pacing keeps each client's direct-wait back-off from one transfer to the next
	// (see pacer). Bounded: cleared when full.
	paceMu sync.Mutex
	pacing map[netip.Addr]backoff

	// inFlight holds the transfers running, by client address and port and file name.
	// A Pi resends its RRQ when the first DATA is slow to come; a second transfer of
	// the same file to the same port would race the first from another TID.
	flightMu sync.Mutex
	inFlight map[flight]struct{}
}

// flight identifies a transfer by what the client asked and where it listens.
type flight struct {
	client netip.AddrPort
	name   string
}

// maxUnknownClients bounds the memory spent remembering strangers.
const maxUnknownClients = 1024

// maxPacedClients bounds the memory spent remembering clients' back-off (a few hundred
// boards is the expected fleet).
const maxPacedClients = 4096

// New binds cfg.Addr. The socket is created now so that Addr is known before Serve.
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
	pc, err := net.ListenPacket("udp4", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("tftp: listen on %s: %w", cfg.Addr, err)
	}
	conn := pc.(*net.UDPConn)
	p := ipv4.NewPacketConn(conn)
	// The destination address and interface of each request: replies must come from
	// the address the board talked to, and blksize must fit that interface's MTU.
	if err := p.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tftp: listen on %s: enable packet info: %w", cfg.Addr, err)
	}
	return &Server{
		cfg:      cfg,
		log:      cfg.Logger.With("proto", "tftp"),
		conn:     conn,
		pconn:    p,
		maxBlk:   cfg.MaxBlockSize,
		unknown:  make(map[netip.Addr]struct{}),
		pacing:   make(map[netip.Addr]backoff),
		inFlight: make(map[flight]struct{}),
	}, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.conn.LocalAddr() }

// Stats returns the transfer counters.
func (s *Server) Stats() Stats {
	return Stats{
		Reads: s.reads.Load(), Probes: s.probes.Load(), Missing: s.missing.Load(),
		Errors: s.errs.Load(), Bytes: s.bytes.Load(),
		DirectWaits: s.direct.Load(), PolledWaits: s.polled.Load(),
	}
}

// Serve answers requests until ctx is cancelled, then waits for the transfers in
// flight to stop and closes the socket. It returns nil after a cancel.
//
// Each transfer's socket is created here, on Serve's goroutine, before the transfer
// runs on its own: a caller that runs Serve on a thread inside a network namespace
// (tests do) gets every socket in that namespace.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()
	defer s.wg.Wait()
	buf := make([]byte, 1500) // a request bigger than one frame is not one we serve
	for {
		n, cm, src, err := s.pconn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.conn.Close()
			return fmt.Errorf("tftp: read request: %w", err)
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok || n < 2 {
			continue
		}
		client := ua.AddrPort()
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		req, err := parseRequest(buf[:n])
		if err != nil {
			if req.op == opRRQ || req.op == opWRQ {
				s.log.Debug("malformed request", "client", client, "err", err)
				s.refuse(cm, client, errCodeIllegal, "malformed request")
			}
			// Stray DATA/ACK/ERROR for a finished transfer, or noise: never answer,
			// port 69 must not become a reflector.
			continue
		}
		if req.op == opWRQ {
			s.log.Info("write refused", "client", client, "file", req.name)
			s.errs.Add(1)
			s.refuse(cm, client, errCodeAccess, "pifleet serves boot files read-only")
			continue
		}
		key := flight{client, req.name}
		if !s.takeOff(key) {
			// The same request again while its transfer runs: that transfer's own
			// resends answer it.
			s.log.Debug("duplicate request ignored", "client", client, "file", req.name)
			continue
		}
		sock, maxBlk, err := s.dialClient(cm, client)
		if err != nil {
			s.land(key)
			s.log.Warn("cannot answer request", "client", client, "file", req.name, "err", err)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.land(key)
			defer sock.Close()
			s.serveRead(ctx, sock, client, req, maxBlk)
		}()
	}
}

// takeOff registers a transfer; false if the same one is already running.
func (s *Server) takeOff(k flight) bool {
	s.flightMu.Lock()
	defer s.flightMu.Unlock()
	if _, ok := s.inFlight[k]; ok {
		return false
	}
	s.inFlight[k] = struct{}{}
	return true
}

// land unregisters a transfer that ended.
func (s *Server) land(k flight) {
	s.flightMu.Lock()
	defer s.flightMu.Unlock()
	delete(s.inFlight, k)
}

// dialClient opens the transfer's own socket (its TID, RFC 1350): bound to the address
// the request came in on, connected to the client's address and port, so the kernel
// drops strangers' packets and routes once. maxBlk is the block size the receiving
// interface can carry unfragmented.
func (s *Server) dialClient(cm *ipv4.ControlMessage, client netip.AddrPort) (*socket, int, error) {
	var local net.IP
	maxBlk := s.maxBlk
	if cm != nil {
		if !cm.Dst.Equal(net.IPv4bcast) {
			local = cm.Dst // a broadcast request is answered from the default address
		}
		if ifi, err := net.InterfaceByIndex(cm.IfIndex); err == nil && ifi.MTU > frameOverhead {
			maxBlk = max(defaultBlockSize, min(maxBlk, ifi.MTU-frameOverhead))
		}
	}
	sock, err := dialSocket(local, client)
	if err != nil {
		return nil, 0, err
	}
	return sock, maxBlk, nil
}

// refuse answers a request that gets no transfer with an ERROR from a fresh port.
func (s *Server) refuse(cm *ipv4.ControlMessage, client netip.AddrPort, code uint16, msg string) {
	sock, _, err := s.dialClient(cm, client)
	if err != nil {
		return
	}
	defer sock.Close()
	buf := make([]byte, 5+len(msg))
	sock.send(buf[:packError(buf, code, msg)])
}

// serveRead handles one RRQ from resolution to the last ACK, and logs and records it.
func (s *Server) serveRead(ctx context.Context, sock *socket, client netip.AddrPort, req request, maxBlk int) {
	start := time.Now()
	// Counted last, after the event is recorded: whoever sees the count can see the event.
	var counter *atomic.Int64
	defer func() {
		if counter != nil {
			counter.Add(1)
		}
	}()
	snd := &sender{sock: sock, timeout: s.cfg.Timeout, retries: s.cfg.Retries}
	board, path, err := resolve(s.cfg.Fleet, client.Addr(), req.name)
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
			s.logUnknown(client, req.name)
		case errors.Is(err, fs.ErrNotExist):
			code, msg, what = errCodeNotFound, "file not found", "missing"
			counter = &s.missing
		default:
			counter = &s.errs
		}
		snd.pkt = make([]byte, 5+len(msg))
		snd.sendError(code, msg)
		switch {
		case board != nil:
			s.finish(board, client, req.name, what, 0, start, err)
		case !errors.Is(err, errUnknownClient):
			// A name no board could own (too long, NUL): nobody to charge it to.
			s.log.Warn("tftp request refused", "client", client.Addr(), "file", req.name, "err", err)
		}
		return
	}
	defer f.Close()

	if req.mode != "octet" && req.mode != "netascii" {
		snd.pkt = make([]byte, 64)
		snd.sendError(errCodeIllegal, "mode must be octet or netascii")
		counter = &s.errs
		s.finish(board, client, req.name, "error", 0, start, fmt.Errorf("unsupported mode %q", req.mode))
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
	snd.pace.backoff = s.recallBackoff(client.Addr())
	n, err := snd.run(ctx, r, neg)
	s.keepBackoff(client.Addr(), snd.pace.backoff)
	s.bytes.Add(n)
	s.direct.Add(snd.directWaits)
	s.polled.Add(snd.polledWaits)
	var ce *clientError
	switch {
	case err == nil:
		counter = &s.reads
		s.finish(board, client, req.name, "read", n, start, nil)
	case errors.As(err, &ce) && ce.earlyTerminate():
		counter = &s.probes
		s.finish(board, client, req.name, "probe", n, start, nil)
	default:
		counter = &s.errs
		s.finish(board, client, req.name, "error", n, start, err)
	}
}

// finish logs one transfer with everything needed to follow a board's boot, and records
// it in the board's timeline.
//
// The event's time is when the request arrived, not when the transfer ended: a client
// asks for its next file right after the last ACK, and that request's event may be
// recorded first. Ordering by Time keeps a board's steps in the order it took them.
func (s *Server) finish(b *boot.Board, client netip.AddrPort, name, what string, n int64, start time.Time, err error) {
	d := time.Since(start)
	mac := ""
	if len(b.MAC) > 0 {
		mac = b.MAC.String()
	}
	attrs := []any{"board", b.Name, "mac", mac, "serial", b.Serial, "client", client.Addr(),
		"file", name, "what", what, "bytes", n, "duration", d}
	switch {
	case what == "error":
		s.log.Warn("tftp transfer failed", append(attrs, "err", err)...)
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

// recallBackoff returns the direct-wait back-off the client's last transfer ended with.
func (s *Server) recallBackoff(client netip.Addr) backoff {
	s.paceMu.Lock()
	defer s.paceMu.Unlock()
	return s.pacing[client]
}

// keepBackoff remembers a client's direct-wait back-off for its next transfer.
func (s *Server) keepBackoff(client netip.Addr, b backoff) {
	s.paceMu.Lock()
	defer s.paceMu.Unlock()
	if _, ok := s.pacing[client]; !ok && len(s.pacing) >= maxPacedClients {
		clear(s.pacing)
	}
	s.pacing[client] = b
}

// logUnknown logs a client that is not in the fleet, once per address.
func (s *Server) logUnknown(client netip.AddrPort, name string) {
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
		s.log.Info("tftp request from a client not in the fleet, ignoring it", "client", client.Addr(), "file", name)
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
