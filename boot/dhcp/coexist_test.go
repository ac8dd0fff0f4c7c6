package dhcp

import (
	"bytes"
	"net/netip"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
	"github.com/pifleet/pifleet/test/netns"
)

// TestProxyBesideRouter: proxy mode next to a real DHCP server (dnsmasq playing the
// LAN's router, in the same namespace on the same port). A Pi's DISCOVER gets two
// OFFERs: the router's with an address and no boot options, ours with the boot
// options and no address, which is what the Pi merges. Our OFFER never competes for
// the address.
func TestProxyBesideRouter(t *testing.T) {
	dnsmasq := needTool(t, "dnsmasq")
	n := newNetns(t)
	// The LAN: a bridge in the client namespace joining the server's veth and the
	// router's (a third namespace). The crafted client sits on the bridge itself.
	id := n.Server[len("pfdhcp-s"):]
	routerNS, br, rIf, rPeer := "pfdhcp-r"+id, "pfb"+id, "pfr"+id, "pfq"+id
	netns.Run(t, "ip", "netns", "add", routerNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", routerNS).Run() })
	netns.Run(t, "ip", "link", "add", rIf, "netns", routerNS, "type", "veth", "peer", "name", rPeer, "netns", n.Client)
	netns.Run(t, "ip", "-n", n.Client, "link", "add", br, "type", "bridge")
	netns.Run(t, "ip", "-n", n.Client, "link", "set", n.ClientIf, "master", br)
	netns.Run(t, "ip", "-n", n.Client, "link", "set", rPeer, "master", br, "up")
	netns.Run(t, "ip", "-n", n.Client, "link", "set", br, "up")
	netns.Run(t, "ip", "-n", routerNS, "addr", "add", "198.18.0.254/15", "dev", rIf)
	netns.Run(t, "ip", "-n", routerNS, "link", "set", rIf, "up")
	lan := *n
	lan.ClientIf = br

	dir := t.TempDir()
	router := exec.Command("ip", "netns", "exec", routerNS, dnsmasq, "-k", "--conf-file=/dev/null", "--port=0",
		"--no-ping", "--interface="+rIf, "--dhcp-range=198.18.2.10,198.18.2.20,255.254.0.0,1h",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"),
		"--log-facility="+filepath.Join(dir, "log"))
	if err := router.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- router.Wait() }()
	t.Cleanup(func() {
		router.Process.Signal(syscall.SIGTERM) // our own child, by its pid
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			router.Process.Kill()
			<-done
		}
	})
	waitListening(t, routerNS, 67, done)

	mac := mustMAC("dc:a6:32:01:36:c2")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: mac, Serial: "9ffefdef"}}}
	srv := startServer(t, n, Config{Mode: ModeProxy, Fleet: fleet})
	c := newRawClient(t, &lan)

	var fromRouter, fromUs []byte
	for attempt := 0; attempt < 3 && (fromRouter == nil || fromUs == nil); attempt++ {
		xid := 0x70000000 + uint32(attempt)
		disc := pi4Discover(t, xid, mac, 0x9ffefdef)
		// The broadcast flag: dnsmasq would otherwise unicast to the offered address,
		// which this UDP-socket client cannot receive (a Pi's raw stack can).
		disc[10] = 0x80
		c.send(t, disc)
		for _, r := range c.replies(t, [4]byte{0x70, 0, 0, byte(attempt)}, time.Second, 4) {
			_, opts, _ := wireOptions(t, r)
			if netip.AddrFrom4([4]byte(opts[54])) == serverIP && len(opts[43]) > 0 {
				fromUs = r
			} else {
				fromRouter = r
			}
		}
	}
	if fromUs == nil || fromRouter == nil {
		t.Fatalf("want two OFFERs (router and proxy), got router=%v proxy=%v; log:\n%s", fromRouter != nil, fromUs != nil, srv.logs)
	}
	if y := yiaddr(fromRouter); y.Compare(netip.MustParseAddr("198.18.2.10")) < 0 {
		t.Errorf("router offered %v", y)
	}
	checkProxyPiReply(t, fromUs, 2, "Raspberry Pi Boot", nil)
	if _, opts, _ := wireOptions(t, fromRouter); bytes.Contains(opts[43], []byte("Raspberry Pi Boot")) {
		t.Errorf("the router's offer carries the boot menu: test setup is wrong")
	}
}
