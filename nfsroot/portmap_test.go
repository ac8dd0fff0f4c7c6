package nfsroot

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/netns"
	"github.com/pifleet/pifleet/test/require"
	"github.com/willscott/go-nfs-client/nfs/xdr"
)

// pmapFixture is the fixture's server answering the portmapper on loopback.
type pmapFixture struct {
	*fixture
	tcp, udp netip.AddrPort
	conns    map[netip.Addr]*client // one connection per source address, reused
}

func newPortmapFixture(t *testing.T) *pmapFixture {
	f := newFixture(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	u, err := net.ListenPacket("udp", "127.0.0.1:0")
	must(t, err)
	p := &pmapFixture{fixture: f, conns: map[netip.Addr]*client{}, tcp: netip.MustParseAddrPort(l.Addr().String()), udp: netip.MustParseAddrPort(u.LocalAddr().String())}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- f.srv.ServePortmap(ctx, l, u, PortmapOptions{NFS: int(f.nfs.Port()), Mount: int(f.mount.Port())})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServePortmap: %v", err)
		}
	})
	return p
}

// pmapCall encodes a portmapper call (AUTH_NONE, as portmapper clients send).
func pmapCall(xid, vers, proc uint32, args ...any) []byte {
	var b bytes.Buffer
	b.Write(make([]byte, 4))
	for _, v := range []uint32{xid, rpcCall, 2, progPortmap, vers, proc, authNone, 0, authNone, 0} {
		_ = binary.Write(&b, binary.BigEndian, v)
	}
	for _, a := range args {
		if ra, ok := a.(rawArgs); ok {
			b.Write(ra)
			continue
		}
		if err := xdr.Write(&b, a); err != nil {
			panic(err)
		}
	}
	rec := b.Bytes()
	binary.BigEndian.PutUint32(rec, 0x80000000|uint32(len(rec)-4))
	return rec
}

type pmapMapping struct{ Prog, Vers, Prot, Port uint32 }
type rpcbArgs struct {
	Prog, Vers         uint32
	Netid, Addr, Owner string
}

func (p *pmapFixture) call(t *testing.T, from netip.Addr, vers, proc uint32, args ...any) tReply {
	t.Helper()
	c := p.conns[from]
	if c == nil {
		c = dialFrom(t, from, p.tcp)
		p.conns[from] = c
	}
	c.xid++
	r, err := c.raw(pmapCall(c.xid, vers, proc, args...))
	must(t, err)
	return r
}

func (p *pmapFixture) getport(t *testing.T, prog, vers, prot uint32) uint32 {
	t.Helper()
	r := p.call(t, addrA, 2, 3, pmapMapping{prog, vers, prot, 0})
	if r.denied || r.stat != acceptSuccess {
		t.Fatalf("GETPORT %d/%d/%d: denied=%v stat=%d", prog, vers, prot, r.denied, r.stat)
	}
	return read[uint32](t, r.body)
}

func uaddr(a netip.Addr, port uint16) string {
	return fmt.Sprintf("%s.%d.%d", a, port>>8, port&0xff)
}

func TestPortmapAnswers(t *testing.T) {
	p := newPortmapFixture(t)
	lo := netip.MustParseAddr("127.0.0.1")
	nfsPort, mountPort := uint32(p.nfs.Port()), uint32(p.mount.Port())
	for _, tc := range []struct {
		prog, vers, prot, want uint32
	}{
		{progNFS, 3, ipprotoTCP, nfsPort},
		{progMount, 3, ipprotoTCP, mountPort},
		{progNFS, 3, ipprotoUDP, 0},          // NFS is TCP only
		{progMount, 3, ipprotoUDP, 0},        // so is MOUNT
		{progNFS, 2, ipprotoTCP, nfsPort},    // another version: the port, and NFS says PROG_MISMATCH 3-3
		{progNFSACL, 3, ipprotoTCP, nfsPort}, // served beside NFS
		{progNFSACL, 3, ipprotoUDP, 0},
		{100021, 4, ipprotoTCP, 0}, // NLM: not served (nolock)
		{progPortmap, 2, ipprotoTCP, uint32(p.tcp.Port())},
		{progPortmap, 2, ipprotoUDP, uint32(p.udp.Port())},
		{progNFS, 3, 99, 0},
	} {
		if got := p.getport(t, tc.prog, tc.vers, tc.prot); got != tc.want {
			t.Errorf("GETPORT %d v%d prot %d = %d, want %d", tc.prog, tc.vers, tc.prot, got, tc.want)
		}
	}
	// GETADDR v3 and v4 over TCP: the address the client reached, with the port.
	for _, vers := range []uint32{3, 4} {
		for _, tc := range []struct {
			prog, vers uint32
			want       string
		}{
			{progNFS, 3, uaddr(lo, p.nfs.Port())},
			{progMount, 3, uaddr(lo, p.mount.Port())},
			{progMount, 1, uaddr(lo, p.mount.Port())}, // any version, as rpcbind
			{progNFSACL, 3, uaddr(lo, p.nfs.Port())},
			{100021, 4, ""}, // NLM
		} {
			r := p.call(t, addrA, vers, 3, rpcbArgs{tc.prog, tc.vers, "tcp", "", ""})
			if got := read[string](t, r.body); r.stat != acceptSuccess || got != tc.want {
				t.Errorf("GETADDR v%d %d/%d: stat %d %q, want %q", vers, tc.prog, tc.vers, r.stat, got, tc.want)
			}
		}
	}
	// GETVERSADDR wants the exact version.
	r := p.call(t, addrA, 4, 9, rpcbArgs{progNFS, 4, "tcp", "", ""})
	if got := read[string](t, r.body); got != "" {
		t.Errorf("GETVERSADDR NFS v4 = %q, want none", got)
	}
	r = p.call(t, addrA, 4, 9, rpcbArgs{progNFS, 3, "tcp", "", ""})
	if got := read[string](t, r.body); got != uaddr(lo, p.nfs.Port()) {
		t.Errorf("GETVERSADDR NFS v3 = %q", got)
	}

	// DUMP v2: every registration, NFS and MOUNT on TCP only.
	r = p.call(t, addrA, 2, 4)
	var maps []pmapMapping
	for read[uint32](t, r.body) != 0 {
		maps = append(maps, read[pmapMapping](t, r.body))
	}
	want := []pmapMapping{
		{progPortmap, 4, ipprotoTCP, uint32(p.tcp.Port())}, {progPortmap, 3, ipprotoTCP, uint32(p.tcp.Port())}, {progPortmap, 2, ipprotoTCP, uint32(p.tcp.Port())},
		{progPortmap, 4, ipprotoUDP, uint32(p.udp.Port())}, {progPortmap, 3, ipprotoUDP, uint32(p.udp.Port())}, {progPortmap, 2, ipprotoUDP, uint32(p.udp.Port())},
		{progNFS, 3, ipprotoTCP, nfsPort}, {progNFSACL, 3, ipprotoTCP, nfsPort}, {progMount, 3, ipprotoTCP, mountPort},
	}
	if !slices.Equal(maps, want) {
		t.Errorf("DUMP v2:\n got %v\nwant %v", maps, want)
	}
	// DUMP v4: rpcb entries with universal addresses.
	r = p.call(t, addrA, 4, 4)
	var ents []rpcbArgs
	for read[uint32](t, r.body) != 0 {
		e := read[rpcbArgs](t, r.body)
		ents = append(ents, rpcbArgs{e.Prog, e.Vers, e.Netid, e.Addr, e.Owner})
	}
	if len(ents) != 9 || ents[6] != (rpcbArgs{progNFS, 3, "tcp", uaddr(lo, p.nfs.Port()), "superuser"}) {
		t.Errorf("DUMP v4: %v", ents)
	}
}

func TestPortmapRefuses(t *testing.T) {
	p := newPortmapFixture(t)
	nfsPort := uint32(p.nfs.Port())
	// SET and UNSET: FALSE, and nothing changes.
	for _, tc := range []struct {
		vers, proc uint32
		args       any
	}{
		{2, 1, pmapMapping{progNFS, 3, ipprotoTCP, 9999}},
		{2, 2, pmapMapping{progNFS, 3, ipprotoTCP, 0}},
		{3, 1, rpcbArgs{progNFS, 3, "tcp", "127.0.0.1.39.15", "superuser"}},
		{4, 2, rpcbArgs{progNFS, 3, "tcp", "", "superuser"}},
		{2, 1, pmapMapping{424242, 1, ipprotoUDP, 9999}},
	} {
		for _, from := range []netip.Addr{addrA, addrOther} {
			r := p.call(t, from, tc.vers, tc.proc, tc.args)
			if r.denied || r.stat != acceptSuccess || read[uint32](t, r.body) != 0 {
				t.Errorf("v%d proc %d from %s: denied=%v stat=%d, want SUCCESS with FALSE", tc.vers, tc.proc, from, r.denied, r.stat)
			}
		}
	}
	if got := p.getport(t, progNFS, 3, ipprotoTCP); got != nfsPort {
		t.Errorf("after SET/UNSET, NFS is on %d, want %d", got, nfsPort)
	}
	if got := p.getport(t, 424242, 1, ipprotoUDP); got != 0 {
		t.Errorf("SET registered program 424242 on %d", got)
	}
	// CALLIT (v2 5), BCAST (v3 5), INDIRECT (v4 10), GETTIME, conversions, GETADDRLIST, GETSTAT, past the end.
	for _, tc := range [][2]uint32{{2, 5}, {3, 5}, {4, 5}, {4, 10}, {3, 6}, {3, 7}, {3, 8}, {4, 11}, {4, 12}, {4, 13}, {2, 6}, {2, 9}} {
		r := p.call(t, addrA, tc[0], tc[1], pmapMapping{progNFS, 3, 0, 0}, uint32(0))
		if r.denied || r.stat != acceptProcUnavail {
			t.Errorf("v%d proc %d: denied=%v stat=%d, want PROC_UNAVAIL", tc[0], tc[1], r.denied, r.stat)
		}
	}
	// Versions outside 2-4: PROG_MISMATCH with the range.
	for _, v := range []uint32{1, 5, 0xffffffff} {
		r := p.call(t, addrA, v, 0)
		var rng struct{ Low, High uint32 }
		if r.denied || r.stat != acceptProgMismatch || xdr.Read(r.body, &rng) != nil || rng.Low != 2 || rng.High != 4 {
			t.Errorf("version %d: denied=%v stat=%d range %v, want PROG_MISMATCH 2-4", v, r.denied, r.stat, rng)
		}
	}
	// Another program on the portmapper's port: PROG_UNAVAIL.
	c := dialFrom(t, addrA, p.tcp)
	r, err := c.raw(c.callMsg(progNFS, 3, 0))
	must(t, err)
	if r.denied || r.stat != acceptProgUnavail {
		t.Errorf("NFS NULL on the portmapper: denied=%v stat=%d", r.denied, r.stat)
	}
	// Garbage arguments: GARBAGE_ARGS, and the connection goes on.
	for _, tc := range []struct {
		vers, proc uint32
		args       []byte
	}{
		{2, 3, []byte{0, 1, 0x86, 0xa3}},                                                                               // GETPORT cut short
		{4, 3, []byte{0, 1, 0x86, 0xa3, 0, 0, 0, 3, 0x7f, 0xff, 0xff, 0xff}},                                           // 2 GiB netid
		{3, 3, append(binary.BigEndian.AppendUint32([]byte{0, 1, 0x86, 0xa3, 0, 0, 0, 3}, 256), make([]byte, 260)...)}, // netid over the bound
		{2, 1, nil},
	} {
		c.xid++
		r, err := c.raw(pmapCall(c.xid, tc.vers, tc.proc, rawArgs(tc.args)))
		must(t, err)
		if r.denied || r.stat != acceptGarbageArgs {
			t.Errorf("v%d proc %d with % x: denied=%v stat=%d, want GARBAGE_ARGS", tc.vers, tc.proc, tc.args, r.denied, r.stat)
		}
	}
	c.xid++
	if r, err := c.raw(pmapCall(c.xid, 2, 0)); err != nil || r.stat != acceptSuccess {
		t.Fatalf("NULL after garbage: %v %d", err, r.stat)
	}
	// Wrong RPC version: RPC_MISMATCH.
	msg := pmapCall(c.xid+1, 2, 0)
	binary.BigEndian.PutUint32(msg[12:], 3)
	if r, err := c.raw(msg); err != nil || !r.denied || r.stat != rejectRPCMismatch {
		t.Errorf("rpcvers 3: %v denied=%v stat=%d", err, r.denied, r.stat)
	}
}

// A record over the bound, or a stalled one, closes the connection; the service goes on.
func TestPortmapOversizedRecords(t *testing.T) {
	p := newPortmapFixture(t)
	for name, junk := range map[string][]byte{
		"huge fragment":       {0xff, 0xff, 0xff, 0xff, 1, 2, 3},
		"just over the bound": append([]byte{0x80, 0, 0x08, 0x01}, make([]byte, maxPortmapRecord+1)...),
		"fragments adding up": append(append([]byte{0, 0, 0x04, 0}, make([]byte, 1024)...), append([]byte{0x80, 0, 0x04, 0x01}, make([]byte, 1025)...)...),
	} {
		c := dialFrom(t, addrA, p.tcp)
		_ = c.c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.c.Write(junk)
		_, err := io.ReadAll(c.c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: connection left open", name)
		}
	}
	if got := p.getport(t, progNFS, 3, ipprotoTCP); got != uint32(p.nfs.Port()) {
		t.Fatalf("after oversized records: GETPORT %d", got)
	}
}

// More connections from one address than the bound, or from strangers than theirs: the
// extra ones are closed at once, the others (and the boards) still answered.
func TestPortmapConnectionBound(t *testing.T) {
	p := newPortmapFixture(t)
	var held []*client
	for range maxPortmapConnsPerAddr {
		c := dialFrom(t, addrOther, p.tcp)
		c.xid++
		if r, err := c.raw(pmapCall(c.xid, 2, 0)); err != nil || r.stat != acceptSuccess {
			t.Fatalf("NULL on held connection: %v", err)
		}
		held = append(held, c)
	}
	extra := dialFrom(t, addrOther, p.tcp)
	_ = extra.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := extra.raw(pmapCall(1, 2, 0)); err == nil {
		t.Fatalf("connection %d from one address answered", maxPortmapConnsPerAddr+1)
	}
	if got := p.getport(t, progNFS, 3, ipprotoTCP); got != uint32(p.nfs.Port()) {
		t.Fatalf("another address while one is at its bound: GETPORT %d", got)
	}
	held[0].c.Close()
	// The slot comes back once the server has seen the close.
	for i := 0; ; i++ {
		c := dialFrom(t, addrOther, p.tcp)
		if r, err := c.raw(pmapCall(7, 2, 0)); err == nil && r.stat == acceptSuccess {
			break
		}
		if i == 100 {
			t.Fatal("closed connection's slot never freed")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Addresses outside the fleet share one budget: once it is spent, another stranger is
	// refused, and a board is still answered.
	for n := maxPortmapConnsPerAddr; n < maxStrangerPortmapConns; n++ {
		from := netip.AddrFrom4([4]byte{127, 0, 1, byte(n / maxPortmapConnsPerAddr)})
		c := dialFrom(t, from, p.tcp)
		if r, err := c.raw(pmapCall(8, 2, 0)); err != nil || r.stat != acceptSuccess {
			t.Fatalf("stranger connection %d (from %s) not answered: %v", n+1, from, err)
		}
	}
	stranger := dialFrom(t, netip.MustParseAddr("127.0.2.1"), p.tcp)
	_ = stranger.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := stranger.raw(pmapCall(9, 2, 0)); err == nil {
		t.Fatalf("stranger connection %d answered", maxStrangerPortmapConns+1)
	}
	board := dialFrom(t, addrB, p.tcp)
	if r, err := board.raw(pmapCall(10, 2, 0)); err != nil || r.stat != acceptSuccess {
		t.Fatalf("a board refused while strangers hold their budget: %v", err)
	}
}

// udpCall sends one datagram from `from` and returns the reply (nil if none in 10 s).
func udpCall(t *testing.T, from netip.Addr, to netip.AddrPort, msg []byte) []byte {
	t.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: from.AsSlice()}, net.UDPAddrFromAddrPort(to))
	must(t, err)
	defer c.Close()
	_, err = c.Write(msg)
	must(t, err)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

func TestPortmapUDP(t *testing.T) {
	p := newPortmapFixture(t)
	lo := netip.MustParseAddr("127.0.0.1")
	body := func(rep []byte) *xdrReader {
		t.Helper()
		if rep == nil {
			t.Fatal("no reply")
		}
		r := &xdrReader{b: rep}
		r.u32()
		if r.u32() != rpcReply || r.u32() != msgAccepted {
			t.Fatalf("not an accepted reply: % x", rep)
		}
		r.u32()
		r.opaque(400)
		if st := r.u32(); st != acceptSuccess {
			t.Fatalf("accept_stat %d", st)
		}
		return r
	}
	// GETPORT from anyone: the reply is smaller than the call.
	for _, from := range []netip.Addr{addrA, addrOther} {
		call := pmapCall(1, 2, 3, pmapMapping{progMount, 3, ipprotoTCP, 0})[4:]
		rep := udpCall(t, from, p.udp, call)
		if got := body(rep).u32(); got != uint32(p.mount.Port()) {
			t.Errorf("GETPORT over UDP from %s = %d", from, got)
		}
		if len(rep) > len(call) {
			t.Errorf("GETPORT reply %d bytes for a %d-byte call", len(rep), len(call))
		}
	}
	// GETADDR over UDP looks for UDP registrations: NFS has none; the portmapper has.
	rep := udpCall(t, addrA, p.udp, pmapCall(2, 3, 3, rpcbArgs{progNFS, 3, "udp", "", ""})[4:])
	if got := body(rep).str(64); got != "" {
		t.Errorf("GETADDR NFS over UDP = %q, want none", got)
	}
	rep = udpCall(t, addrA, p.udp, pmapCall(3, 4, 3, rpcbArgs{progPortmap, 4, "udp", "", ""})[4:])
	if got := body(rep).str(64); got != uaddr(lo, p.udp.Port()) {
		t.Errorf("GETADDR portmap over UDP = %q", got)
	}
	// DUMP's reply is larger than its call: a board gets it, a stranger (or a forged
	// victim address) gets nothing.
	dump := pmapCall(4, 2, 4)[4:]
	if rep := udpCall(t, addrA, p.udp, dump); rep == nil || len(rep) <= len(dump) {
		t.Errorf("DUMP over UDP from a board: %d bytes", len(rep))
	}
	// From a stranger, the DUMP, junk, replies, truncated calls and oversized datagrams
	// get nothing, and the service goes on: all are sent from one socket, then a GETPORT;
	// datagrams are answered in order, so the first reply must be the GETPORT's.
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: addrOther.AsSlice()}, net.UDPAddrFromAddrPort(p.udp))
	must(t, err)
	defer c.Close()
	for _, junk := range [][]byte{
		dump,
		{},
		{1, 2, 3},
		{0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0}, // a reply
		pmapCall(5, 2, 3)[4:44],              // a GETPORT cut short: GARBAGE_ARGS is smaller, but see below
		append(pmapCall(5, 2, 0)[4:], make([]byte, maxPortmapRecord)...), // oversized
	} {
		_, err := c.Write(junk)
		must(t, err)
	}
	_, err = c.Write(pmapCall(6, 2, 3, pmapMapping{progNFS, 3, ipprotoTCP, 0})[4:])
	must(t, err)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 65536)
	for {
		n, err := c.Read(buf)
		must(t, err)
		switch xid := binary.BigEndian.Uint32(buf); xid {
		case 5: // the cut GETPORT: an error reply, no larger than its call
			if n > 40 {
				t.Errorf("GARBAGE_ARGS reply of %d bytes for a 40-byte call", n)
			}
			continue
		case 6:
			if got := body(buf[:n]).u32(); got != uint32(p.nfs.Port()) {
				t.Errorf("GETPORT after junk = %d", got)
			}
		default:
			t.Errorf("a stranger got a reply with xid %d (%d bytes)", xid, n)
			continue
		}
		break
	}
}

// rpcinfo (libtirpc) talks to the portmapper on port 111, so the server runs in a network
// namespace of its own: rpcinfo -p dumps it, and rpcinfo -T pings NFS and MOUNT through
// the addresses GETADDR gave (so a wrong universal address fails the test).
func TestPortmapRpcinfo(t *testing.T) {
	f := newFixture(t)
	require.Tool(t, "rpcinfo", "rpcbind")
	pair := netns.NewPair(t, "pfpm", netip.MustParsePrefix("10.79.0.1/24"))
	netns.Run(t, "ip", "-n", pair.Client, "addr", "add", "10.79.0.2/24", "dev", pair.ClientIf)
	var pl, nl, ml net.Listener
	var pu net.PacketConn
	must(t, netns.Do(pair.Server, func() error {
		var err error
		if pl, err = net.Listen("tcp", "10.79.0.1:111"); err != nil {
			return err
		}
		if pu, err = net.ListenPacket("udp", "10.79.0.1:111"); err != nil {
			return err
		}
		if nl, err = net.Listen("tcp", "10.79.0.1:2049"); err != nil {
			return err
		}
		ml, err = net.Listen("tcp", "10.79.0.1:20048")
		return err
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = f.srv.ServeNFS(ctx, nl) }()
	go func() { _ = f.srv.ServeMount(ctx, ml) }()
	go func() { _ = f.srv.ServePortmap(ctx, pl, pu, PortmapOptions{NFS: 2049, Mount: 20048}) }()

	rpcinfo := func(args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", pair.Client, "timeout", "30", "rpcinfo"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := rpcinfo("-p", "10.79.0.1")
	if err != nil {
		t.Fatalf("rpcinfo -p: %v\n%s", err, out)
	}
	t.Logf("rpcinfo -p:\n%s", out)
	for _, want := range []string{
		"100000    4   tcp    111  portmapper", "100000    2   udp    111  portmapper",
		"100003    3   tcp   2049  nfs", "100227    3   tcp   2049  nfs_acl", "100005    3   tcp  20048  mountd",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("rpcinfo -p lacks %q", want)
		}
	}
	if strings.Contains(out, "100003    3   udp") {
		t.Error("rpcinfo -p lists NFS over UDP, which pifleet does not serve")
	}
	// rpcinfo -s: the v3/v4 DUMP.
	out, err = rpcinfo("-s", "10.79.0.1")
	if err != nil || !strings.Contains(out, "100003  3") || !strings.Contains(out, "superuser") {
		t.Errorf("rpcinfo -s: %v\n%s", err, out)
	}
	// -T tcp: GETADDR, then a NULL call to the address it gave.
	for _, prog := range []string{"100000", "100003", "100005"} {
		out, err := rpcinfo("-T", "tcp", "10.79.0.1", prog, map[string]string{"100000": "4", "100003": "3", "100005": "3"}[prog])
		if err != nil || !strings.Contains(out, "ready and waiting") {
			t.Errorf("rpcinfo -T tcp %s: %v\n%s", prog, err, out)
		}
	}
	// -T udp: the portmapper answers over UDP; NFS is not registered there.
	out, err = rpcinfo("-T", "udp", "10.79.0.1", "100000", "2")
	if err != nil || !strings.Contains(out, "ready and waiting") {
		t.Errorf("rpcinfo -T udp portmapper: %v\n%s", err, out)
	}
	out, err = rpcinfo("-T", "udp", "10.79.0.1", "100003", "3")
	if err == nil || strings.Contains(out, "ready and waiting") {
		t.Errorf("rpcinfo -T udp nfs succeeded; NFS is TCP only:\n%s", out)
	}
	// A version the portmapper does not have: rpcinfo reports the range from PROG_MISMATCH.
	out, _ = rpcinfo("-T", "tcp", "10.79.0.1", "100000", "5")
	if !strings.Contains(out, "low version = 2, high version = 4") {
		t.Errorf("rpcinfo -T tcp portmap v5:\n%s", out)
	}
}

// FuzzPortmap feeds arbitrary records to the portmapper's decoder and dispatcher: every
// answer is a well-formed record, small, and nothing is ever registered.
func FuzzPortmap(f *testing.F) {
	for _, m := range [][]byte{
		pmapCall(1, 2, 3, pmapMapping{progNFS, 3, ipprotoTCP, 0}),
		pmapCall(2, 4, 3, rpcbArgs{progMount, 3, "tcp", "", ""}),
		pmapCall(3, 3, 4),
		pmapCall(4, 2, 1, pmapMapping{progNFS, 3, ipprotoTCP, 9}),
		pmapCall(5, 4, 9, rpcbArgs{progNFS, 3, "udp", "1.2.3.4.0.111", "x"}),
		pmapCall(6, 2, 5, pmapMapping{progNFS, 3, 0, 0}, uint32(0)),
	} {
		f.Add(m[4:])
	}
	s := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	p := newPortmapper(s, PortmapOptions{NFS: 2049, Mount: 20048}, 111, 111)
	n := len(p.entries)
	host := netip.MustParseAddr("10.0.0.1")
	f.Fuzz(func(t *testing.T, rec []byte) {
		h, cerr := parseCall(rec)
		if h == nil {
			return
		}
		for _, netid := range []string{"tcp", "udp"} {
			out := p.answer(h, cerr, host, host, netid)
			if m := binary.BigEndian.Uint32(out) & 0x7fffffff; int(m) != len(out)-4 {
				t.Fatalf("record mark %d for %d bytes", m, len(out)-4)
			}
			if len(out) > 1024 {
				t.Fatalf("reply of %d bytes", len(out))
			}
		}
		if len(p.entries) != n {
			t.Fatal("a call changed the registrations")
		}
	})
}
