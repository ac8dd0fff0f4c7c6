// Package testbed gives pifleet's end-to-end tests an isolated network and emulated boards:
// a network namespace with a bridge and one tap per board, QEMU processes and their consoles.
//
// Nothing leaves the namespace: there is no veth to the host and no route out, and
// everything is deleted in t.Cleanup, also when a test fails. It needs root.
package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/require"
)

// RequireRoot skips t when not root (fails it under PIFLEET_STRICT=1, see test/require):
// namespaces, taps and the server's ports need it.
func RequireRoot(t testing.TB) {
	t.Helper()
	require.Root(t, "network namespace, taps, ports 67/69, root-owned image files; CI runs as root")
}

// RequireTools fails t (not skips: a CI without them must not pass silently) when a
// command the test needs is missing, naming the Debian package that has it.
func RequireTools(t testing.TB, tools map[string]string) {
	t.Helper()
	var missing []string
	for tool, pkg := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", tool, pkg))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("missing tools: %s", strings.Join(missing, ", "))
	}
}

// Net is a network namespace with one bridge that carries the server's address.
type Net struct {
	// Name of the namespace (ip netns).
	Name string
	// Bridge is the bridge device inside the namespace, where the server listens.
	Bridge string
	// Addr is the bridge's address with prefix, e.g. 10.77.0.1/24.
	Addr string
	t    testing.TB
}

// NewNet creates a namespace with lo up and bridge (with addr) up, and deletes it when the
// test ends.
func NewNet(t testing.TB, bridge, addr string) *Net {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	sweepStale()
	// The pid in the name lets a later run tell a leftover from a live one.
	n := &Net{Name: fmt.Sprintf("%s%d-%s", nsPrefix, os.Getpid(), hex.EncodeToString(b[:])), Bridge: bridge, Addr: addr, t: t}
	n.ip("netns", "add", n.Name)
	t.Cleanup(func() {
		// Deleting the namespace deletes its bridge and taps with it.
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	n.ip("-n", n.Name, "link", "set", "lo", "up")
	n.ip("-n", n.Name, "link", "add", bridge, "type", "bridge")
	// No STP and no forwarding delay: a board's first DHCP packet must not be dropped.
	n.ip("-n", n.Name, "link", "set", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
	n.ip("-n", n.Name, "addr", "add", addr, "dev", bridge)
	n.ip("-n", n.Name, "link", "set", bridge, "up")
	return n
}

// nsPrefix starts the name of every namespace this package makes.
const nsPrefix = "pifleet-test-"

// sweepStale deletes namespaces left by test processes that died without their cleanups
// (a go test timeout panics past t.Cleanup). Only ours: the name must carry our prefix and
// the pid of a process that no longer exists.
func sweepStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) {
			continue
		}
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(f[0], nsPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			exec.Command("ip", "netns", "del", f[0]).Run()
		}
	}
}

func (n *Net) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// AddTap creates a tap on the bridge for one board.
func (n *Net) AddTap(name string) {
	n.t.Helper()
	n.ip("-n", n.Name, "tuntap", "add", "dev", name, "mode", "tap")
	n.ip("-n", n.Name, "link", "set", name, "master", n.Bridge)
	n.ip("-n", n.Name, "link", "set", name, "up")
}

// Command returns a command that runs inside the namespace. `ip netns exec` execs the
// program, so the process's pid is the program's and killing it kills the program.
func (n *Net) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}
