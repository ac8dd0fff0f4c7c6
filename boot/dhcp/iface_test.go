package dhcp

import (
	"net/netip"
	"testing"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
	"github.com/pifleet/pifleet/test/netns"
)

// TestUnboundAnswersOnlyServerLAN: with no interface configured the server answers on
// the interface that carries its address and ignores a second LAN, and its broadcast
// reply leaves through the interface the request came in on.
func TestUnboundAnswersOnlyServerLAN(t *testing.T) {
	n := newNetns(t)
	other := secondLAN(t, n)

	mac := mustMAC("dc:a6:32:01:36:c2")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: mac, Serial: "9ffefdef"}}}
	srv := startServer(t, n, Config{Mode: ModeProxy, Fleet: fleet, Interface: "*"})

	onOther := newRawClient(t, other)
	onOther.expectNone(t, pi4Discover(t, 0x0e0e0e0e, mac, 0x9ffefdef))

	c := newRawClient(t, n)
	if reply := c.exchange(t, pi4Discover(t, 0x0f0f0f0f, mac, 0x9ffefdef)); reply == nil {
		t.Fatalf("no OFFER on the server's own LAN; log:\n%s", srv.logs)
	}
	if srv.srv.Stats().OtherIf == 0 {
		t.Errorf("the packet from the other LAN was not counted as dropped")
	}
}

// secondLAN joins n's namespaces by a second veth pair, another subnet on the server
// side (a management NIC, say).
func secondLAN(t *testing.T, n *netns.Pair) *netns.Pair {
	other := *n
	other.ServerIf, other.ClientIf = "pfx"+n.ServerIf[3:], "pfy"+n.ClientIf[3:]
	netns.Run(t, "ip", "link", "add", other.ServerIf, "netns", n.Server, "type", "veth", "peer", "name", other.ClientIf, "netns", n.Client)
	netns.Run(t, "ip", "-n", n.Server, "addr", "add", "192.0.2.1/24", "dev", other.ServerIf)
	netns.Run(t, "ip", "-n", n.Server, "link", "set", other.ServerIf, "up")
	netns.Run(t, "ip", "-n", n.Client, "link", "set", other.ClientIf, "up")
	return &other
}

// TestBoundAnswersOnlyItsInterface: with an interface configured (server.interface)
// a DISCOVER from a board of the fleet that arrives on another interface of the
// server is not answered, in either mode; the same DISCOVER on the boot interface is.
func TestBoundAnswersOnlyItsInterface(t *testing.T) {
	for _, mode := range []Mode{ModeProxy, ModeFull} {
		t.Run(string(mode), func(t *testing.T) {
			n := newNetns(t)
			other := secondLAN(t, n)
			mac := mustMAC("dc:a6:32:01:36:c2")
			fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: mac, Serial: "9ffefdef",
				IP: netip.MustParseAddr("198.18.0.10")}}}
			cfg := Config{Mode: mode, Fleet: fleet}
			if mode == ModeFull {
				cfg = fullConfig(t, fleet, false)
			}
			srv := startServer(t, n, cfg) // bound to n.ServerIf
			newRawClient(t, other).expectNone(t, pi4Discover(t, 0x0e0e0e0e, mac, 0x9ffefdef))
			if st := srv.srv.Stats(); st.Replied+st.SendErrors != 0 {
				t.Fatalf("the server tried to answer a DISCOVER from another interface: %+v", st)
			}
			if reply := newRawClient(t, n).exchange(t, pi4Discover(t, 0x0f0f0f0f, mac, 0x9ffefdef)); reply == nil {
				t.Fatalf("no OFFER on the boot interface; log:\n%s", srv.logs)
			}
		})
	}
}
