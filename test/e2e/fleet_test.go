// Package e2e is pifleet's end-to-end test: real U-Boot, Linux and QEMU boards boot from a
// real `pifleet serve` inside a network namespace the test creates, and check from inside.
// TestFleet and TestPi3Path boot pifleet's busybox demo image; TestDistroBookworm boots a
// stock Debian bookworm root (systemd, its own initramfs-tools initramfs) imported from a
// Pi-style disk image that test/e2e/distro/build-bookworm.sh builds from apt packages.
//
// Run it with `make e2e` (go test -count=1 -timeout 55m ./test/e2e/) as root. Console and
// server logs go to $PIFLEET_E2E_LOGS (default test/e2e/logs/<test>/) and are printed on
// failure. Needs: qemu-system-arm u-boot-qemu busybox kmod (and apt configured for arm64 +
// non-free-firmware for the demo image's .debs, cached in /var/cache/pifleet-test), and for
// the Debian image mmdebstrap qemu-user-static binfmt-support arch-test dosfstools mtools
// fdisk; the built image is cached in /var/cache/pifleet-test too (a cold build takes ~20
// minutes).
package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/images/demo"
	"github.com/pifleet/pifleet/test/e2e/testbed"
)

// debCache is shared across runs so that a machine downloads the demo .debs once.
const debCache = "/var/cache/pifleet-test"

const (
	serverAddr = "10.77.0.1"
	bridge     = "pfbr0"
)

// Generous failure guards, not expectations: a boot takes ~30-60 s under TCG on 2 cores.
const (
	bootTimeout  = 5 * time.Minute
	checkTimeout = 3 * time.Minute
)

// guestFail ends a wait early: the boot or a check has failed for sure.
var guestFail = regexp.MustCompile(`Kernel panic|pifleet-initramfs: FAILED[^\r\n]*|PIFLEET-CHECK FAIL[^\r\n]*|Synchronous Abort|Retry count exceeded`)

// testBoard is one board of the test fleet.
type testBoard struct {
	name, mac, ip, serial, tap string
}

// lab is one running test fleet: namespace, state dir, server process and boards.
type lab struct {
	t       *testing.T
	net     *testbed.Net
	dir     string // everything the test writes, except logs
	logDir  string
	state   string
	cfgPath string
	bin     string
	boards  []testBoard

	mu        sync.Mutex
	server    *exec.Cmd
	serverEnd chan struct{}
}

// repoRoot finds the module root from the test's working directory (test/e2e).
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	t.Fatalf("no go.mod above %s", dir)
	return ""
}

// logDirFor is the known folder for a test's logs: $PIFLEET_E2E_LOGS/<test> or
// test/e2e/logs/<test>, emptied at the start of the test.
func logDirFor(t *testing.T) string {
	t.Helper()
	base := os.Getenv("PIFLEET_E2E_LOGS")
	if base == "" {
		wd, _ := os.Getwd()
		base = filepath.Join(wd, "logs")
	}
	dir := filepath.Join(base, t.Name())
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fleetImage is the image a lab's boards boot and how it gets into the state dir.
type fleetImage struct {
	// name in fleet.yaml's images: and defaults.image.
	name string
	// defaults are extra fleet.yaml lines under defaults: (indented two spaces).
	defaults string
	// install puts the image into the state dir; fleet.yaml is written by then.
	install func(t *testing.T, l *lab)
}

// demoImage is pifleet's busybox demo image, built from .debs into the state dir.
var demoImage = fleetImage{name: "demo", install: func(t *testing.T, l *lab) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	store, err := images.OpenStore(filepath.Join(l.state, "images"))
	if err != nil {
		t.Fatalf("image store: %v", err)
	}
	logf, err := os.Create(filepath.Join(l.logDir, "demo-build.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	if _, err := demo.Build(ctx, store, demo.Options{CacheDir: debCache, Logger: slog.New(slog.NewTextHandler(logf, nil))}); err != nil {
		t.Fatalf("demo image: %v", err)
	}
}}

// newLab builds pifleet and the demo image, writes fleet.yaml and creates the namespace
// with one tap per board. The server is not started yet.
func newLab(t *testing.T, boards []testBoard) *lab {
	return newLabWith(t, boards, demoImage)
}

// newLabWith is newLab for any image: it builds pifleet, writes fleet.yaml with img as every
// board's image, installs img and creates the namespace.
func newLabWith(t *testing.T, boards []testBoard, img fleetImage) *lab {
	t.Helper()
	testbed.RequireRoot(t)
	testbed.RequireTools(t, map[string]string{
		"qemu-system-aarch64": "qemu-system-arm", "busybox": "busybox", "depmod": "kmod",
		"dpkg-deb": "dpkg", "apt-get": "apt",
	})
	if _, err := os.Stat(testbed.UBootQEMUArm64); err != nil {
		t.Fatalf("no U-Boot for QEMU (apt-get install u-boot-qemu): %v", err)
	}
	l := &lab{t: t, dir: t.TempDir(), logDir: logDirFor(t), boards: boards}
	l.state = filepath.Join(l.dir, "state")
	l.cfgPath = filepath.Join(l.dir, "fleet.yaml")
	t.Cleanup(func() {
		if t.Failed() {
			l.dumpLogs()
		}
		t.Logf("logs kept in %s", l.logDir)
	})

	l.bin = filepath.Join(l.dir, "pifleet")
	build := exec.Command("go", "build", "-o", l.bin, "./cmd/pifleet")
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("cannot build pifleet (cmd/pifleet, needed to serve the boards): %v\n%s", err, out)
	}

	var fleet strings.Builder
	fmt.Fprintf(&fleet, `server:
  interface: %s
  address: %s/24
  state: %s
  dhcp: {mode: full, router: %s, lease: 1h}
  ports: {tftp: 69, nfs: 2049, mount: 20048, http: 8080}
images:
  %s: {}
defaults:
  image: %s
  cmdline: "console=ttyAMA0,115200"
%sboards:
`, bridge, serverAddr, l.state, serverAddr, img.name, img.name, img.defaults)
	for _, b := range boards {
		fmt.Fprintf(&fleet, "  - {name: %s, mac: %q, ip: %s", b.name, b.mac, b.ip)
		if b.serial != "" {
			fmt.Fprintf(&fleet, ", serial: %q", b.serial)
		}
		fleet.WriteString("}\n")
	}
	if err := os.WriteFile(l.cfgPath, []byte(fleet.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(l.logDir, "fleet.yaml"), []byte(fleet.String()), 0o644)
	img.install(t, l)
	check := exec.Command(l.bin, "check", "-c", l.cfgPath)
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("pifleet check rejects the test's fleet.yaml: %v\n%s", err, out)
	}

	l.net = testbed.NewNet(t, bridge, serverAddr+"/24")
	for _, b := range boards {
		l.net.AddTap(b.tap)
	}
	t.Cleanup(l.stopServer)
	return l
}

// startServer runs `pifleet serve` in the namespace and waits for its "pifleet serving"
// log line. Failures go to t, the (sub)test that runs this.
func (l *lab) startServer(t testing.TB) {
	t.Helper()
	logPath := filepath.Join(l.logDir, "server.log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	start, _ := f.Seek(0, io.SeekEnd)
	fmt.Fprintf(f, "==== %s: pifleet serve -c %s\n", time.Now().UTC().Format(time.RFC3339), l.cfgPath)
	cmd := l.net.Command(context.Background(), l.bin, "serve", "-c", l.cfgPath, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pifleet serve: %v", err)
	}
	end := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(end) }()
	l.mu.Lock()
	l.server, l.serverEnd = cmd, end
	l.mu.Unlock()
	deadline := time.Now().Add(time.Minute)
	for {
		b, _ := os.ReadFile(logPath)
		if int64(len(b)) > start && strings.Contains(string(b[start:]), "pifleet serving") {
			return
		}
		select {
		case <-end:
			t.Fatalf("pifleet serve exited at start-up (%v); log %s:\n%s", cmd.ProcessState, logPath, tail(string(b), 4000))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("pifleet serve did not log \"pifleet serving\" within a minute; log %s:\n%s", logPath, tail(string(b), 4000))
		}
	}
}

// killServer SIGKILLs the server (no clean shutdown) and waits for it to die.
func (l *lab) killServer() {
	l.mu.Lock()
	cmd, end := l.server, l.serverEnd
	l.server = nil
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-end
}

// stopServer stops the server with SIGTERM, then SIGKILL after 10 s.
func (l *lab) stopServer() {
	l.mu.Lock()
	cmd, end := l.server, l.serverEnd
	l.server = nil
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-end:
	case <-time.After(10 * time.Second):
		cmd.Process.Signal(syscall.SIGKILL)
		<-end
	}
}

// pifleet runs a pifleet subcommand inside the namespace (the CLI finds the live server
// at 127.0.0.1 there).
func (l *lab) pifleet(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := l.net.Command(ctx, l.bin, args...).CombinedOutput()
	return string(out), err
}

// boot starts board b from power-on (U-Boot, DHCP, TFTP, PXE, initramfs, NFS root) and
// waits for the image's PIFLEET-READY line.
// The board is killed when the whole test ends (l.t), not when subtest t does.
func (l *lab) boot(t *testing.T, b testBoard) *testbed.Board {
	t.Helper()
	qb, err := testbed.StartBoard(l.net, testbed.BoardConfig{
		Name: b.name, Tap: b.tap, MAC: b.mac, Machine: testbed.UBootVirt(), LogDir: l.logDir,
	})
	if err != nil {
		t.Fatal(err)
	}
	l.t.Cleanup(qb.Kill)
	if _, err := qb.Console.Expect(regexp.MustCompile(`PIFLEET-READY`), guestFail, bootTimeout); err != nil {
		t.Fatalf("board %s did not boot: %v\nconsole log %s, last output:\n%s", qb.Name, err, qb.LogPath, qb.Console.Tail(4000))
	}
	return qb
}

// check runs pifleet-check on the board and returns its ok line, failing t on FAIL.
func (l *lab) check(t *testing.T, qb *testbed.Board, step, arg string) string {
	t.Helper()
	if err := qb.Console.Send(strings.TrimSpace("pifleet-check " + step + " " + arg)); err != nil {
		t.Fatalf("board %s: console: %v", qb.Name, err)
	}
	// Up to the line end: output arrives in chunks, and a half line must not match.
	re := regexp.MustCompile(`PIFLEET-CHECK ok ` + regexp.QuoteMeta(step) + `[^\r\n]*\r?\n`)
	m, err := qb.Console.Expect(re, guestFail, checkTimeout)
	if err != nil {
		t.Fatalf("board %s: pifleet-check %s: %v\nconsole log %s, last output:\n%s", qb.Name, step, err, qb.LogPath, qb.Console.Tail(3000))
	}
	return strings.TrimSpace(m)
}

// powerOff syncs and powers the board off from inside; with -no-reboot QEMU then exits.
func (l *lab) powerOff(t *testing.T, qb *testbed.Board) {
	t.Helper()
	qb.Console.Send("sync; poweroff -f")
	if err := qb.Wait(2 * time.Minute); err != nil {
		t.Fatalf("%v\n%s", err, qb.Console.Tail(2000))
	}
	qb.Kill()
}

// dumpLogs prints the tail of every log in the log dir.
func (l *lab) dumpLogs() {
	entries, _ := os.ReadDir(l.logDir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(l.logDir, e.Name()))
		if err != nil {
			continue
		}
		l.t.Logf("==== %s (last 6000 bytes of %s)\n%s", e.Name(), filepath.Join(l.logDir, e.Name()), tail(strings.ReplaceAll(string(b), "\r", ""), 6000))
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// treeDigest hashes a directory tree: every path with its type, mode, owner, size, mtime,
// device number, symlink target, xattrs and content. Any change shows.
func treeDigest(t *testing.T, root string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fmt.Fprintf(h, "%q %o %d:%d %d %d.%d %d", rel, st.Mode, st.Uid, st.Gid, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Rdev)
		if d.Type()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			fmt.Fprintf(h, " -> %q", target)
		}
		if names, err := listXattrs(p); err == nil {
			for _, n := range names {
				v := make([]byte, 4096)
				sz, _ := unix.Lgetxattr(p, n, v)
				if sz < 0 {
					sz = 0
				}
				fmt.Fprintf(h, " x:%s=%x", n, v[:sz])
			}
		}
		if d.Type().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			c := sha256.New()
			_, err = io.Copy(c, f)
			f.Close()
			if err != nil {
				return err
			}
			fmt.Fprintf(h, " %x", c.Sum(nil))
		}
		h.Write([]byte("\n"))
		return nil
	})
	if err != nil {
		t.Fatalf("digest of %s: %v", root, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func listXattrs(p string) ([]string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n <= 0 {
		return nil, err
	}
	var names []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			names = append(names, s)
		}
	}
	sort.Strings(names)
	return names, nil
}
