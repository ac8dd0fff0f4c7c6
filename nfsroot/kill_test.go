package nfsroot

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/overlay"
)

// TestHelperServerProcess is not a test: run by TestSIGKILLAfterCommit as a separate
// process it serves pi-a from NFSROOT_HELPER_DIR until it is killed.
func TestHelperServerProcess(t *testing.T) {
	dir := os.Getenv("NFSROOT_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process for TestSIGKILLAfterCommit")
	}
	fs, err := overlay.New(overlay.Options{Upper: filepath.Join(dir, "upper"), Work: filepath.Join(dir, "work"), Lowers: []string{filepath.Join(dir, "lower")}})
	must(t, err)
	s := New(Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	s.SetExports([]Export{{Board: "pi-a", Path: "/boards/pi-a", FS: fs, StateDir: filepath.Join(dir, "state"),
		Allow: func(a netip.Addr) bool { return a == addrA }}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	fmt.Printf("READY %s\n", ln.Addr())
	_ = s.ServeNFS(context.Background(), ln)
}

func startHelper(t *testing.T, dir string) (*exec.Cmd, netip.AddrPort) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperServerProcess$", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), "NFSROOT_HELPER_DIR="+dir)
	out, err := cmd.StdoutPipe()
	must(t, err)
	cmd.Stderr = os.Stderr
	must(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") {
				line <- strings.TrimPrefix(sc.Text(), "READY ")
				return
			}
		}
		close(line)
	}()
	select {
	case l, ok := <-line:
		if !ok {
			t.Fatal("helper server exited before it was ready")
		}
		return cmd, netip.MustParseAddrPort(l)
	case <-time.After(60 * time.Second):
		t.Fatal("helper server not ready")
	}
	return nil, netip.AddrPort{}
}

// A server killed right after a COMMIT reply loses none of the committed data, and every
// handle it gave out still works in the next process; the write verifier changes.
func TestSIGKILLAfterCommit(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "lower/etc"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "lower/etc/hostname"), []byte("base\n"), 0o644))
	cmd, addr := startHelper(t, dir)
	c := dialFrom(t, addrA, addr)
	st, root := c.mnt("/boards/pi-a")
	wantStatus(t, "mount", st, 0)
	etc := c.walk(root, "etc")
	host := c.walk(etc, "hostname")
	st, d, _ := c.mkdir(root, "var", mode(0o755))
	wantStatus(t, "mkdir", st, 0)
	st, fh, _ := c.create(d, "log", 0, mode(0o644))
	wantStatus(t, "create", st, 0)
	data := bytes.Repeat([]byte("committed data "), 100000)
	var verf [8]byte
	for off := 0; off < len(data); off += 256 << 10 {
		end := min(off+256<<10, len(data))
		st, res := c.write(fh, uint64(off), data[off:end], unstable)
		wantStatus(t, "unstable write", st, 0)
		if res.Committed != unstable {
			t.Fatalf("unstable write answered %d", res.Committed)
		}
		verf = res.Verf
	}
	st, cv := c.commit(fh)
	wantStatus(t, "commit", st, 0)
	if cv != verf {
		t.Fatal("verifier changed within one server run")
	}
	st, hres := c.write(host, 0, []byte("pi-a\n"), fileSync)
	wantStatus(t, "file_sync write", st, 0)
	if hres.Committed != fileSync {
		t.Fatalf("stable write answered %d", hres.Committed)
	}
	wantStatus(t, "rename after commit", c.rename(d, "log", root, "log.1"), 0)

	must(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	_, addr = startHelper(t, dir)
	c = dialFrom(t, addrA, addr)
	for name, h := range map[string][]byte{"root": root, "etc": etc, "hostname": host, "var": d, "log": fh} {
		if st, _ := c.getattr(h); st != 0 {
			t.Fatalf("handle of %s after SIGKILL: status %d", name, st)
		}
	}
	var got []byte
	for off := uint64(0); ; {
		st, b := c.read(fh, off, 1<<20)
		wantStatus(t, "read after restart", st, 0)
		if len(b) == 0 {
			break
		}
		got = append(got, b...)
		off += uint64(len(b))
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("after SIGKILL: %d bytes of %d committed", len(got), len(data))
	}
	if st, s := c.readAll(host); st != 0 || s != "pi-a\n" {
		t.Fatalf("FILE_SYNC write after SIGKILL: %q", s)
	}
	st, res := c.write(fh, 0, []byte("x"), unstable)
	wantStatus(t, "write after restart", st, 0)
	if res.Verf == verf {
		t.Fatal("write verifier unchanged across a restart: clients would not resend uncommitted writes")
	}
}
