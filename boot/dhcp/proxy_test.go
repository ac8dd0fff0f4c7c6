package dhcp

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
)

// checkProxyPiReply asserts what PI-BOOT.md asks of a reply to a Pi: option 43 in
// dnsmasq's form with menu, 54/66/siaddr = us, no pad, and, for a proxy reply, no
// address or lease options.
func checkProxyPiReply(t *testing.T, pkt []byte, wantType byte, menu string, wantOpt97 []byte) {
	t.Helper()
	order, opts, _ := wireOptions(t, pkt)
	if order[0] != 53 || !bytes.Equal(opts[53], []byte{wantType}) {
		t.Errorf("message type: order %v, 53=%v, want %d first", order, opts[53], wantType)
	}
	if got := netip.AddrFrom4([4]byte(opts[54])); got != serverIP {
		t.Errorf("option 54 = %v, want %v", got, serverIP)
	}
	if got := string(opts[66]); got != serverIP.String() {
		t.Errorf("option 66 = %q, want %q", got, serverIP)
	}
	if got := siaddr(pkt); got != serverIP {
		t.Errorf("siaddr = %v, want %v", got, serverIP)
	}
	if !bytes.Equal(opts[43], dnsmasqOption43(menu)) {
		t.Errorf("option 43 = %q, want menu %q in dnsmasq form", opts[43], menu)
	}
	if string(opts[60]) != "PXEClient" {
		t.Errorf("option 60 = %q, want PXEClient", opts[60])
	}
	if wantOpt97 != nil && !bytes.Equal(opts[97], wantOpt97) {
		t.Errorf("option 97 not echoed: % x", opts[97])
	}
	if y := yiaddr(pkt); y.IsValid() && !y.IsUnspecified() {
		t.Errorf("proxy reply carries yiaddr %v", y)
	}
	for _, code := range []byte{1, 3, 6, 51, 58, 59} {
		if _, ok := opts[code]; ok {
			t.Errorf("proxy reply carries option %d", code)
		}
	}
}

// dnsmasqOption43 is what dnsmasq sends for pxe-service=0,"<menu>", written out here
// independently of piOption43.
func dnsmasqOption43(menu string) []byte {
	b := []byte{6, 1, 3, 10, 4, 0, 'P', 'X', 'E', 9, byte(len(menu) + 3), 0, 0, byte(len(menu))}
	return append(append(b, menu...), 0xff)
}

func TestProxyPi4(t *testing.T) {
	n := newNetns(t)
	mac := mustMAC("dc:a6:32:01:36:c2")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: mac, Serial: "9ffefdef"}}}
	srv := startServer(t, n, Config{Mode: ModeProxy, Fleet: fleet})
	c := newRawClient(t, n)

	disc := pi4Discover(t, 0x11223344, mac, 0x9ffefdef)
	reply := c.exchange(t, disc)
	if reply == nil {
		t.Fatalf("no OFFER to a Pi 4 in the fleet; log:\n%s", srv.logs)
	}
	checkProxyPiReply(t, reply, 2, "Raspberry Pi Boot", disc[len(disc)-18:len(disc)-1])

	// The Pi REQUESTs the router's address: not ours to answer, but on the timeline.
	router := netip.MustParseAddr("198.18.0.254")
	c.expectNone(t, pi4Request(0x11223344, mac, 0x9ffefdef, router, netip.MustParseAddr("198.18.0.50")))

	// A REQUEST to us without option 60 (early EEPROMs) still gets the boot options.
	ack := c.exchange(t, pi4Request(0x11223345, mac, 0x9ffefdef, serverIP, netip.Addr{}))
	if ack == nil {
		t.Fatalf("no ACK to a REQUEST addressed to us without option 60")
	}
	checkProxyPiReply(t, ack, 5, "Raspberry Pi Boot", nil)

	var whats []string
	for _, e := range srv.cfg.Events.LastBoot("pi-01") {
		if e.Stage != boot.StageDHCP || e.MAC != mac.String() || e.Serial != "9ffefdef" {
			t.Errorf("event %+v: want stage dhcp, mac and serial", e)
		}
		whats = append(whats, e.What)
	}
	if got := strings.Join(whats, ","); got != "discover,offer,request,request,ack" {
		t.Errorf("timeline %s, want discover,offer,request,request,ack", got)
	}
	want := []RequestCount{{"discover", "offer", 1}, {"request", "ack", 1}, {"request", "none", 1}}
	if got := srv.srv.RequestCounts(); !slices.Equal(got, want) {
		t.Errorf("RequestCounts = %v, want %v", got, want)
	}
	for _, line := range strings.Split(strings.TrimSpace(srv.logs.String()), "\n") {
		if strings.Contains(line, "msg=\"dhcp ") && (!strings.Contains(line, "board=pi-01") ||
			!strings.Contains(line, "mac="+mac.String()) || !strings.Contains(line, "serial=9ffefdef")) {
			t.Errorf("log line without board, mac and serial: %s", line)
		}
	}
}

// TestProxyPiBySerialAndUnknown: a Pi listed only by serial is answered; a Pi not in
// the fleet is not, is logged once however often it asks, and is listed with the
// serial and model from its option 97.
func TestProxyPiBySerialAndUnknown(t *testing.T) {
	n := newNetns(t)
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-serial-only", Serial: "0badcafe"}}}
	srv := startServer(t, n, Config{Mode: ModeProxy, Fleet: fleet})
	c := newRawClient(t, n)

	known := mustMAC("2c:cf:67:00:00:01")
	reply := c.exchange(t, pi4Discover(t, 0x01010101, known, 0x0badcafe))
	if reply == nil {
		t.Fatalf("no OFFER to a Pi known only by serial; log:\n%s", srv.logs)
	}
	checkProxyPiReply(t, reply, 2, "Raspberry Pi Boot", nil)

	stranger := mustMAC("d8:3a:dd:00:00:02")
	for i := range 3 {
		c.expectNone(t, pi4Discover(t, 0x02020200+uint32(i), stranger, 0x5eed5eed))
	}
	if got := strings.Count(srv.logs.String(), "client not in fleet"); got != 1 {
		t.Errorf("unknown client logged %d times, want once:\n%s", got, srv.logs)
	}
	var found bool
	for _, u := range srv.cfg.Events.Unknowns() {
		if u.MAC == stranger.String() {
			found = true
			if u.Serial != "5eed5eed" || u.Model != "Raspberry Pi 4 Model B" || u.Count != 3 {
				t.Errorf("unknown entry %+v: want serial 5eed5eed, model Raspberry Pi 4 Model B, count 3", u)
			}
		}
	}
	if !found {
		t.Errorf("unknown Pi not listed: %+v", srv.cfg.Events.Unknowns())
	}
}

// TestProxyPi3ROM: the Pi 3B ROM gets the padded menu string.
func TestProxyPi3ROM(t *testing.T) {
	n := newNetns(t)
	mac := mustMAC("b8:27:eb:12:34:56")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi3", MAC: mac, Serial: "12345678"}}}
	srv := startServer(t, n, Config{Mode: ModeProxy, Fleet: fleet})
	c := newRawClient(t, n)
	reply := c.exchange(t, pi3ROMDiscover(mac))
	if reply == nil {
		t.Fatalf("no OFFER to the Pi 3 ROM; log:\n%s", srv.logs)
	}
	checkProxyPiReply(t, reply, 2, "Raspberry Pi Boot   ", nil)
}

// TestProxyIgnoresNonBootClients: a board's own OS (no PXE options), an unknown PC and,
// by default, a U-Boot/PXE board are left to the router (U-Boot takes the first OFFER
// and would take our address-less one); a Pi in the fleet is still answered.
func TestProxyIgnoresNonBootClients(t *testing.T) {
	n := newNetns(t)
	board := mustMAC("02:00:00:00:00:10")
	uboot := mustMAC("52:54:00:12:34:56")
	pi := mustMAC("dc:a6:32:01:36:c2")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-os", MAC: board}, {Name: "arm64", MAC: uboot},
		{Name: "pi-01", MAC: pi, Serial: "9ffefdef"}}}
	srv := startServer(t, n, Config{Mode: ModeProxy, Fleet: fleet})
	c := newRawClient(t, n)
	c.expectNone(t, plainDiscover(0x0a0a0a0a, board, netip.Addr{}))
	c.expectNone(t, plainDiscover(0x0b0b0b0b, mustMAC("02:00:00:00:00:99"), netip.Addr{}))
	if len(srv.cfg.Events.Unknowns()) != 0 {
		t.Errorf("an ordinary LAN client was listed as an unknown board: %+v", srv.cfg.Events.Unknowns())
	}
	c.expectNone(t, ubootDiscover(0x0c0c0c0c, uboot))
	c.expectNone(t, ubootDiscover(0x0c0c0c0d, uboot))
	if got := strings.Count(srv.logs.String(), "proxy_pxe: true"); got != 1 {
		t.Errorf("proxy-mode U-Boot warning logged %d times, want once:\n%s", got, srv.logs)
	}
	if reply := c.exchange(t, pi4Discover(t, 0x0c0c0c0e, pi, 0x9ffefdef)); reply == nil {
		t.Fatalf("no OFFER to a Pi in proxy mode; log:\n%s", srv.logs)
	}
	if reply := c.exchange(t, pi3ROMDiscover(pi)); reply == nil {
		t.Fatalf("no OFFER to a Pi 3 ROM in proxy mode; log:\n%s", srv.logs)
	}
}

// TestProxyPXEOption: with ProxyPXE (server.dhcp.proxy_pxe) a U-Boot board gets
// bootfile and next-server in proxy mode, for U-Boot builds that merge proxy offers.
func TestProxyPXEOption(t *testing.T) {
	n := newNetns(t)
	uboot := mustMAC("52:54:00:12:34:56")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "arm64", MAC: uboot}}}
	srv := startServer(t, n, Config{Mode: ModeProxy, Fleet: fleet, ProxyPXE: true})
	c := newRawClient(t, n)
	reply := c.exchange(t, ubootDiscover(0x0c0c0c0c, uboot))
	if reply == nil {
		t.Fatalf("no OFFER to a U-Boot board with ProxyPXE; log:\n%s", srv.logs)
	}
	_, opts, _ := wireOptions(t, reply)
	if file := string(bytes.TrimRight(reply[108:236], "\x00")); file != ubootScript || string(opts[67]) != ubootScript {
		t.Errorf("U-Boot bootfile: file %q, option 67 %q, want %q", file, opts[67], ubootScript)
	}
	if siaddr(reply) != serverIP || yiaddr(reply) != netip.IPv4Unspecified() {
		t.Errorf("U-Boot proxy reply: siaddr %v yiaddr %v", siaddr(reply), yiaddr(reply))
	}
}
