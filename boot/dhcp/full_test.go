package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
)

var (
	testRouter = netip.MustParseAddr("198.18.0.254")
	testDNS    = netip.MustParseAddr("198.18.0.253")
	poolStart  = netip.MustParseAddr("198.18.1.100")
	poolEnd    = netip.MustParseAddr("198.18.1.102")
)

func fullConfig(t *testing.T, fleet boot.Fleet, pool bool) Config {
	cfg := Config{
		Mode: ModeFull, Fleet: fleet, Router: testRouter, DNS: []netip.Addr{testDNS},
		LeaseTime: 10 * time.Minute, LeaseFile: filepath.Join(t.TempDir(), "leases.jsonl"),
	}
	if pool {
		cfg.PoolStart, cfg.PoolEnd = poolStart, poolEnd
	}
	return cfg
}

// leaseFileHas reports whether the lease file on disk holds a live record mac -> ip
// (read back the way a restarted server reads it).
func leaseFileHas(t *testing.T, path string, mac net.HardwareAddr, ip netip.Addr) bool {
	t.Helper()
	tab := &leaseTable{byMAC: map[string]*lease{}, byIP: map[netip.Addr]string{}}
	if _, err := tab.load(path, time.Now()); err != nil {
		t.Fatal(err)
	}
	l := tab.byMAC[mac.String()]
	return l != nil && l.IP == ip
}

func TestFullPi4FixedAddress(t *testing.T) {
	n := newNetns(t)
	mac := mustMAC("dc:a6:32:01:36:c2")
	fixed := netip.MustParseAddr("198.18.0.10")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: mac, Serial: "9ffefdef", IP: fixed}}}
	cfg := fullConfig(t, fleet, false)
	srv := startServer(t, n, cfg)
	c := newRawClient(t, n)

	offer := c.exchange(t, pi4Discover(t, 0x31313131, mac, 0x9ffefdef))
	if offer == nil {
		t.Fatalf("no OFFER; log:\n%s", srv.logs)
	}
	order, opts, _ := wireOptions(t, offer)
	if order[0] != 53 || opts[53][0] != 2 || yiaddr(offer) != fixed {
		t.Fatalf("OFFER: type %v yiaddr %v, want OFFER of %v", opts[53], yiaddr(offer), fixed)
	}
	if !bytes.Equal(opts[1], []byte{255, 254, 0, 0}) || netip.AddrFrom4([4]byte(opts[3])) != testRouter ||
		netip.AddrFrom4([4]byte(opts[6])) != testDNS || !bytes.Equal(opts[51], []byte{0, 0, 2, 0x58}) {
		t.Errorf("network options: mask % x router % x dns % x lease % x", opts[1], opts[3], opts[6], opts[51])
	}
	if !bytes.Equal(opts[43], dnsmasqOption43("Raspberry Pi Boot")) || siaddr(offer) != serverIP || string(opts[66]) != serverIP.String() {
		t.Errorf("boot options missing in the full-mode OFFER: 43=%q siaddr=%v 66=%q", opts[43], siaddr(offer), opts[66])
	}
	if string(opts[12]) != "pi-01" {
		t.Errorf("host name option = %q, want pi-01", opts[12])
	}
	if leaseFileHas(t, cfg.LeaseFile, mac, fixed) {
		t.Errorf("an OFFER was persisted as a lease")
	}

	// REQUEST without option 60, as early EEPROMs send it.
	ack := c.exchange(t, pi4Request(0x31313131, mac, 0x9ffefdef, serverIP, fixed))
	if ack == nil {
		t.Fatalf("no ACK; log:\n%s", srv.logs)
	}
	_, opts, _ = wireOptions(t, ack)
	if opts[53][0] != 5 || yiaddr(ack) != fixed || !bytes.Equal(opts[43], dnsmasqOption43("Raspberry Pi Boot")) {
		t.Errorf("ACK: type %v yiaddr %v 43 %q", opts[53], yiaddr(ack), opts[43])
	}
	if !leaseFileHas(t, cfg.LeaseFile, mac, fixed) {
		t.Errorf("ACKed lease not in the lease file")
	}

	// Asking for another address gets a NAK.
	nak := c.exchange(t, pi4Request(0x32323232, mac, 0x9ffefdef, serverIP, netip.MustParseAddr("198.18.0.77")))
	if nak == nil {
		t.Fatalf("no NAK for a wrong address")
	}
	if _, opts, _ = wireOptions(t, nak); opts[53][0] != 6 {
		t.Errorf("reply to a wrong address: type %v, want NAK", opts[53])
	}

	var whats []string
	for _, e := range srv.cfg.Events.LastBoot("pi-01") {
		whats = append(whats, e.What)
		if e.What == "ack" && e.Client != fixed {
			t.Errorf("ack event client %v, want %v", e.Client, fixed)
		}
	}
	if got := strings.Join(whats, ","); got != "discover,offer,request,ack,request,nak" {
		t.Errorf("timeline %s", got)
	}
}

// TestFullPi3ROMLeaseAtOffer: the Pi 3 ROM never REQUESTs, so its OFFER is its lease
// and is on disk by the time the OFFER arrives.
func TestFullPi3ROMLeaseAtOffer(t *testing.T) {
	n := newNetns(t)
	mac := mustMAC("b8:27:eb:12:34:56")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi3"}}}
	fleet.Boards[0].MAC = mac
	cfg := fullConfig(t, fleet, true)
	srv := startServer(t, n, cfg)
	c := newRawClient(t, n)
	offer := c.exchange(t, pi3ROMDiscover(mac))
	if offer == nil {
		t.Fatalf("no OFFER; log:\n%s", srv.logs)
	}
	_, opts, _ := wireOptions(t, offer)
	ip := yiaddr(offer)
	if ip.Compare(poolStart) < 0 || ip.Compare(poolEnd) > 0 || !bytes.Equal(opts[43], dnsmasqOption43("Raspberry Pi Boot   ")) {
		t.Errorf("Pi 3 ROM OFFER: yiaddr %v, 43 %q", ip, opts[43])
	}
	if !leaseFileHas(t, cfg.LeaseFile, mac, ip) {
		t.Errorf("Pi 3 ROM offer not persisted before it was sent")
	}
	// The lease is the evidence that ties the address to the board (boot.Leases).
	if got, ok := srv.srv.LeaseHolder(ip); !ok || got.String() != mac.String() {
		t.Errorf("LeaseHolder(%v) = %v, %v; want the Pi 3's MAC", ip, got, ok)
	}
}

// TestFullPoolPersistsAcrossRestart: pool leases survive a restart, a new client
// gets another address, and a RELEASE frees the address on disk too.
func TestFullPoolPersistsAcrossRestart(t *testing.T) {
	n := newNetns(t)
	cfg := fullConfig(t, &boottest.Fleet{}, true)
	a, b := mustMAC("02:00:00:00:0a:01"), mustMAC("02:00:00:00:0b:02")

	srv := startServer(t, n, cfg)
	c := newRawClient(t, n)
	offer := c.exchange(t, plainDiscover(0x41414141, a, netip.Addr{}))
	if offer == nil {
		t.Fatalf("no OFFER from the pool; log:\n%s", srv.logs)
	}
	ipA := yiaddr(offer)
	if ack := c.exchange(t, plainRequest(0x41414141, a, serverIP, ipA)); ack == nil || ack[242] != 5 {
		t.Fatalf("no ACK for %v; log:\n%s", ipA, srv.logs)
	}
	if got, ok := srv.srv.LeaseHolder(ipA); !ok || got.String() != a.String() {
		t.Errorf("LeaseHolder(%v) = %v, %v; want %v", ipA, got, ok, a)
	}
	if got := srv.cfg.Events.Unknowns(); len(got) != 1 || got[0].MAC != a.String() || len(got[0].Via) != 1 || got[0].Via[0] != "dhcp" {
		t.Errorf("pool client not listed as seen, not in fleet: %+v", got)
	}
	srv.stop(t)

	srv = startServer(t, n, Config{Mode: cfg.Mode, Fleet: cfg.Fleet, LeaseFile: cfg.LeaseFile,
		PoolStart: cfg.PoolStart, PoolEnd: cfg.PoolEnd, LeaseTime: cfg.LeaseTime})
	// b asks for a's address: it is taken, so b gets another one.
	offerB := c.exchange(t, plainDiscover(0x42424242, b, ipA))
	if offerB == nil || yiaddr(offerB) == ipA {
		t.Fatalf("after restart, b was offered a's leased address (or nothing): %v", offerB != nil)
	}
	// a, without asking, gets its address back.
	if again := c.exchange(t, plainDiscover(0x43434343, a, netip.Addr{})); again == nil || yiaddr(again) != ipA {
		t.Fatalf("after restart, a did not get its lease %v back", ipA)
	}
	// b REQUESTing a's address (INIT-REBOOT style, no server id) is refused.
	if nak := c.exchange(t, pi4Request(0x44444444, b, 1, netip.Addr{}, ipA)); nak == nil || nak[242] != 6 {
		t.Fatalf("no NAK when b requests a's address")
	}

	c.send(t, release(0x45454545, a, serverIP, ipA))
	for range 50 {
		if !leaseFileHas(t, cfg.LeaseFile, a, ipA) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if leaseFileHas(t, cfg.LeaseFile, a, ipA) {
		t.Errorf("released lease still in the lease file")
	}
	for _, l := range srv.srv.Leases() {
		if l.MAC == a.String() {
			t.Errorf("released lease still live: %+v", l)
		}
	}
	if got, ok := srv.srv.LeaseHolder(ipA); ok {
		t.Errorf("LeaseHolder of a released address: %v", got)
	}
}

func TestFullUnknownWithoutPoolIgnored(t *testing.T) {
	n := newNetns(t)
	cfg := fullConfig(t, &boottest.Fleet{}, false)
	srv := startServer(t, n, cfg)
	c := newRawClient(t, n)
	c.expectNone(t, plainDiscover(0x51515151, mustMAC("02:00:00:00:05:01"), netip.Addr{}))
	if got := srv.cfg.Events.Unknowns(); len(got) != 1 {
		t.Errorf("unknown client in full mode not listed: %+v", got)
	}
}

// TestFullUBoot: a U-Boot board in full mode gets its address, next-server and the
// boot script name, which is all its distro boot needs.
func TestFullUBoot(t *testing.T) {
	n := newNetns(t)
	mac := mustMAC("52:54:00:12:34:56")
	fixed := netip.MustParseAddr("198.18.0.20")
	cfg := fullConfig(t, &boottest.Fleet{Boards: []*boot.Board{{Name: "arm64", MAC: mac, IP: fixed}}}, false)
	srv := startServer(t, n, cfg)
	c := newRawClient(t, n)
	offer := c.exchange(t, ubootDiscover(0x61616161, mac))
	if offer == nil {
		t.Fatalf("no OFFER; log:\n%s", srv.logs)
	}
	_, opts, _ := wireOptions(t, offer)
	file := string(bytes.TrimRight(offer[108:236], "\x00"))
	if yiaddr(offer) != fixed || siaddr(offer) != serverIP || file != ubootScript || string(opts[67]) != ubootScript {
		t.Errorf("U-Boot OFFER: yiaddr %v siaddr %v file %q 67 %q", yiaddr(offer), siaddr(offer), file, opts[67])
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	f := &boottest.Fleet{}
	for name, cfg := range map[string]Config{
		"off":             {Mode: ModeOff, ServerIP: serverIP, Fleet: f},
		"no server ip":    {Mode: ModeProxy, Fleet: f},
		"no fleet":        {ServerIP: serverIP},
		"full no subnet":  {Mode: ModeFull, ServerIP: serverIP, Fleet: f, LeaseFile: filepath.Join(dir, "l")},
		"full no file":    {Mode: ModeFull, ServerIP: serverIP, Subnet: testNet, Fleet: f},
		"pool outside":    {Mode: ModeFull, ServerIP: serverIP, Subnet: testNet, Fleet: f, LeaseFile: filepath.Join(dir, "l"), PoolStart: netip.MustParseAddr("10.0.0.1"), PoolEnd: netip.MustParseAddr("10.0.0.9")},
		"pool reversed":   {Mode: ModeFull, ServerIP: serverIP, Subnet: testNet, Fleet: f, LeaseFile: filepath.Join(dir, "l"), PoolStart: poolEnd, PoolEnd: poolStart},
		"server off-link": {Mode: ModeFull, ServerIP: netip.MustParseAddr("10.0.0.1"), Subnet: testNet, Fleet: f, LeaseFile: filepath.Join(dir, "l")},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "l")); err == nil {
		t.Errorf("a rejected config created the lease file")
	}
}
