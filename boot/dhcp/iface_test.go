package dhcp

import (
	"testing"

	"github.com/pifleet/pifleet/boot"
)

// TestUnboundAnswersOnlyServerLAN: with no interface configured the server answers on
// the interface that carries its address and ignores a second LAN, and its broadcast
// reply leaves through the interface the request came in on.
func TestUnboundAnswersOnlyServerLAN(t *testing.T) {
	n := newNetns(t)
	// A second LAN between the same namespaces, on another subnet.
	other := *n
	other.serverIf, other.clientIf = "pfx"+n.serverIf[3:], "pfy"+n.clientIf[3:]
	run(t, "ip", "link", "add", other.serverIf, "netns", n.server, "type", "veth", "peer", "name", other.clientIf, "netns", n.client)
	run(t, "ip", "-n", n.server, "addr", "add", "192.0.2.1/24", "dev", other.serverIf)
	run(t, "ip", "-n", n.server, "link", "set", other.serverIf, "up")
	run(t, "ip", "-n", n.client, "link", "set", other.clientIf, "up")

	mac := mustMAC("dc:a6:32:01:36:c2")
	fleet := &testFleet{boards: []*boot.Board{{Name: "pi-01", MAC: mac, Serial: "9ffefdef"}}}
	srv := startServer(t, n, Config{Mode: ModeProxy, Fleet: fleet, Interface: "*"})

	onOther := newRawClient(t, &other)
	onOther.expectNone(t, pi4Discover(t, 0x0e0e0e0e, mac, 0x9ffefdef))

	c := newRawClient(t, n)
	if reply := c.exchange(t, pi4Discover(t, 0x0f0f0f0f, mac, 0x9ffefdef)); reply == nil {
		t.Fatalf("no OFFER on the server's own LAN; log:\n%s", srv.logs)
	}
	if srv.srv.Stats().Ignored == 0 {
		t.Errorf("the packet from the other LAN was not counted as ignored")
	}
}
