package neigh

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pifleet/pifleet/test/netns"
)

// TestLookup: entries the kernel holds for the server's side of a veth pair, by state.
func TestLookup(t *testing.T) {
	p := netns.NewPair(t, "pfneigh", netip.MustParsePrefix("198.18.0.1/15"))
	for addr, state := range map[string]string{"198.18.0.50": "permanent", "198.18.0.51": "stale", "198.18.0.52": "noarp"} {
		netns.Run(t, "ip", "-n", p.Server, "neigh", "add", addr, "lladdr", "02:00:00:00:00:"+addr[len(addr)-2:], "dev", p.ServerIf, "nud", state)
	}
	tests := []struct {
		addr string
		mac  string // "" = no evidence
	}{
		{"198.18.0.50", "02:00:00:00:00:50"},
		{"198.18.0.51", "02:00:00:00:00:51"},
		{"198.18.0.52", ""}, // noarp: not learned from the wire
		{"198.18.0.53", ""}, // no entry
	}
	const clientMAC = "02:00:00:00:00:60"
	p.SetClientMAC(t, clientMAC)
	netns.Run(t, "ip", "-n", p.Client, "addr", "add", "198.18.0.60/15", "dev", p.ClientIf)
	err := netns.Do(p.Server, func() error {
		tab, err := Open()
		if err != nil {
			return err
		}
		defer tab.Close()
		ifi, err := net.InterfaceByName(p.ServerIf)
		if err != nil {
			return err
		}
		for _, tt := range tests {
			mac, ok, err := tab.Lookup(ifi.Index, netip.MustParseAddr(tt.addr))
			if err != nil {
				t.Errorf("%s: %v", tt.addr, err)
			}
			if got := map[bool]string{true: mac.String()}[ok]; got != tt.mac {
				t.Errorf("%s: got %q (ok %v), want %q", tt.addr, mac, ok, tt.mac)
			}
		}
		// A client we have no entry for: Resolve sends the ARP request, the client
		// answers, and the entry shows its MAC.
		client := netip.MustParseAddr("198.18.0.60")
		if err := tab.Resolve(ifi.Index, client); err != nil {
			t.Errorf("resolve: %v", err)
		}
		var got net.HardwareAddr
		for range 100 {
			if mac, ok, _ := tab.Lookup(ifi.Index, client); ok {
				got = mac
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if got.String() != clientMAC {
			t.Errorf("after Resolve the entry shows %q, want the client's %s", got, clientMAC)
		}
		// Another interface's table has no such entry.
		if _, ok, _ := tab.Lookup(1, netip.MustParseAddr("198.18.0.50")); ok {
			t.Error("entry found on lo")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// FuzzParse: any datagram from the netlink socket is an answer, an error or skipped;
// never a panic, and a MAC only from a well-formed entry.
func FuzzParse(f *testing.F) {
	f.Add(request(7, 3, netip.MustParseAddr("10.0.0.1")), uint32(7))
	ok := []byte{36, 0, 0, 0, unix.RTM_NEWNEIGH, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0,
		unix.AF_INET, 0, 0, 0, 3, 0, 0, 0, unix.NUD_REACHABLE, 0, 0, 1,
		10, 0, unix.NDA_LLADDR, 0, 2, 0, 0, 0, 0, 1}
	f.Add(ok, uint32(7))
	f.Add([]byte{20, 0, 0, 0, unix.NLMSG_ERROR, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff}, uint32(7))
	f.Fuzz(func(t *testing.T, b []byte, seq uint32) {
		mac, found, _, err := parse(b, seq)
		if found && (err != nil || len(mac) != 6) {
			t.Fatalf("parse(%x) = %v, %v, %v", b, mac, found, err)
		}
	})
}
