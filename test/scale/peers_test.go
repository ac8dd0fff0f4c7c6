package scale

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/netns"
	"github.com/pifleet/pifleet/test/require"
)

// TestPeerAccounting checks what the peers' figures rest on: treeStat counts every
// process below the root (not the root), and the cgroup counts the CPU of a process
// nobody waited for, which no /proc entry keeps (in.tftpd's transfers).
func TestPeerAccounting(t *testing.T) {
	netns.RequireRoot(t, "makes a cgroup")
	cg := newCGroup(t)
	if cg == "" {
		require.Missing(t, "no writable cgroup v2 hierarchy (the peers' CPU would miss in.tftpd's transfers)")
	}
	f, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The shell ignores SIGCHLD, so its busy child is reaped unwaited, as in.tftpd's are;
	// two sleeps stay below it.
	sh := exec.Command("sh", "-c", `trap '' CHLD; (i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done) & sleep 30 & sleep 30`)
	sh.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sh.Process.Kill(); sh.Wait() }()
	var s procStat
	for deadline := time.Now().Add(20 * time.Second); ; {
		if s, err = treeStat(sh.Process.Pid); err != nil {
			t.Fatal(err)
		}
		if s.Threads == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s.Threads != 2 || s.RSS == 0 {
		t.Fatalf("treeStat: %d processes, RSS %d; want the 2 sleeps, RSS > 0 (%v)", s.Threads, s.RSS, s.ByCmd)
	}
	cpu, err := cgroupCPU(cg)
	if err != nil {
		t.Fatal(err)
	}
	if cpu < 50*time.Millisecond {
		t.Errorf("cgroup CPU %s: the busy loop's CPU is missing", cpu)
	}
	t.Logf("cgroup %s, the tree below the shell %s %v", cpu, s.CPU, s.ByCmd)
}
