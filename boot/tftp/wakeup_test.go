package tftp

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadSleeps is how often the threads of process pid have gone to sleep so far (the
// sum of their voluntary context switches).
func threadSleeps(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	sum := 0
	for _, f := range tasks {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		for l := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(l, "voluntary_ctxt_switches:"); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				sum += n
			}
		}
	}
	return sum
}

// TestOneSleepPerBlock: with a client that answers each block after 150 µs, as a Pi
// over a real network does, the server process goes to sleep once per block (waiting
// for the ACK), not more. The server runs as a process of its own (this test binary,
// as the benchmarks start it), so that only its threads are counted. A round trip
// whose send or receive told the Go scheduler of a possibly blocking system call woke
// the runtime's monitor thread, idle since the server had gone idle, every block: two
// more sleeps per block, and most of the server's CPU beside the network's.
func TestOneSleepPerBlock(t *testing.T) {
	root := t.TempDir()
	const blksize, blocks = 1468, 2000
	data := make([]byte, blksize*blocks+100)
	if err := os.WriteFile(filepath.Join(root, "file"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), benchServeEnv+"=pifleet", benchRootEnv+"="+root, benchAddrEnv+"=127.0.0.1:0")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(unix.SIGTERM); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "ready" {
		t.Fatalf("server did not start: %q", line)
	}
	addr, err := netip.ParseAddrPort(f[1])
	if err != nil {
		t.Fatal(err)
	}

	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	// A first transfer, so that what the server sets up once is not counted.
	if _, _, err := realisticGet(fd, int(addr.Port()), "file", blksize, true, 0); err != nil {
		t.Fatal(err)
	}
	before := threadSleeps(t, cmd.Process.Pid)
	n, _, err := realisticGet(fd, int(addr.Port()), "file", blksize, false, benchDelay)
	if err != nil {
		t.Fatal(err)
	}
	sleeps := threadSleeps(t, cmd.Process.Pid) - before
	if n != int64(len(data)) {
		t.Fatalf("got %d bytes, want %d", n, len(data))
	}
	perBlock := float64(sleeps) / (blocks + 1)
	t.Logf("%d sleeps of the server's threads in %d blocks: %.2f per block", sleeps, blocks+1, perBlock)
	if perBlock > 1.5 {
		t.Errorf("the server's threads went to sleep %.2f times per block, want about 1", perBlock)
	}
}
