package dhcp

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
)

// An address belongs to a board only on evidence tied to its MAC (DESIGN.md, Boot):
// the serial in option 97 is typed by the client and proves nothing.

// liveInFile reads a lease file the simple way (last record per MAC wins, nothing
// else) and returns, per address, the MACs holding a live lease on it: what a
// restarted server, or an admin, would find there.
func liveInFile(t *testing.T, path string) map[netip.Addr][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	last := map[string]lease{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l lease
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.MAC != "" {
			last[l.MAC] = l
		}
	}
	out := map[netip.Addr][]string{}
	now := time.Now()
	for mac, l := range last {
		if l.Expires.After(now) {
			out[l.IP] = append(out[l.IP], mac)
		}
	}
	return out
}

// TestFullSerialFromAnotherMAC: a DISCOVER from another MAC carrying a board's serial
// in option 97 does not get the board's fixed IP (nothing without a pool, a pool
// address with one), its REQUEST for it is refused, and the lease file never holds the
// fixed IP for it; the board itself still gets its address.
func TestFullSerialFromAnotherMAC(t *testing.T) {
	for _, pool := range []bool{false, true} {
		t.Run(map[bool]string{false: "no-pool", true: "pool"}[pool], func(t *testing.T) {
			n := newNetns(t)
			board, spoof := mustMAC("dc:a6:32:01:36:c2"), mustMAC("02:66:66:66:66:01")
			fixed := netip.MustParseAddr("198.18.0.10")
			fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: board, Serial: "9ffefdef", IP: fixed}}}
			cfg := fullConfig(t, fleet, pool)
			srv := startServer(t, n, cfg)
			c := newRawClient(t, n)

			disc := pi4Discover(t, 0x71717171, spoof, 0x9ffefdef)
			if pool {
				offer := c.exchange(t, disc)
				if offer == nil || yiaddr(offer) == fixed || yiaddr(offer).Compare(poolStart) < 0 {
					t.Fatalf("spoofing client: offer %v, want a pool address; log:\n%s", offer != nil, srv.logs)
				}
			} else {
				c.expectNone(t, disc)
			}
			spoofReq := pi4Request(0x72727272, spoof, 0x9ffefdef, serverIP, fixed)
			if !pool {
				c.expectNone(t, spoofReq) // not a board, and no pool for others
			} else if nak := c.exchange(t, spoofReq); nak == nil || nak[242] != 6 {
				t.Fatalf("spoofing client's REQUEST for the board's address: want a NAK; log:\n%s", srv.logs)
			}
			if !strings.Contains(srv.logs.String(), "claimed_board=pi-01") {
				t.Errorf("the spoofed serial was not logged:\n%s", srv.logs)
			}
			ack := c.exchange(t, pi4Request(0x73737373, board, 0x9ffefdef, serverIP, fixed))
			if ack == nil || ack[242] != 5 || yiaddr(ack) != fixed {
				t.Fatalf("the board did not get its address; log:\n%s", srv.logs)
			}
			if got := liveInFile(t, cfg.LeaseFile)[fixed]; len(got) != 1 || got[0] != board.String() {
				t.Errorf("lease file holds %v for %v, want only the board's MAC", got, fixed)
			}
		})
	}
}

// TestFullSerialOnlyBoardOneMAC: a board listed only by serial gets its fixed IP on
// the first MAC that leases it; another MAC with the same serial gets neither an
// OFFER nor an ACK for it while that lease lives.
func TestFullSerialOnlyBoardOneMAC(t *testing.T) {
	n := newNetns(t)
	first, second := mustMAC("2c:cf:67:00:00:01"), mustMAC("02:66:66:66:66:02")
	fixed := netip.MustParseAddr("198.18.0.11")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-serial", Serial: "0badcafe", IP: fixed}}}
	cfg := fullConfig(t, fleet, false)
	srv := startServer(t, n, cfg)
	c := newRawClient(t, n)
	if ack := c.exchange(t, pi4Request(0x81818181, first, 0x0badcafe, serverIP, fixed)); ack == nil || ack[242] != 5 {
		t.Fatalf("first MAC: no ACK; log:\n%s", srv.logs)
	}
	c.expectNone(t, pi4Discover(t, 0x82828282, second, 0x0badcafe))
	if nak := c.exchange(t, pi4Request(0x83838383, second, 0x0badcafe, serverIP, fixed)); nak == nil || nak[242] != 6 {
		t.Fatalf("second MAC: want a NAK for the address leased to the first; log:\n%s", srv.logs)
	}
	if got := liveInFile(t, cfg.LeaseFile)[fixed]; len(got) != 1 || got[0] != first.String() {
		t.Errorf("lease file holds %v for %v, want only %v", got, fixed, first)
	}
}

// TestUdhcpcSpoofedSerial: busybox udhcpc on a MAC that is not the board's, sending
// the board's option 97, binds to a pool address, not the board's fixed one.
func TestUdhcpcSpoofedSerial(t *testing.T) {
	busybox := needTool(t, "busybox")
	n := newNetns(t)
	spoof := mustMAC("02:66:66:66:66:03")
	n.SetClientMAC(t, spoof.String())
	fixed := netip.MustParseAddr("198.18.0.30")
	board := mustMAC("dc:a6:32:aa:bb:cc")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: board, Serial: "c0ffee01", IP: fixed}}}
	cfg := fullConfig(t, fleet, true)
	srv := startServer(t, n, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opt97 := hex.EncodeToString(pi4Option97(0xc0ffee01, 0xc03111, board))
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.Client, busybox, "udhcpc",
		"-i", n.ClientIf, "-f", "-q", "-n", "-t", "4", "-T", "1", "-s", "/bin/true", "-r", fixed.String(),
		"-V", piVendorClass, "-x", "0x5d:0000", "-x", "0x61:"+opt97).CombinedOutput()
	if err != nil {
		t.Fatalf("udhcpc: %v\n%s\nserver log:\n%s", err, out, srv.logs)
	}
	leases := liveInFile(t, cfg.LeaseFile)
	if got := leases[fixed]; len(got) != 0 {
		t.Fatalf("the board's fixed address was leased to %v\nudhcpc:\n%s", got, out)
	}
	var mine netip.Addr
	for ip, macs := range leases {
		if len(macs) == 1 && macs[0] == spoof.String() {
			mine = ip
		}
	}
	if mine.Compare(poolStart) < 0 || mine.Compare(poolEnd) > 0 {
		t.Errorf("udhcpc got %v, want a pool address\nudhcpc:\n%s", mine, out)
	}
}

// TestFullFloodOneMACPerAddress: 2,000 DISCOVERs and REQUESTs from random MACs, some
// carrying the boards' serials, some REQUESTing the boards' fixed IPs or pool
// addresses they were never offered, while the real board asks for its own. After:
// the lease file has at most one live lease per address, and each fixed IP only for
// its board's MAC.
func TestFullFloodOneMACPerAddress(t *testing.T) {
	n := newNetns(t)
	board := mustMAC("dc:a6:32:01:36:c2")
	fixed := netip.MustParseAddr("198.18.0.10")
	serialOnlyIP := netip.MustParseAddr("198.18.0.11")
	fleet := &boottest.Fleet{Boards: []*boot.Board{
		{Name: "pi-01", MAC: board, Serial: "9ffefdef", IP: fixed},
		{Name: "pi-serial", Serial: "0badcafe", IP: serialOnlyIP},
	}}
	cfg := fullConfig(t, fleet, true)
	cfg.PoolStart, cfg.PoolEnd = netip.MustParseAddr("198.18.1.100"), netip.MustParseAddr("198.18.1.119")
	cfg.Logger = discardLogger() // 2,000 clients' lines are not what this test reads
	srv := startServer(t, n, cfg)
	c := newRawClient(t, n)

	rng := rand.New(rand.NewPCG(13, 2))
	macs := make([]net.HardwareAddr, 200)
	for i := range macs {
		macs[i] = net.HardwareAddr{0x02, 0xf1, byte(rng.Uint32()), byte(rng.Uint32()), byte(i >> 8), byte(i)}
	}
	poolAddr := func() netip.Addr {
		a := cfg.PoolStart.As4()
		a[3] += byte(rng.IntN(20))
		return netip.AddrFrom4(a)
	}
	for i := range 2000 {
		mac := macs[rng.IntN(len(macs))]
		xid := uint32(0x90000000 + i)
		var pkt []byte
		switch i % 6 {
		case 0:
			pkt = plainDiscover(xid, mac, netip.Addr{})
		case 1:
			pkt = pi4Discover(nil, xid, mac, 0x9ffefdef)
		case 2:
			pkt = pi4Discover(nil, xid, mac, 0x0badcafe)
		case 3:
			pkt = plainRequest(xid, mac, serverIP, poolAddr())
		case 4:
			pkt = pi4Request(xid, mac, 0x9ffefdef, serverIP, fixed)
		case 5:
			pkt = pi4Request(xid, mac, 0x0badcafe, serverIP, serialOnlyIP)
		}
		c.send(t, pkt)
		if i == 1000 {
			if ack := c.exchange(t, pi4Request(0x9fffffff, board, 0x9ffefdef, serverIP, fixed)); ack == nil || ack[242] != 5 {
				t.Errorf("the board got no ACK for its address during the flood")
			}
		}
	}
	// Wait (bounded) for the server to have read everything it will read.
	for prev, i := uint64(0), 0; i < 50; i++ {
		time.Sleep(100 * time.Millisecond)
		st := srv.srv.Stats()
		if got := st.Replied + st.Ignored + st.RateLimited + st.Overflow; got == prev && i > 3 {
			break
		} else {
			prev = got
		}
	}
	srv.stop(t)

	leases := liveInFile(t, cfg.LeaseFile)
	for ip, holders := range leases {
		if len(holders) > 1 {
			t.Errorf("%v is leased to %d MACs: %v", ip, len(holders), holders)
		}
	}
	if got := leases[fixed]; len(got) != 1 || got[0] != board.String() {
		t.Errorf("fixed %v leased to %v, want only the board %v", fixed, got, board)
	}
	if len(leases) < 2 {
		t.Errorf("only %d live leases after the flood: the test did not exercise the pool", len(leases))
	}
	t.Logf("%d addresses leased; stats %+v", len(leases), srv.srv.Stats())
}

// TestLeaseStoreOneMACPerAddress: the lease store refuses to lease an address another
// MAC holds (whatever the caller checked before), lets a board's own MAC take its
// fixed IP over (ending the other lease on disk in the same batch), and repairs a
// file that holds two live leases for one address.
func TestLeaseStoreOneMACPerAddress(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.jsonl")
	now := time.Now()
	tab, err := openLeases(path, now)
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("10.9.0.5")
	a, b := "02:00:00:00:00:0a", "02:00:00:00:00:0b"
	if err := bindWait(tab, lease{MAC: a, IP: ip, Expires: now.Add(time.Hour)}, now); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tab.bind(lease{MAC: b, IP: ip, Expires: now.Add(time.Hour)}, now, false); err != errTaken {
		t.Fatalf("second MAC on a leased address: err %v, want errTaken", err)
	}
	tab.mu.Lock()
	tab.reserve("02:00:00:00:00:0c", false, netip.MustParseAddr("10.9.0.6"), now)
	tab.mu.Unlock()
	if _, _, err := tab.bind(lease{MAC: b, IP: netip.MustParseAddr("10.9.0.6"), Expires: now.Add(time.Hour)}, now, false); err != errTaken {
		t.Fatalf("lease of an address offered to another MAC: err %v, want errTaken", err)
	}
	batch, ended, err := tab.bind(lease{MAC: b, IP: ip, Expires: now.Add(time.Hour)}, now, true)
	if err != nil || ended != a {
		t.Fatalf("takeover: ended %q err %v, want %s ended", ended, err, a)
	}
	if err := tab.log.wait(batch); err != nil {
		t.Fatal(err)
	}
	if got := liveInFile(t, path)[ip]; len(got) != 1 || got[0] != b {
		t.Errorf("after takeover the file holds %v for %v, want only %s", got, ip, b)
	}
	tab.close()

	// A file written before the invariant held: two live leases for one address.
	two := `{"mac":"02:00:00:00:00:01","ip":"10.9.0.7","expires":"` + now.Add(time.Hour).Format(time.RFC3339) + `"}
{"mac":"02:00:00:00:00:02","ip":"10.9.0.7","expires":"` + now.Add(time.Hour).Format(time.RFC3339) + `"}
`
	if err := os.WriteFile(path, []byte(two), 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := openLeases(path, now)
	if err != nil {
		t.Fatal(err)
	}
	defer again.close()
	if got := liveInFile(t, path)[netip.MustParseAddr("10.9.0.7")]; len(got) != 1 || got[0] != "02:00:00:00:00:02" {
		t.Errorf("after load the file holds %v for 10.9.0.7, want only the later record's MAC", got)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestProxySerialFromAnotherMAC: in proxy mode too, a Pi whose option 97 carries the
// serial of a board listed with another MAC is not that board: no boot options.
func TestProxySerialFromAnotherMAC(t *testing.T) {
	n := newNetns(t)
	board, spoof := mustMAC("dc:a6:32:01:36:c2"), mustMAC("02:66:66:66:66:05")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: board, Serial: "9ffefdef"}}}
	srv := startServer(t, n, Config{Mode: ModeProxy, Fleet: fleet})
	c := newRawClient(t, n)
	c.expectNone(t, pi4Discover(t, 0x75757575, spoof, 0x9ffefdef))
	if reply := c.exchange(t, pi4Discover(t, 0x76767676, board, 0x9ffefdef)); reply == nil {
		t.Fatalf("no OFFER to the board itself; log:\n%s", srv.logs)
	}
	for _, e := range srv.cfg.Events.LastBoot("pi-01") {
		if e.MAC != board.String() {
			t.Errorf("the spoofing MAC is on the board's timeline: %+v", e)
		}
	}
}
