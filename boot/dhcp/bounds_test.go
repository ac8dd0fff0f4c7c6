package dhcp

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
	"github.com/pifleet/pifleet/test/netns"
)

// Every resource an outsider can consume is bounded, and fleet boards are answered
// first (DESIGN.md, Trust and limits).

// newHandlerServer builds a server for driving handle directly, logging into logs.
func newHandlerServer(t *testing.T, cfg Config, logs *netns.LogBuffer) *Server {
	t.Helper()
	cfg.ServerIP, cfg.Subnet = serverIP, testNet
	if cfg.Mode == ModeFull && cfg.LeaseFile == "" {
		cfg.LeaseFile = filepath.Join(t.TempDir(), "leases")
	}
	if logs != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.leases != nil {
		t.Cleanup(func() { s.leases.close() })
	}
	return s
}

// randomMAC is the i-th made-up, locally administered MAC of a flood.
func randomMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0xfe, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
}

// TestFloodDoesNotCrowdOutBoards: 20,000 DISCOVERs from made-up MACs (more than the
// table of unknown clients holds) at one instant, then a board's DISCOVER at the same
// instant: the board is answered, in both modes, and the unknown table stays bounded.
func TestFloodDoesNotCrowdOutBoards(t *testing.T) {
	pi := mustMAC("dc:a6:32:01:36:c2")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: pi, Serial: "9ffefdef",
		IP: netip.MustParseAddr("198.18.0.10")}}}
	for _, mode := range []Mode{ModeProxy, ModeFull} {
		t.Run(string(mode), func(t *testing.T) {
			s := newHandlerServer(t, Config{Mode: mode, Fleet: fleet, PoolStart: poolStart, PoolEnd: poolEnd}, nil)
			now := time.Now()
			for i := range 20000 {
				s.handle(pi4Discover(nil, uint32(i), randomMAC(i), uint32(i)), now)
			}
			if out, _ := s.handle(pi4Discover(nil, 0xb0a7d, pi, 0x9ffefdef), now); out == nil {
				t.Fatalf("board not answered after a flood of 20,000 MACs; stats %+v", s.Stats())
			}
			if n := s.clients.lru.Len(); n > maxUnknown {
				t.Errorf("unknown-client table holds %d, bound %d", n, maxUnknown)
			}
		})
	}
}

// TestFloodBoardUdhcpc: while a crafted client floods the server with DISCOVERs from
// made-up MACs (bounded: at most 60,000 packets), busybox udhcpc on a board's MAC
// gets its fixed address.
func TestFloodBoardUdhcpc(t *testing.T) {
	busybox := needTool(t, "busybox")
	n := newNetns(t)
	board := mustMAC("dc:a6:32:aa:bb:cd")
	n.SetClientMAC(t, board.String())
	fixed := netip.MustParseAddr("198.18.0.40")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-flood", MAC: board, IP: fixed}}}
	cfg := fullConfig(t, fleet, false)
	cfg.Logger = discardLogger()
	srv := startServer(t, n, cfg)
	c := newRawClient(t, n)

	const first, most = 20000, 60000
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	flooded := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range most {
			if i == first {
				close(flooded)
			}
			if i > first && ctx.Err() != nil {
				return
			}
			// Not c.send: no t.Fatal off the test goroutine, and a lost packet is
			// part of a flood.
			c.conn.WriteToUDP(plainDiscover(uint32(i), randomMAC(i), netip.Addr{}), &net.UDPAddr{IP: net.IPv4bcast, Port: 67})
		}
	})
	<-flooded
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.Client, busybox, "udhcpc",
		"-i", n.ClientIf, "-f", "-q", "-n", "-t", "10", "-T", "1", "-s", "/bin/true").CombinedOutput()
	cancel()
	wg.Wait()
	if err != nil {
		t.Fatalf("udhcpc during the flood: %v\n%s\nstats %+v", err, out, srv.srv.Stats())
	}
	if got := liveInFile(t, cfg.LeaseFile)[fixed]; len(got) != 1 || got[0] != board.String() {
		t.Errorf("lease file holds %v for %v, want the board", got, fixed)
	}
	t.Logf("stats %+v", srv.srv.Stats())
}

// TestPoolOffersExpire: offers from a flood of DISCOVERs hold the pool only for
// offerHold; meanwhile a board of the fleet without a fixed IP still gets an address
// (it takes one offered to a non-board client, whose REQUEST then gets a NAK); and
// "pool exhausted" is logged a bounded number of times, saying how many were
// suppressed.
func TestPoolOffersExpire(t *testing.T) {
	board := mustMAC("52:54:00:12:34:56")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "arm64", MAC: board}}}
	logs := &netns.LogBuffer{}
	s := newHandlerServer(t, Config{Mode: ModeFull, Fleet: fleet, PoolStart: poolStart, PoolEnd: poolEnd}, logs)
	t0 := time.Now()
	var offered []netip.Addr
	for i := range 3 {
		out, _ := s.handle(plainDiscover(uint32(i), randomMAC(i), netip.Addr{}), t0)
		if out == nil {
			t.Fatalf("no offer %d from a pool of 3", i)
		}
		offered = append(offered, yiaddr(out))
	}
	for i := 3; i < 203; i++ {
		if out, _ := s.handle(plainDiscover(uint32(i), randomMAC(i), netip.Addr{}), t0.Add(time.Second)); out != nil {
			t.Fatalf("offer %v from an exhausted pool", yiaddr(out))
		}
	}
	if n := strings.Count(logs.String(), "pool exhausted"); n == 0 || n > linesPerClient {
		t.Errorf("pool exhausted logged %d times for 200 clients, want 1..%d", n, linesPerClient)
	}
	out, _ := s.handle(ubootDiscover(0xb0a7d, board), t0.Add(time.Second))
	if out == nil {
		t.Fatalf("board without fixed IP got nothing from a pool held by others' offers")
	}
	stolen := yiaddr(out)
	var victim int = -1
	for i, a := range offered {
		if a == stolen {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("board offered %v, not one of the pool's %v", stolen, offered)
	}
	if nak, _ := s.handle(plainRequest(uint32(victim), randomMAC(victim), serverIP, stolen), t0.Add(2*time.Second)); nak == nil || nak[242] != 6 {
		t.Errorf("the client whose offer the board took was not NAKed")
	}

	later := t0.Add(offerHold + 2*time.Second)
	out, _ = s.handle(plainDiscover(9999, randomMAC(9999), netip.Addr{}), later)
	if out == nil {
		t.Fatalf("pool still exhausted %v after the offers were made", offerHold+2*time.Second)
	}
	s.lines.flush()
	if !hasLine(logs.String(), `msg="suppressed log lines"`, `client="pool exhausted"`) {
		t.Errorf("no line says how many were suppressed:\n%s", tail(logs.String()))
	}
}

// TestLogLinesRateLimited: a flood of made-up MACs that are boot clients (each logged
// once as "not in fleet") and one MAC repeating a board's serial produce a bounded
// number of lines; the next line allowed says how many were suppressed.
func TestLogLinesRateLimited(t *testing.T) {
	pi := mustMAC("dc:a6:32:01:36:c2")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: pi, Serial: "9ffefdef"}}}
	logs := &netns.LogBuffer{}
	s := newHandlerServer(t, Config{Mode: ModeProxy, Fleet: fleet}, logs)
	now := time.Now()
	for i := range 5000 {
		s.handle(pi4Discover(nil, uint32(i), randomMAC(i), uint32(i)), now)
	}
	// The burst, plus what the shared bound refills while the loop runs on a slow
	// machine: far below one line per client.
	if n := strings.Count(logs.String(), "\n"); n > 5*linesShared {
		t.Errorf("5,000 unknown clients logged %d lines, want about %d", n, linesShared)
	}
	s.lines.flush()
	if !hasLine(logs.String(), `msg="suppressed log lines"`, `client="clients not in fleet"`) {
		t.Errorf("no line counts the suppressed ones:\n%s", tail(logs.String()))
	}
	if st := s.Stats(); st.LogSuppressed == 0 {
		t.Errorf("Stats.LogSuppressed = 0 after a flood of lines held back")
	}

	// One MAC sending a board's serial 100 times (a tenth of a second apart, so the
	// per-MAC packet limit lets them all through): a burst of lines, then a count.
	s = newHandlerServer(t, Config{Mode: ModeProxy, Fleet: fleet}, logs)
	spoof := mustMAC("02:66:66:66:66:04")
	for i := range 100 {
		s.handle(pi4Discover(nil, uint32(7000+i), spoof, 0x9ffefdef), now.Add(time.Duration(i)*time.Second/10))
	}
	if n := strings.Count(logs.String(), "claimed_board=pi-01"); n == 0 || n > linesPerClient {
		t.Errorf("one MAC spoofing a serial 100 times logged %d lines, want 1..%d", n, linesPerClient)
	}
	s.lines.flush()
	if !hasLine(logs.String(), `msg="suppressed log lines"`, "client="+spoof.String()) {
		t.Errorf("no count of the spoofing MAC's suppressed lines:\n%s", tail(logs.String()))
	}
}

// hasLine reports whether one line of logs contains all of parts.
func hasLine(logs string, parts ...string) bool {
	for _, line := range strings.Split(logs, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

func tail(s string) string {
	if len(s) > 2000 {
		return s[len(s)-2000:]
	}
	return s
}

// TestOversizedRequest: a request larger than an Ethernet frame is read whole and
// answered (it used to be cut at 1,500 bytes); one larger than a jumbo frame is
// dropped and counted; the server goes on answering.
func TestOversizedRequest(t *testing.T) {
	n := newNetns(t)
	pi := mustMAC("dc:a6:32:01:36:c2")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: pi, Serial: "9ffefdef"}}}
	srv := startServer(t, n, Config{Mode: ModeProxy, Fleet: fleet})
	c := newRawClient(t, n)

	// Private-use options (224) before the Pi's own: 2,300 bytes in all.
	filler := make([][]byte, 0, 8)
	for range 8 {
		filler = append(filler, opt(224, bytes.Repeat([]byte{'x'}, 250)...))
	}
	disc := pi4Discover(t, 0xbeef0001, pi, 0x9ffefdef)
	big := append(append(append([]byte(nil), disc[:240]...), bytes.Join(filler, nil)...), disc[240:]...)
	if len(big) <= 1500 {
		t.Fatalf("crafted request is only %d bytes", len(big))
	}
	if reply := c.exchange(t, big); reply == nil {
		t.Fatalf("no OFFER to a %d-byte DISCOVER; log:\n%s", len(big), srv.logs)
	}

	huge := append(append([]byte(nil), disc[:240]...), bytes.Repeat(opt(224, bytes.Repeat([]byte{'y'}, 250)...), 200)...)
	huge = append(huge, disc[240:]...)
	huge[4] = 0xee
	c.expectNone(t, huge)
	if st := srv.srv.Stats(); st.Oversized != 1 {
		t.Errorf("%d-byte request: stats %+v, want it counted as oversized", len(huge), st)
	}
	if reply := c.exchange(t, pi4Discover(t, 0xbeef0002, pi, 0x9ffefdef)); reply == nil {
		t.Fatalf("no OFFER after an oversized request; log:\n%s", srv.logs)
	}
}
