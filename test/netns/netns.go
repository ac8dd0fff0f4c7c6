// Package netns gives tests a private network: two network namespaces joined by a veth pair,
// torn down by t.Cleanup; nothing it creates is reachable from outside.
package netns

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pifleet/pifleet/test/require"
	"golang.org/x/sys/unix"
)

// pairSeq numbers the pairs of one test binary; with the pid it keeps names unique
// when packages' tests run in parallel.
var pairSeq atomic.Int32

// RequireRoot skips t (fails it under PIFLEET_STRICT=1, see test/require) unless it runs
// as root with iproute2 installed. why says what the test needs root for; the message reads
// "needs root: <why>".
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	require.Root(t, why)
	require.Tool(t, "ip", "iproute2")
}

// Run runs a command (ip, mostly) and fails t with the command's output if it fails.
func Run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Pair is two namespaces joined by a veth pair: the server end has an address, the
// client end has none, like a board at power-on.
type Pair struct {
	Server, Client     string // namespace names, for Do and `ip -n`
	ServerIf, ClientIf string // the veth ends, ServerIf in Server and ClientIf in Client
}

// NewPair creates the namespaces <prefix>-s<id> and <prefix>-c<id>, joins them by a veth
// pair with serverAddr on the server end, and brings every link (lo included) up.
// t.Cleanup deletes both namespaces, also when NewPair fails half way. The veth ends are
// named pfs<id> and pfc<id>; they exist only inside the pair, so they need not be unique
// on the host, only short enough for Linux (15 bytes).
func NewPair(t testing.TB, prefix string, serverAddr netip.Prefix) *Pair {
	t.Helper()
	RequireRoot(t, "creates network namespaces")
	id := fmt.Sprintf("%d-%d", os.Getpid()%100000, pairSeq.Add(1))
	p := &Pair{
		Server: prefix + "-s" + id, Client: prefix + "-c" + id,
		ServerIf: "pfs" + id, ClientIf: "pfc" + id,
	}
	if len(p.ServerIf) > 15 {
		t.Fatalf("interface name %s too long", p.ServerIf)
	}
	Run(t, "ip", "netns", "add", p.Server)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", p.Server).Run() })
	Run(t, "ip", "netns", "add", p.Client)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", p.Client).Run() })
	Run(t, "ip", "link", "add", p.ServerIf, "netns", p.Server, "type", "veth", "peer", "name", p.ClientIf, "netns", p.Client)
	Run(t, "ip", "-n", p.Server, "addr", "add", serverAddr.String(), "dev", p.ServerIf)
	Run(t, "ip", "-n", p.Server, "link", "set", p.ServerIf, "up")
	Run(t, "ip", "-n", p.Server, "link", "set", "lo", "up")
	Run(t, "ip", "-n", p.Client, "link", "set", p.ClientIf, "up")
	Run(t, "ip", "-n", p.Client, "link", "set", "lo", "up")
	return p
}

// SetClientMAC gives the client veth a board's MAC, for real clients that use the
// interface's address (udhcpc, dhclient).
func (p *Pair) SetClientMAC(t testing.TB, mac string) {
	t.Helper()
	Run(t, "ip", "-n", p.Client, "link", "set", p.ClientIf, "address", mac)
}

// Do runs fn on a thread that entered namespace ns. The thread is never handed
// back to the runtime (the goroutine exits locked), so no other goroutine ever runs
// in ns by accident. Sockets fn creates stay in ns wherever they are used later.
func Do(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/var/run/netns", ns))
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// LogBuffer collects log lines that a test reads while servers write them (safe for
// concurrent use). The zero value is ready to use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p; it implements io.Writer.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
