package dhcp

import (
	"bytes"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
)

// These drive Server.handle with packets directly: the same code path as the socket,
// without one, so they run everywhere (also unprivileged) and fast enough to fuzz.

func handlerServers(t testing.TB) []*Server {
	t.Helper()
	fleet := &boottest.Fleet{Boards: []*boot.Board{
		{Name: "pi-01", MAC: mustMAC("dc:a6:32:01:36:c2"), Serial: "9ffefdef", IP: netip.MustParseAddr("198.18.0.10")},
		{Name: "pi-serial", Serial: "0badcafe"},
		{Name: "arm64", MAC: mustMAC("52:54:00:12:34:56")},
	}}
	proxy, err := New(Config{Mode: ModeProxy, ServerIP: serverIP, Fleet: fleet})
	if err != nil {
		t.Fatal(err)
	}
	full, err := New(Config{Mode: ModeFull, ServerIP: serverIP, Subnet: testNet, Fleet: fleet,
		PoolStart: poolStart, PoolEnd: poolEnd, LeaseFile: filepath.Join(t.TempDir(), "leases")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { full.leases.close() })
	return []*Server{proxy, full}
}

// FuzzHandle: any packet in gives a well-formed reply or nothing, never a panic. The
// seed corpus (real Pi, U-Boot and plain packets, and broken ones) runs as a test.
func FuzzHandle(f *testing.F) {
	pi := mustMAC("dc:a6:32:01:36:c2")
	f.Add(pi4Discover(nil, 1, pi, 0x9ffefdef))
	f.Add(pi4Request(1, pi, 0x9ffefdef, serverIP, netip.MustParseAddr("198.18.0.10")))
	f.Add(pi4Discover(nil, 2, mustMAC("2c:cf:67:00:00:01"), 0x0badcafe))
	f.Add(pi3ROMDiscover(mustMAC("b8:27:eb:12:34:56")))
	f.Add(ubootDiscover(3, mustMAC("52:54:00:12:34:56")))
	f.Add(plainDiscover(4, mustMAC("02:00:00:00:00:01"), poolStart))
	f.Add(plainRequest(4, mustMAC("02:00:00:00:00:01"), serverIP, poolStart))
	f.Add(release(5, mustMAC("02:00:00:00:00:01"), serverIP, poolStart))
	f.Add(rawPacket(6, pi, netip.Addr{}, opt(53, 8)))                     // INFORM
	f.Add(rawPacket(7, pi, netip.Addr{}, opt(53, 1), []byte{97, 200, 0})) // option overruns
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 300))
	reply := pi4Discover(nil, 8, pi, 1)
	reply[0] = 2 // our own BOOTREPLY coming back
	f.Add(reply)
	servers := handlerServers(f)
	f.Fuzz(func(t *testing.T, pkt []byte) {
		for _, s := range servers {
			// Fresh per-MAC state: the fuzzer keeps MACs, and the rate limit would
			// otherwise hide the handlers from it.
			s.clients = newClientTable()
			out, dst := s.handle(pkt, time.Now())
			if out == nil {
				continue
			}
			req, err := dhcpv4.FromBytes(pkt)
			if err != nil {
				t.Fatalf("replied to an unparsable packet")
			}
			wireOptions(t, out)
			m, err := dhcpv4.FromBytes(out)
			if err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
			if m.OpCode != dhcpv4.OpcodeBootReply || m.TransactionID != req.TransactionID ||
				!bytes.Equal(m.ClientHWAddr, req.ClientHWAddr) || !dst.IsValid() {
				t.Fatalf("reply %v to %v", m, dst)
			}
			if s.cfg.Mode == ModeProxy && !m.YourIPAddr.IsUnspecified() {
				t.Fatalf("proxy reply with yiaddr %v", m.YourIPAddr)
			}
			if sid := m.ServerIdentifier(); !sid.Equal(serverIP.AsSlice()) {
				t.Fatalf("option 54 = %v", sid)
			}
		}
	})
}

// TestRateLimitPerMAC: a flood from one MAC is cut to the burst, other MACs are
// unaffected, and the bucket refills with time.
func TestRateLimitPerMAC(t *testing.T) {
	s := handlerServers(t)[0]
	pi := mustMAC("dc:a6:32:01:36:c2")
	now := time.Now()
	answered := 0
	for i := range 200 {
		if out, _ := s.handle(pi4Discover(nil, uint32(i), pi, 0x9ffefdef), now); out != nil {
			answered++
		}
	}
	if answered != rateBurst || s.Stats().RateLimited != 200-rateBurst {
		t.Errorf("flood: %d answered, %d limited; want %d answered", answered, s.Stats().RateLimited, rateBurst)
	}
	if out, _ := s.handle(pi4Discover(nil, 999, mustMAC("2c:cf:67:00:00:01"), 0x0badcafe), now); out == nil {
		t.Errorf("another MAC was limited by the flood")
	}
	if out, _ := s.handle(pi4Discover(nil, 1000, pi, 0x9ffefdef), now.Add(time.Second)); out == nil {
		t.Errorf("bucket did not refill after a second")
	}
}

// TestDestination: RFC 2131 section 4.1 reply addressing.
func TestDestination(t *testing.T) {
	s := handlerServers(t)[1]
	pi := mustMAC("dc:a6:32:01:36:c2")
	bcast := netip.MustParseAddrPort("255.255.255.255:68")
	if _, dst := s.handle(pi4Discover(nil, 1, pi, 0x9ffefdef), time.Now()); dst != bcast {
		t.Errorf("DISCOVER without address: reply to %v, want %v", dst, bcast)
	}
	relayed := pi4Discover(nil, 2, pi, 0x9ffefdef)
	copy(relayed[24:28], []byte{198, 18, 5, 1})
	if _, dst := s.handle(relayed, time.Now()); dst != netip.MustParseAddrPort("198.18.5.1:67") {
		t.Errorf("relayed DISCOVER: reply to %v, want the relay on port 67", dst)
	}
	renew := rawPacket(3, pi, netip.MustParseAddr("198.18.0.10"), opt(53, 3))
	out, dst := s.handle(renew, time.Now())
	if out == nil || dst != netip.MustParseAddrPort("198.18.0.10:68") || out[242] != 5 {
		t.Errorf("RENEWING: reply %v to %v, want an ACK unicast to ciaddr", out != nil, dst)
	}
}
