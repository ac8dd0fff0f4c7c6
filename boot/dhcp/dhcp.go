// Package dhcp answers the DHCP requests of the fleet's boards so they find the TFTP server:
// proxyDHCP (boot options only, next to the LAN's router) or full DHCP (also their address).
//
// Specs: RFC 2131 (protocol) and RFC 2132 (options), the PXE 2.1 specification (proxyDHCP
// on port 67, option 43 sub-options), RFC 4578 (options 93, 94, 97), RFC 3046 (option 82
// echo), RFC 3396 (long options); Raspberry Pi specifics are in shared/PI-BOOT.md.
// The flow of one packet: dhcp.go (socket, workers) -> handler.go (which client, which
// board) -> proxy.go or full.go (the reply) -> pi.go/bootopts.go (boot options) ->
// wire.go (bytes, no pad option). leases.go persists full mode's leases.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pifleet/pifleet/boot"
	"golang.org/x/net/ipv4"
)

// Mode selects how the server answers.
type Mode string

// The modes fleet.yaml can choose. "off" never reaches this package: the server
// simply does not start the service.
const (
	// ModeProxy answers only boot clients that are boards of the fleet, with boot
	// options and never an address: the LAN's router keeps assigning addresses.
	ModeProxy Mode = "proxy"
	// ModeFull is the LAN's DHCP server: fixed addresses for the fleet's boards, an
	// optional pool for everyone else, leases persisted in Config.LeaseFile.
	ModeFull Mode = "full"
	// ModeOff means no DHCP service; New refuses it.
	ModeOff Mode = "off"
)

// Config is what the server wires from fleet.yaml.
type Config struct {
	// Mode is ModeProxy (also when empty) or ModeFull.
	Mode Mode
	// Interface binds the socket to one interface (SO_BINDTODEVICE); "" = all.
	Interface string
	// ServerIP is our address: option 54, siaddr and option 66 (TFTP runs here too).
	ServerIP netip.Addr
	// Subnet is the LAN; full mode sends its mask (option 1) and checks addresses against it.
	Subnet netip.Prefix
	// Router is full mode's option 3 (optional).
	Router netip.Addr
	// DNS is full mode's option 6 (optional).
	DNS []netip.Addr
	// LeaseTime is full mode's lease length (option 51); zero means one hour.
	LeaseTime time.Duration
	// PoolStart and PoolEnd bound full mode's dynamic pool; both zero = no pool, and
	// then clients that are not boards with a fixed IP get no answer.
	PoolStart, PoolEnd netip.Addr
	// LeaseFile is where full mode persists leases (required in full mode).
	LeaseFile string
	// Port is the server port, 67 unless a test says otherwise; replies go to Port+1.
	Port int
	// ProxyPXE makes proxy mode answer U-Boot/PXE boot clients too. Off by default:
	// U-Boot takes the first OFFER, and an address-less proxy OFFER that beats the
	// router's makes it fail even when the router's next-server points here. On for
	// U-Boot builds that merge proxy offers (CONFIG_SERVERIP_FROM_PROXYDHCP). Pi
	// bootloaders are answered in proxy mode either way (they merge the offers).
	ProxyPXE bool
	// Fleet answers which board a packet came from. Its contents change on reload.
	Fleet boot.Fleet
	// Events receives each board's DHCP steps; nil = a private timeline.
	Events *boot.Timeline
	// Logger receives one line per DHCP step; nil = discard. The caller adds
	// service=dhcp (or whatever it names this service); lines add board, mac, serial.
	Logger *slog.Logger
}

// Stats counts packets, for metrics and benchmarks.
type Stats struct {
	Received    uint64 // packets read from the socket
	Replied     uint64 // replies sent
	Ignored     uint64 // valid requests deliberately not answered (not ours, not in fleet, ...)
	Malformed   uint64 // packets that were not DHCP requests
	RateLimited uint64 // dropped by the per-MAC limit
	Overflow    uint64 // dropped because every worker was busy and the queue was full
	Oversized   uint64 // datagrams larger than maxRequest, dropped
	OtherIf     uint64 // packets that came in on another interface than ours, dropped
	SendErrors  uint64 // replies the kernel refused
	// LogSuppressed counts log lines held back by the per-client and shared rate limits.
	LogSuppressed uint64
}

// Server is one DHCP service on one interface. Create it with New, run it with Serve.
type Server struct {
	cfg        Config
	log        *slog.Logger
	events     *boot.Timeline
	leases     *leaseTable // full mode only
	clients    *clientTable
	lines      lineLimits
	clientPort int
	pool       bool

	received, replied, ignored, malformed, limited, overflow, oversized, otherIf, sendErr atomic.Uint64

	// requests counts by request type and outcome (counts.go).
	requests [nRequestTypes][nOutcomes]atomic.Uint64
}

// Tunables. Workers block on lease fsyncs (group commit), so there are many of them.
// Packets from the fleet's boards (by MAC) have their own queue, which workers empty
// first: a flood of other clients fills the other one.
const (
	workers         = 64
	queueDepth      = 1024
	boardQueueDepth = 256
	// maxRequest is the largest request handled: a jumbo frame's UDP payload. RFC 2131
	// requests fit 576 bytes unless option 57 says more, and nothing honest sends more
	// than its MTU. The socket is read with a 64 KiB buffer, so larger datagrams are
	// seen whole (not truncated into something that parses differently) and dropped.
	maxRequest = 9000 - 28
	readBuffer = 64 << 10
)

// New checks cfg and, in full mode, loads the lease file.
func New(cfg Config) (*Server, error) {
	if cfg.Mode == "" {
		cfg.Mode = ModeProxy
	}
	if cfg.Mode != ModeProxy && cfg.Mode != ModeFull {
		return nil, fmt.Errorf("mode %q: want %q or %q (%q means: do not start the service)",
			cfg.Mode, ModeProxy, ModeFull, ModeOff)
	}
	if !cfg.ServerIP.Is4() {
		return nil, fmt.Errorf("server address %v is not an IPv4 address", cfg.ServerIP)
	}
	if cfg.Fleet == nil {
		return nil, errors.New("no fleet")
	}
	if cfg.Port == 0 {
		cfg.Port = 67
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Events == nil {
		cfg.Events = boot.NewTimeline()
	}
	if cfg.LeaseTime <= 0 {
		cfg.LeaseTime = time.Hour
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger.With("mode", string(cfg.Mode)),
		events:     cfg.Events,
		clients:    newClientTable(),
		clientPort: cfg.Port + 1,
	}
	s.lines = newLineLimits(s.log)
	if cfg.Mode == ModeFull {
		if err := s.checkFull(); err != nil {
			return nil, err
		}
		l, err := openLeases(cfg.LeaseFile, time.Now())
		if err != nil {
			return nil, err
		}
		s.leases = l
	}
	return s, nil
}

func (s *Server) checkFull() error {
	c := s.cfg
	if !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() {
		return fmt.Errorf("full mode needs the LAN subnet (e.g. 192.168.1.0/24), got %v", c.Subnet)
	}
	if !c.Subnet.Contains(c.ServerIP) {
		return fmt.Errorf("server address %v is outside the subnet %v", c.ServerIP, c.Subnet)
	}
	if c.LeaseFile == "" {
		return errors.New("full mode needs a lease file")
	}
	switch {
	case !c.PoolStart.IsValid() && !c.PoolEnd.IsValid():
	case !c.PoolStart.Is4() || !c.PoolEnd.Is4():
		return fmt.Errorf("pool %v-%v: give both ends as IPv4 addresses", c.PoolStart, c.PoolEnd)
	case !c.Subnet.Contains(c.PoolStart) || !c.Subnet.Contains(c.PoolEnd):
		return fmt.Errorf("pool %v-%v is not inside the subnet %v", c.PoolStart, c.PoolEnd, c.Subnet)
	case c.PoolEnd.Less(c.PoolStart):
		return fmt.Errorf("pool %v-%v: start is after end", c.PoolStart, c.PoolEnd)
	default:
		s.pool = true
	}
	return nil
}

// Stats returns the packet counters.
func (s *Server) Stats() Stats {
	return Stats{
		Received: s.received.Load(), Replied: s.replied.Load(), Ignored: s.ignored.Load(),
		Malformed: s.malformed.Load(), RateLimited: s.limited.Load(), Overflow: s.overflow.Load(),
		Oversized: s.oversized.Load(), OtherIf: s.otherIf.Load(), SendErrors: s.sendErr.Load(),
		LogSuppressed: s.lines.perClient.Suppressed() + s.lines.shared.Suppressed(),
	}
}

// Lease is a full-mode lease as shown on the status page.
type Lease struct {
	MAC     string     `json:"mac"`
	IP      netip.Addr `json:"ip"`
	Board   string     `json:"board,omitempty"` // "" for pool clients not in the fleet
	Expires time.Time  `json:"expires"`
}

// Leases lists the live leases (full mode; nil in proxy mode).
func (s *Server) Leases() []Lease {
	if s.leases == nil {
		return nil
	}
	var out []Lease
	for _, l := range s.leases.live(time.Now()) {
		out = append(out, Lease{MAC: l.MAC, IP: l.IP, Board: l.Board, Expires: l.Expires})
	}
	return out
}

var _ boot.Leases = (*Server)(nil)

// LeaseHolder implements boot.Leases: the MAC holding a live lease on ip. (A fleet
// board's OFFER is already a lease: the Pi 3 ROM never sends a REQUEST.) An offer to a
// pool client is not.
func (s *Server) LeaseHolder(ip netip.Addr) (net.HardwareAddr, bool) {
	if s.leases == nil {
		return nil, false
	}
	s.leases.mu.Lock()
	m, ok := s.leases.byIP[ip]
	if ok {
		l := s.leases.byMAC[m]
		ok = l != nil && l.IP == ip && l.Expires.After(time.Now())
	}
	s.leases.mu.Unlock()
	if !ok {
		return nil, false
	}
	mac, err := net.ParseMAC(m)
	return mac, err == nil
}

type packet struct {
	buf     []byte
	ifIndex int
	at      time.Time
}

// Serve listens on 0.0.0.0:Port (a socket bound to one address never sees broadcast
// DISCOVERs) and answers until ctx is cancelled; it then closes its socket and the
// lease file and returns nil. Serve runs once per Server. The socket is created on the
// calling goroutine's thread, so a caller that entered a network namespace on a locked
// thread gets the socket in that namespace.
func (s *Server) Serve(ctx context.Context) error {
	conn, err := listen(s.cfg.Interface, s.cfg.Port)
	if err != nil {
		return err
	}
	pc := ipv4.NewPacketConn(conn)
	// The incoming interface tells where a broadcast reply must go when we are
	// not bound to one interface.
	if err := pc.SetControlMessage(ipv4.FlagInterface, true); err != nil {
		conn.Close()
		return fmt.Errorf("IP_PKTINFO: %w", err)
	}
	// Answer only on our interface: the configured one (SO_BINDTODEVICE already keeps
	// the others out; the index check holds where the kernel delivers anyway), else
	// the one that carries ServerIP, so a multi-homed server never answers another LAN
	// (found now, in the caller's network namespace).
	onlyIf := 0
	if s.cfg.Interface != "" {
		ifc, err := net.InterfaceByName(s.cfg.Interface)
		if err != nil {
			conn.Close()
			return fmt.Errorf("interface %s: %w", s.cfg.Interface, err)
		}
		onlyIf = ifc.Index
	} else if onlyIf = interfaceOf(s.cfg.ServerIP); onlyIf == 0 {
		s.log.Warn("no interface has the server address: answering on every interface", "server_ip", s.cfg.ServerIP)
	}
	s.log.Info("listening", "interface", s.cfg.Interface, "port", s.cfg.Port, "server_ip", s.cfg.ServerIP)

	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	// The counts of rate-limited log lines, now and then and at the end.
	stopFlush, flushDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(flushDone)
		tick := time.NewTicker(flushEvery)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				s.lines.flush()
			case <-stopFlush:
				return
			}
		}
	}()

	boards := make(chan packet, boardQueueDepth)
	others := make(chan packet, queueDepth)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() { s.work(pc, boards, others) })
	}
	buf := make([]byte, readBuffer)
	var readErr error
	for {
		n, cm, _, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				readErr = fmt.Errorf("read: %w", err)
			}
			break
		}
		s.received.Add(1)
		at := time.Now()
		ifIndex := 0
		if cm != nil {
			ifIndex = cm.IfIndex
		}
		if onlyIf != 0 && ifIndex != 0 && ifIndex != onlyIf {
			s.otherIf.Add(1)
			continue
		}
		if n > maxRequest {
			s.oversized.Add(1)
			s.limitedLog(slog.LevelWarn, "oversized requests", false, "request larger than a jumbo frame: dropped",
				"bytes", n, "max", maxRequest)
			continue
		}
		p := packet{buf: append([]byte(nil), buf[:n]...), at: at, ifIndex: ifIndex}
		q := others
		if n >= 34 {
			if _, ok := s.cfg.Fleet.BoardByMAC(net.HardwareAddr(buf[28:34])); ok {
				q = boards
			}
		}
		select {
		case q <- p:
		default:
			// Every worker busy and the queue full: drop rather than queue without
			// bound. Clients retransmit (RFC 2131 section 4.1).
			s.overflow.Add(1)
		}
	}
	close(boards)
	close(others)
	wg.Wait()
	conn.Close()
	close(stopFlush)
	<-flushDone
	s.lines.flush()
	if s.leases != nil {
		if err := s.leases.close(); err != nil && readErr == nil {
			readErr = err
		}
	}
	s.log.Info("stopped", "stats", s.Stats())
	return readErr
}

// work answers packets until both queues are closed and empty, boards' first.
func (s *Server) work(pc *ipv4.PacketConn, boards, others chan packet) {
	for boards != nil || others != nil {
		select {
		case p, ok := <-boards:
			if !ok {
				boards = nil
				continue
			}
			s.serveOne(pc, p)
			continue
		default:
		}
		select {
		case p, ok := <-boards:
			if !ok {
				boards = nil
				continue
			}
			s.serveOne(pc, p)
		case p, ok := <-others:
			if !ok {
				others = nil
				continue
			}
			s.serveOne(pc, p)
		}
	}
}

// interfaceOf returns the index of the interface that has ip, 0 if none does.
func interfaceOf(ip netip.Addr) int {
	ifs, err := net.Interfaces()
	if err != nil {
		return 0
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if x, ok := netip.AddrFromSlice(n.IP); ok && x.Unmap() == ip {
					return ifc.Index
				}
			}
		}
	}
	return 0
}

func (s *Server) serveOne(pc *ipv4.PacketConn, p packet) {
	out, dst := s.handle(p.buf, p.at)
	if out == nil {
		return
	}
	var cm *ipv4.ControlMessage
	if p.ifIndex != 0 && s.cfg.Interface == "" {
		cm = &ipv4.ControlMessage{IfIndex: p.ifIndex}
	}
	if _, err := pc.WriteTo(out, cm, net.UDPAddrFromAddrPort(dst)); err != nil {
		s.sendErr.Add(1)
		// No request context here: the reply itself names the client.
		mac := net.HardwareAddr(out[28:34])
		name, serial := "-", ""
		if b, ok := s.cfg.Fleet.BoardByMAC(mac); ok {
			name, serial = b.Name, b.Serial
		}
		s.limitedLog(slog.LevelWarn, mac.String(), name == "-", "send reply",
			"board", name, "mac", mac.String(), "serial", serial, "to", dst, "err", err)
		return
	}
	s.replied.Add(1)
}
