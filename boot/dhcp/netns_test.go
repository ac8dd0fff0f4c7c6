package dhcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/test/netns"
	"golang.org/x/sys/unix"
)

// The test network: two namespaces joined by a veth pair, server side 198.18.0.1/15
// (the benchmarking range, RFC 2544), client side without an address like a board at
// power-on. Nothing in these tests reaches beyond the two namespaces.

var (
	serverIP = netip.MustParseAddr("198.18.0.1")
	testNet  = netip.MustParsePrefix("198.18.0.0/15")
)

func requireRoot(t testing.TB) {
	t.Helper()
	netns.RequireRoot(t, "creates network namespaces and binds port 67 inside them")
}

// newNetns creates the namespace pair; t.Cleanup deletes it, also on failure.
func newNetns(t testing.TB) *netns.Pair {
	t.Helper()
	requireRoot(t)
	return netns.NewPair(t, "pfdhcp", netip.PrefixFrom(serverIP, testNet.Bits()))
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// running is a server under test inside the server namespace.
type running struct {
	srv    *Server
	cfg    Config
	logs   *netns.LogBuffer
	cancel context.CancelFunc
	done   chan error
}

// startServer runs a server with cfg in n's server namespace until the test ends.
func startServer(t testing.TB, n *netns.Pair, cfg Config) *running {
	t.Helper()
	logs := &netns.LogBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if cfg.Events == nil {
		cfg.Events = boot.NewTimeline()
	}
	if !cfg.ServerIP.IsValid() {
		cfg.ServerIP = serverIP
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = testNet
	}
	switch cfg.Interface {
	case "":
		cfg.Interface = n.ServerIf
	case "*":
		cfg.Interface = "" // unbound: the server picks the interface that has ServerIP
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: srv, cfg: cfg, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() {
		r.done <- netns.Do(n.Server, func() error { return srv.Serve(ctx) })
	}()
	t.Cleanup(func() { r.stop(t) })
	waitListening(t, n.Server, 67, r.done)
	return r
}

// stop cancels the server and waits for Serve to return (bounded).
func (r *running) stop(t testing.TB) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("Serve did not return after cancel")
	}
}

// waitListening polls (bounded) until a UDP socket is bound to port in ns.
func waitListening(t testing.TB, ns string, port int, done chan error) {
	t.Helper()
	for range 100 {
		select {
		case err := <-done:
			done <- err // the caller's cleanup waits on it too (done has room for one)
			t.Fatalf("Serve returned early: %v", err)
		default:
		}
		out, _ := exec.Command("ip", "netns", "exec", ns, "ss", "-Huln", fmt.Sprintf("sport = :%d", port)).Output()
		if len(bytes.TrimSpace(out)) > 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("server not listening on port %d in %s", port, ns)
}

// rawClient is a UDP socket on port 68 in the client namespace, for crafted packets.
type rawClient struct {
	conn *net.UDPConn
}

func newRawClient(t testing.TB, n *netns.Pair) *rawClient {
	t.Helper()
	var conn *net.UDPConn
	err := netns.Do(n.Client, func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) {
				serr = errors.Join(
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1),
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
					unix.BindToDevice(int(fd), n.ClientIf))
			})
			return serr
		}}
		pc, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:68")
		if err != nil {
			return err
		}
		conn = pc.(*net.UDPConn)
		return nil
	})
	if err != nil {
		t.Fatalf("client socket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{conn: conn}
}

// send broadcasts pkt to the server port.
func (c *rawClient) send(t testing.TB, pkt []byte) {
	t.Helper()
	if _, err := c.conn.WriteToUDP(pkt, &net.UDPAddr{IP: net.IPv4bcast, Port: 67}); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// replies collects replies with transaction id xid until wait passes without one.
func (c *rawClient) replies(t testing.TB, xid [4]byte, wait time.Duration, max int) [][]byte {
	t.Helper()
	var out [][]byte
	buf := make([]byte, 1500)
	for len(out) < max {
		c.conn.SetReadDeadline(time.Now().Add(wait))
		n, _, err := c.conn.ReadFromUDP(buf)
		if err != nil {
			break
		}
		if n >= 8 && buf[0] == 2 && bytes.Equal(buf[4:8], xid[:]) {
			out = append(out, append([]byte(nil), buf[:n]...))
		}
	}
	return out
}

// exchange sends pkt (retrying a few times, as a client would) and returns the
// first reply with the same xid, or nil after the bounded attempts. It resends after
// 4 s, as RFC 2131 (4.1) has a client do: full mode ACKs only once the lease is on
// disk, an fsync on a busy machine can take over a second, and a resend would be a
// second REQUEST in the board's timeline.
func (c *rawClient) exchange(t testing.TB, pkt []byte) []byte {
	t.Helper()
	var xid [4]byte
	copy(xid[:], pkt[4:8])
	for range 3 {
		c.send(t, pkt)
		if r := c.replies(t, xid, 4*time.Second, 1); len(r) > 0 {
			return r[0]
		}
	}
	return nil
}

// expectNone sends pkt and checks that no reply comes (bounded wait).
func (c *rawClient) expectNone(t testing.TB, pkt []byte) {
	t.Helper()
	var xid [4]byte
	copy(xid[:], pkt[4:8])
	c.send(t, pkt)
	if r := c.replies(t, xid, 1500*time.Millisecond, 1); len(r) > 0 {
		m, _ := dhcpv4.FromBytes(r[0])
		t.Fatalf("unexpected reply: %v", m)
	}
}
