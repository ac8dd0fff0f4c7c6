package nfsroot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pifleet/pifleet/internal/ratelog"
)

// The portmapper (RPCBIND program 100000, RFC 1833): PMAP version 2 and RPCBIND versions 3
// and 4, so that a client given no port options finds NFS and MOUNT the standard way: the
// kernel (GETPORT v2 over TCP), klibc nfsmount in initramfs-tools (GETPORT v2 over TCP, UDP if
// TCP cannot connect), mount.nfs and rpcinfo (libtirpc: GETPORT, then GETADDR v4/v3).
//
// It answers from a fixed table, never from the network: SET and UNSET reply FALSE to
// everyone, as rpcbind does for callers that are not local; CALLIT/BCAST/INDIRECT (which
// would make this host send calls on a stranger's behalf) and the bookkeeping procedures
// (GETTIME, UADDR2TADDR, TADDR2UADDR, GETADDRLIST, GETSTAT) get PROC_UNAVAIL, as a
// rpcbind built without remote calls answers. Lookups follow rpcbind: GETPORT matches
// program and protocol and prefers the exact version (another version of the program is
// still returned, so the client learns the versions from that server's PROG_MISMATCH);
// GETADDR matches the netid of the transport the question came on (a question over UDP
// for NFS gets "": pifleet serves NFS and MOUNT over TCP only); GETVERSADDR wants the exact
// version.

const (
	progPortmap = 100000

	ipprotoTCP = 6
	ipprotoUDP = 17

	// maxPortmapRecord bounds a portmapper call, TCP record or UDP datagram: a header with
	// the largest AUTH_SYS credential and verifier plus three bounded strings fits.
	maxPortmapRecord = 2048
	// maxRPCBString bounds r_netid, r_addr and r_owner; real ones are a few bytes.
	maxRPCBString = 255
	// maxPortmapConnsPerAddr and maxStrangerPortmapConns bound TCP connections: a booting
	// client opens one or two short ones, so these are far above need and far below harm.
	// Addresses outside the fleet share one budget, so they cannot crowd the boards out;
	// the boards' connections are bounded by the fleet's size.
	maxPortmapConnsPerAddr  = 4
	maxStrangerPortmapConns = 32
	// portmapTimeout is how long a TCP client may take to send one call, or to take one
	// reply, before its connection is closed.
	portmapTimeout = 30 * time.Second
)

// PortmapOptions say what the portmapper gives out.
type PortmapOptions struct {
	// NFS and Mount are the TCP ports NFS v3 (with NFS_ACL v3) and MOUNT v3 are served on
	// (ServeNFS and ServeMount); 0 means not served, and a lookup for it answers 0 / "".
	NFS, Mount int
	// Host is the server address put into universal addresses (GETADDR, DUMP v3/v4) for
	// questions that came over a UDP socket bound to the unspecified address, whose
	// replies cannot tell which address the client reached. A TCP connection always knows.
	Host netip.Addr
}

// portmapEntry is one registration: program, version, transport and port.
type portmapEntry struct {
	prog, vers uint32
	netid      string // "tcp" or "udp" (IPv4)
	port       int
}

// portmapper answers one server's portmapper calls.
type portmapper struct {
	s       *Server
	opts    PortmapOptions
	entries []portmapEntry

	connMu    sync.Mutex
	conns     map[netip.Addr]int
	strangers int // connections open from addresses no export allows

	refused atomic.Int64 // TCP connections closed at once for being over a bound; logged
	dropped atomic.Int64 // UDP datagrams not answered (oversized, would amplify); logged
	rl      *ratelog.Limiter
}

// ServePortmap serves the portmapper on tcp and udp (either may be nil) until ctx ends.
// It answers for NFS, NFS_ACL and MOUNT v3 on the ports in opts and for itself on the ports of
// tcp and udp; nothing can be registered from the network.
func (s *Server) ServePortmap(ctx context.Context, tcp net.Listener, udp net.PacketConn, opts PortmapOptions) error {
	if tcp == nil && udp == nil {
		return nil
	}
	tcpPort, udpPort := 0, 0
	if tcp != nil {
		tcpPort = portOf(tcp.Addr())
	}
	if udp != nil {
		udpPort = portOf(udp.LocalAddr())
	}
	p := newPortmapper(s, opts, tcpPort, udpPort)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		if tcp != nil {
			tcp.Close()
		}
		if udp != nil {
			udp.Close()
		}
	}()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Minute)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				p.rl.Flush()
				return
			case <-tick.C:
				p.rl.Flush()
			}
		}
	}()
	if udp != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.serveUDP(ctx, udp); err != nil {
				errc <- err
				cancel()
			}
		}()
	}
	if tcp != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.serveTCP(ctx, tcp, &wg); err != nil {
				errc <- err
				cancel()
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// newPortmapper builds the registration table: the portmapper itself on the transports it
// has (versions 4 to 2, as rpcbind lists them), then NFS, NFS_ACL and MOUNT v3 over TCP.
func newPortmapper(s *Server, opts PortmapOptions, tcpPort, udpPort int) *portmapper {
	p := &portmapper{s: s, opts: opts, conns: map[netip.Addr]int{}, rl: ratelog.New(s.log, 5, time.Minute)}
	for _, t := range []struct {
		netid string
		port  int
	}{{"tcp", tcpPort}, {"udp", udpPort}} {
		for v := uint32(4); v >= 2 && t.port > 0; v-- {
			p.entries = append(p.entries, portmapEntry{progPortmap, v, t.netid, t.port})
		}
	}
	if opts.NFS > 0 {
		// NFS_ACL is served beside NFS on its port, as knfsd registers it.
		p.entries = append(p.entries, portmapEntry{progNFS, 3, "tcp", opts.NFS}, portmapEntry{progNFSACL, 3, "tcp", opts.NFS})
	}
	if opts.Mount > 0 {
		p.entries = append(p.entries, portmapEntry{progMount, 3, "tcp", opts.Mount})
	}
	return p
}

func portOf(a net.Addr) int {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return 0
	}
	return int(ap.Port())
}

func addrPortOf(a net.Addr) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// warn logs a warning about what client sent (or, without a client, about the sockets),
// rate-limited per client address so that a flood of junk costs a few lines.
func (p *portmapper) warn(client netip.Addr, msg string, args ...any) {
	key := "(server)"
	if client.IsValid() {
		key = client.String()
	}
	if !p.rl.Allow(key) {
		return
	}
	board := ""
	if client.IsValid() {
		board = p.s.boardFor(client)
	}
	p.s.log.Warn(msg, append([]any{"client", key, "board", board}, args...)...)
}

// serveTCP accepts connections until ctx ends; an accept error other than the listener's
// closing is retried with back-off (a full descriptor table must not end the service).
func (p *portmapper) serveTCP(ctx context.Context, l net.Listener, wg *sync.WaitGroup) error {
	backoff := time.Duration(0)
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("portmap listener %s: %w", l.Addr(), err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.warn(netip.Addr{}, "portmap accept failed; retrying", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		addr := addrPortOf(c.RemoteAddr()).Addr()
		ok, stranger := p.admit(addr)
		if !ok {
			n := p.refused.Add(1)
			p.warn(addr, "portmap connection refused: too many open", "refused_total", n)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer p.release(addr, stranger)
			p.serveConn(ctx, c, addr)
		}()
	}
}

// admit counts a new connection from a, or reports that a bound is reached; it returns
// whether a is a stranger (release needs it back).
func (p *portmapper) admit(a netip.Addr) (ok, stranger bool) {
	stranger = !p.s.known(a)
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if p.conns[a] >= maxPortmapConnsPerAddr || (stranger && p.strangers >= maxStrangerPortmapConns) {
		return false, stranger
	}
	if stranger {
		p.strangers++
	}
	p.conns[a]++
	return true, stranger
}

func (p *portmapper) release(a netip.Addr, stranger bool) {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if stranger {
		p.strangers--
	}
	if p.conns[a]--; p.conns[a] <= 0 {
		delete(p.conns, a)
	}
}

// serveConn answers the calls of one TCP connection in order, one at a time.
func (p *portmapper) serveConn(ctx context.Context, c net.Conn, addr netip.Addr) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	local := addrPortOf(c.LocalAddr()).Addr()
	netid := "tcp"
	if local.Is6() {
		netid = "tcp6"
	}
	br := bufio.NewReaderSize(c, 1024)
	var buf []byte
	for {
		_ = c.SetReadDeadline(time.Now().Add(portmapTimeout))
		rec, err := readRecord(br, buf, maxPortmapRecord)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ECONNRESET) && ctx.Err() == nil {
				p.warn(addr, "portmap: closing connection", "err", err)
			}
			return
		}
		buf = rec
		h, cerr := parseCall(rec)
		if h == nil {
			continue // a reply or junk without an xid: nothing to answer
		}
		reply := p.answer(h, cerr, addr, local, netid)
		_ = c.SetWriteDeadline(time.Now().Add(portmapTimeout))
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

// serveUDP answers datagrams one at a time. A datagram over the size bound, or not a
// call, gets nothing. No reply is larger than the call that asked for it, except to an
// address of the fleet: only DUMP's reply is, and a forged source address must not turn
// this server into an amplifier against a third party (rpcinfo -p dumps over TCP anyway).
func (p *portmapper) serveUDP(ctx context.Context, pc net.PacketConn) error {
	buf := make([]byte, maxPortmapRecord+1)
	local := addrPortOf(pc.LocalAddr()).Addr()
	if local.IsUnspecified() && p.opts.Host.IsValid() {
		local = p.opts.Host
	}
	netid := "udp"
	if local.Is6() {
		netid = "udp6"
	}
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("portmap udp %s: %w", pc.LocalAddr(), err)
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			p.warn(netip.Addr{}, "portmap udp read failed", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		addr := addrPortOf(from).Addr()
		if n > maxPortmapRecord {
			p.warn(addr, "portmap: datagram over the size bound dropped", "bytes", n, "dropped_total", p.dropped.Add(1))
			continue
		}
		h, cerr := parseCall(buf[:n])
		if h == nil {
			p.dropped.Add(1)
			continue
		}
		reply := p.answer(h, cerr, addr, local, netid)[4:] // no record mark on UDP
		if len(reply) > n && !p.s.known(addr) {
			p.warn(addr, "portmap: udp reply larger than the call, not sent to an address outside the fleet",
				"proc", h.proc, "call_bytes", n, "reply_bytes", len(reply), "dropped_total", p.dropped.Add(1))
			continue
		}
		if _, err := pc.WriteTo(reply, from); err != nil && ctx.Err() == nil {
			p.warn(addr, "portmap udp reply failed", "err", err)
		}
	}
}

// answer returns the reply record (with its TCP record mark) to one call that came from
// client to local over netid.
func (p *portmapper) answer(h *rpcCallHdr, cerr *callError, client, local netip.Addr, netid string) []byte {
	w := replyBuf(make([]byte, 0, 256), h.xid)
	log := p.s.log.With("client", client.String(), "board", p.s.boardFor(client))
	if cerr != nil {
		p.warn(client, "portmap: refusing call", "prog", h.prog, "vers", h.vers, "proc", h.proc, "err", cerr.err)
		w.callError(cerr, 0, 0)
		return w.finish()
	}
	if h.prog != progPortmap {
		w.accepted(acceptProgUnavail)
		return w.finish()
	}
	if h.vers < 2 || h.vers > 4 {
		w.callError(&callError{stat: acceptProgMismatch}, 2, 4)
		return w.finish()
	}
	mark := len(w.b)
	w.accepted(acceptSuccess)
	r := &xdrReader{b: h.args}
	switch proc := h.proc; {
	case proc == 0: // NULL
	case proc == 1 || proc == 2: // SET, UNSET: nothing is settable from the network
		if h.vers == 2 {
			r.u32()
			r.u32()
			r.u32()
			r.u32()
		} else {
			readRPCB(r)
		}
		if r.err == nil {
			p.warn(client, "portmap: refusing to change a registration", "proc", proc, "vers", h.vers)
		}
		w.bool(false)
	case proc == 3 && h.vers == 2: // GETPORT
		prog, vers, prot := r.u32(), r.u32(), r.u32()
		r.u32() // port: ignored
		if r.err != nil {
			break
		}
		port := 0
		if netid := protoNetid(prot); netid != "" {
			port = p.lookup(prog, vers, netid, false)
		}
		log.Debug("portmap GETPORT", "prog", prog, "vers", vers, "prot", prot, "port", port)
		w.u32(uint32(port))
	case proc == 3 && h.vers > 2, proc == 9 && h.vers == 4: // GETADDR, GETVERSADDR
		prog, vers, _, _, _ := readRPCB(r)
		if r.err != nil {
			break
		}
		port := p.lookup(prog, vers, netid, proc == 9)
		uaddr := ""
		if port > 0 {
			uaddr = universalAddr(local, port)
		}
		log.Debug("portmap GETADDR", "vers", h.vers, "prog", prog, "prog_vers", vers, "netid", netid, "addr", uaddr)
		w.str(uaddr)
	case proc == 4: // DUMP
		log.Debug("portmap DUMP", "vers", h.vers)
		p.dump(w, h.vers, local)
	default: // CALLIT/BCAST/INDIRECT, GETTIME, address conversions, GETADDRLIST, GETSTAT
		w.b = w.b[:mark]
		w.accepted(acceptProcUnavail)
		return w.finish()
	}
	if r.err != nil {
		p.warn(client, "portmap: garbage arguments", "vers", h.vers, "proc", h.proc, "err", r.err)
		w.b = w.b[:mark]
		w.accepted(acceptGarbageArgs)
	}
	return w.finish()
}

// readRPCB decodes an rpcb (RFC 1833 section 2.1) with bounded strings.
func readRPCB(r *xdrReader) (prog, vers uint32, netid, addr, owner []byte) {
	prog, vers = r.u32(), r.u32()
	netid = r.opaque(maxRPCBString)
	addr = r.opaque(maxRPCBString)
	owner = r.opaque(maxRPCBString)
	return
}

func protoNetid(prot uint32) string {
	switch prot {
	case ipprotoTCP:
		return "tcp"
	case ipprotoUDP:
		return "udp"
	}
	return ""
}

func netidProto(netid string) uint32 {
	if netid == "udp" {
		return ipprotoUDP
	}
	return ipprotoTCP
}

// lookup returns the port of prog on netid: the exact version if registered, else (unless
// exact) any version of prog, as rpcbind's find_service does; 0 if none.
func (p *portmapper) lookup(prog, vers uint32, netid string, exact bool) int {
	hit := 0
	for _, e := range p.entries {
		if e.prog != prog || e.netid != netid {
			continue
		}
		if e.vers == vers {
			return e.port
		}
		if !exact && hit == 0 {
			hit = e.port
		}
	}
	return hit
}

// dump writes the registration list: pmaplist for version 2, rpcblist (with universal
// addresses on the address the client reached) for 3 and 4.
func (p *portmapper) dump(w *xdrWriter, vers uint32, local netip.Addr) {
	for _, e := range p.entries {
		w.bool(true)
		w.u32(e.prog)
		w.u32(e.vers)
		if vers == 2 {
			w.u32(netidProto(e.netid))
			w.u32(uint32(e.port))
			continue
		}
		w.str(e.netid)
		w.str(universalAddr(local, e.port))
		w.str("superuser")
	}
	w.bool(false)
}

// universalAddr is the RFC 1833 universal address of a TCP/UDP endpoint:
// "h1.h2.h3.h4.p1.p2" for IPv4, the textual address plus ".p1.p2" for IPv6.
func universalAddr(a netip.Addr, port int) string {
	return a.String() + "." + strconv.Itoa(port>>8) + "." + strconv.Itoa(port&0xff)
}
