package main

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/images/shell"
	"github.com/pifleet/pifleet/test/require"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if shell.IsHelper() { // image shell re-executes the test binary as its helper
		os.Exit(shell.Main())
	}
	os.Exit(m.Run())
}

// debCache is where tests share downloaded .debs and the bookworm image (as test/e2e does).
const debCache = "/var/cache/pifleet-test"

// needsImageShell ends t unless image shell can run an arm64 root here.
func needsImageShell(t *testing.T) {
	t.Helper()
	require.Root(t, "image shell mounts overlayfs in a private namespace")
	require.Tool(t, "dpkg-deb", "dpkg")
	if runtime.GOARCH != "arm64" {
		if b, err := os.ReadFile("/proc/sys/fs/binfmt_misc/qemu-aarch64"); err != nil || !strings.HasPrefix(string(b), "enabled") {
			require.Missing(t, "no enabled qemu-aarch64 binfmt handler (apt-get install qemu-user-static binfmt-support)")
		}
	}
}

// busyboxSource makes an arm64 root dir from busybox-static:arm64 (downloaded once into
// debCache) with /etc/bar, to import as an image.
func busyboxSource(t *testing.T) string {
	t.Helper()
	debs, _ := filepath.Glob(filepath.Join(debCache, "busybox-static_*_arm64.deb"))
	if len(debs) == 0 {
		os.MkdirAll(debCache, 0o755)
		cmd := exec.Command("apt-get", "download", "busybox-static:arm64")
		cmd.Dir = debCache
		if out, err := cmd.CombinedOutput(); err != nil {
			require.Missing(t, fmt.Sprintf("apt-get download busybox-static:arm64: %v\n%s", err, out))
		}
		debs, _ = filepath.Glob(filepath.Join(debCache, "busybox-static_*_arm64.deb"))
	}
	src := filepath.Join(t.TempDir(), "root")
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], src).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v\n%s", err, out)
	}
	for _, a := range []string{"sh", "rm", "cat", "sleep", "echo", "tty"} {
		if err := os.Symlink("busybox", filepath.Join(src, "bin", a)); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "bar"), []byte("bar\n"), 0o644)
	return src
}

// shellLab is a state dir with fleet.yaml and one imported image, "base".
type shellLab struct {
	cfg, state string
	store      *images.Store
}

func newShellLab(t *testing.T, src string, prepare bool) *shellLab {
	t.Helper()
	dir := t.TempDir()
	l := &shellLab{cfg: filepath.Join(dir, "fleet.yaml"), state: filepath.Join(dir, "st")}
	os.WriteFile(l.cfg, []byte("server: {state: st, ports: {http: 1}}\n"), 0o644)
	args := []string{"image", "import", "-c", l.cfg, "--name", "base", src}
	if !prepare {
		args = append(args, "--no-prepare")
	}
	if code, _, errOut := runCLI(args...); code != 0 {
		t.Fatalf("import: exit %d %s", code, errOut)
	}
	var err error
	l.store, err = images.OpenStore(filepath.Join(l.state, "images"))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// digest hashes the trees of an image's layers: every path's metadata, content and xattrs.
func (l *shellLab) digest(t *testing.T, image string) string {
	t.Helper()
	layers, err := l.store.Layers(image)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	for _, dir := range layers {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			fmt.Fprintf(h, "%s %o %d %d %d %d %d\n", strings.TrimPrefix(p, dir), st.Mode, st.Uid, st.Gid, st.Size, st.Mtim.Nano(), st.Rdev)
			if st.Mode&unix.S_IFMT == unix.S_IFREG {
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				h.Write(b)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// tempDirs lists what the store holds in progress (a temp dir left behind is a half layer).
func (l *shellLab) tempDirs(t *testing.T) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(l.state, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && strings.HasPrefix(d.Name(), ".tmp") {
			out = append(out, p)
			return fs.SkipDir
		}
		return nil
	})
	return out
}

// mountsUnder lists the host's mounts whose mount point or options name dir (other tests
// on the machine may mount things meanwhile: only the test's own dirs count).
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, dir) {
			out = append(out, line)
		}
	}
	return out
}

// TestImageShell: the command's writes and deletions become the new image's top layer
// (a whiteout for the deletion), the base stays byte for byte, a failing command makes no
// image and passes its exit status on, and nothing stays mounted or half-made. What
// `board commit` leaves out is left out (server.commit.exclude in fleet.yaml included),
// and a new log dir is in the layer, empty, with its owner and mode.
func TestImageShell(t *testing.T) {
	needsImageShell(t)
	l := newShellLab(t, busyboxSource(t), false)
	before := l.digest(t, "base")
	if err := os.WriteFile(l.cfg, []byte("server: {state: st, ports: {http: 1}, commit: {exclude: [/srv/cache]}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := runCLI("image", "shell", "-c", l.cfg, "base", "--as", "v2", "--", "sh", "-c", "echo x > /etc/foo; rm /etc/bar; "+
		"busybox mkdir -p /srv/cache /var/log/foo && echo c > /srv/cache/blob && echo l > /var/log/foo/foo.log && "+
		"busybox chmod 750 /var/log/foo && busybox chown 7:4 /var/log/foo && echo id > /etc/machine-id")
	if code != 0 {
		t.Fatalf("image shell: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "created image v2") {
		t.Errorf("stdout %q", out)
	}
	v2, err := l.store.Layers("v2")
	if err != nil {
		t.Fatal(err)
	}
	base, _ := l.store.Layers("base")
	if len(v2) != len(base)+1 || strings.Join(v2[1:], ":") != strings.Join(base, ":") {
		t.Fatalf("v2 layers %v, want one layer over base's %v", v2, base)
	}
	if b, err := os.ReadFile(filepath.Join(v2[0], "etc", "foo")); err != nil || string(b) != "x\n" {
		t.Errorf("new layer etc/foo = %q, %v", b, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(v2[0], "etc", "bar"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("new layer etc/bar: want a whiteout, got mode %o rdev %d (%v)", st.Mode, st.Rdev, err)
	}
	for _, p := range []string{"srv/cache", "var/log/foo/foo.log", "etc/machine-id"} {
		if _, err := os.Lstat(filepath.Join(v2[0], p)); err == nil {
			t.Errorf("new layer holds %s, which board commit leaves out", p)
		}
	}
	if err := unix.Lstat(filepath.Join(v2[0], "var/log/foo"), &st); err != nil || st.Mode != unix.S_IFDIR|0o750 || st.Uid != 7 || st.Gid != 4 {
		t.Errorf("new layer var/log/foo: mode %o owner %d:%d (%v), want the dir made, 750 7:4", st.Mode, st.Uid, st.Gid, err)
	}
	for _, img := range []string{"base", "v2"} {
		if code, out, errOut := runCLI("image", "verify", "-c", l.cfg, img); code != 0 {
			t.Errorf("image verify %s: exit %d\n%s%s", img, code, out, errOut)
		}
	}
	if l.digest(t, "base") != before {
		t.Error("base's layers changed")
	}

	code, out, errOut = runCLI("image", "shell", "-c", l.cfg, "v2", "--as", "v3", "--", "sh", "-c", "echo y > /etc/y; exit 7")
	if code != 7 || !strings.Contains(errOut, "command exited with status 7: no image made") {
		t.Errorf("failing command: exit %d, want 7 and \"no image made\"\n%s%s", code, out, errOut)
	}
	if l.store.Exists("v3") {
		t.Error("a failing command made image v3")
	}
	if d := l.tempDirs(t); len(d) > 0 {
		t.Errorf("left behind: %v", d)
	}
	if m := mountsUnder(t, l.state); len(m) > 0 {
		t.Errorf("the host's mount table holds: %q", m)
	}
	if code, _, errOut := runCLI("image", "shell", "-c", l.cfg, "base", "--as", "v2", "--", "true"); code != 1 || !strings.Contains(errOut, "image v2 exists") {
		t.Errorf("--as an existing image: exit %d %s", code, errOut)
	}
	// A command that changes nothing makes an image with no layer of its own (an empty
	// layer could even be one the stack has already).
	code, out, errOut = runCLI("image", "shell", "-c", l.cfg, "v2", "--as", "same", "--", "cat", "/etc/foo")
	if code != 0 || out != "x\ncreated image same: the same as v2 (the command changed nothing)\n" {
		t.Errorf("no-op command: exit %d\n%s%s", code, out, errOut)
	}
	if same, err := l.store.Layers("same"); err != nil || strings.Join(same, ":") != strings.Join(v2, ":") {
		t.Errorf("image same has layers %v (%v), want v2's %v", same, err, v2)
	}
}

// TestImageShellInterrupted: Ctrl-C (SIGINT to pifleet's whole process group) while the
// command runs ends it and everything it started, and leaves no image, no temp dir and no
// mount. A pifleet killed with SIGKILL takes the command and its mounts with it (the
// helper's parent-death signal); its temp dir is swept by the store later.
func TestImageShellInterrupted(t *testing.T) {
	needsImageShell(t)
	l := newShellLab(t, busyboxSource(t), false)
	bin := filepath.Join(t.TempDir(), "pifleet")
	if out, err := exec.Command("go", "build", "-buildvcs=false", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, c := range []struct {
		sig   syscall.Signal
		group bool
		code  int
	}{{syscall.SIGINT, true, 130}, {syscall.SIGKILL, false, -1}} {
		cmd := exec.Command(bin, "image", "shell", "-c", l.cfg, "base", "--as", "v2", "--",
			"sh", "-c", "echo x > /etc/foo; sleep 876543 & echo started; sleep 876544")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || line != "started\n" {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			t.Fatalf("read %q, %v; stderr %s", line, err, stderr.String())
		}
		if c.group {
			syscall.Kill(-cmd.Process.Pid, c.sig)
		} else {
			syscall.Kill(cmd.Process.Pid, c.sig)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			t.Fatalf("%v: pifleet did not end", c.sig)
		}
		if code := cmd.ProcessState.ExitCode(); code != c.code {
			t.Errorf("%v: exit %d, want %d; stderr %s", c.sig, code, c.code, stderr.String())
		}
		// The kernel kills the namespace's processes as its pid 1 goes; after a SIGKILL of
		// pifleet that happens a moment later.
		var ps []string
		for range 100 {
			if ps = processesWith("87654"); len(ps) == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if len(ps) > 0 {
			t.Errorf("%v: left running: %v", c.sig, ps)
		}
		if l.store.Exists("v2") {
			t.Errorf("%v: an interrupted shell made image v2", c.sig)
		}
		if m := mountsUnder(t, l.state); len(m) > 0 {
			t.Errorf("%v: the host's mount table holds: %q", c.sig, m)
		}
		left := l.tempDirs(t)
		if c.group && len(left) > 0 {
			t.Errorf("%v: left behind: %v", c.sig, left)
		}
		if !c.group {
			// What the store sweeps once it is a day old.
			old := time.Now().Add(-25 * time.Hour)
			for _, d := range left {
				os.Chtimes(d, old, old)
			}
			if _, err := images.OpenStore(filepath.Join(l.state, "images")); err != nil {
				t.Fatal(err)
			}
			if d := l.tempDirs(t); len(d) > 0 {
				t.Errorf("%v: not swept: %v", c.sig, d)
			}
		}
	}
}

// processesWith lists the host's processes whose command line contains s.
func processesWith(s string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) && e.Name() != fmt.Sprint(os.Getpid()) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// TestImageShellDebOnBookworm: a .deb built here is installed with dpkg -i in a stock
// Debian bookworm arm64 image (built by test/e2e/distro/build-bookworm.sh, cached), from a
// host dir bound with --bind; the new image has the package, the old one is unchanged.
func TestImageShellDebOnBookworm(t *testing.T) {
	needsImageShell(t)
	require.Tools(t, map[string]string{"mmdebstrap": "mmdebstrap", "xz": "xz-utils"})
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command(filepath.Join(root, "test/e2e/distro/build-bookworm.sh"), debCache)
	var buildErr strings.Builder
	build.Stderr = &buildErr
	imgPath, err := build.Output()
	if err != nil {
		t.Fatalf("build-bookworm.sh: %v\n%s", err, buildErr.String())
	}
	l := newShellLab(t, strings.TrimSpace(string(imgPath)), true)
	before := l.digest(t, "base")

	debs := t.TempDir()
	pkg := filepath.Join(t.TempDir(), "pkg")
	os.MkdirAll(filepath.Join(pkg, "DEBIAN"), 0o755)
	os.MkdirAll(filepath.Join(pkg, "usr", "share", "pifleet-test"), 0o755)
	os.WriteFile(filepath.Join(pkg, "DEBIAN", "control"), []byte("Package: pifleet-test\nVersion: 1.0\nArchitecture: all\n"+
		"Maintainer: pifleet <test@example.invalid>\nDescription: image shell test package\n"), 0o644)
	os.WriteFile(filepath.Join(pkg, "usr", "share", "pifleet-test", "hello"), []byte("hello\n"), 0o644)
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", pkg, filepath.Join(debs, "pifleet-test.deb")).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v\n%s", err, out)
	}
	code, out, errOut := runCLI("image", "shell", "-c", l.cfg, "base", "--as", "v3", "--bind", debs+":/srv/debs",
		"--", "dpkg", "-i", "/srv/debs/pifleet-test.deb")
	if code != 0 {
		t.Fatalf("image shell dpkg -i: exit %d\n%s%s", code, out, errOut)
	}
	v3, err := l.store.Layers("v3")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(v3[0], "usr", "share", "pifleet-test", "hello")); err != nil || string(b) != "hello\n" {
		t.Errorf("new layer lacks the package's file: %q %v", b, err)
	}
	if b, _ := os.ReadFile(filepath.Join(v3[0], "var", "lib", "dpkg", "status")); !strings.Contains(string(b), "Package: pifleet-test\nStatus: install ok installed") {
		t.Error("dpkg's status in the new layer lacks pifleet-test installed")
	}
	for _, p := range []string{"srv/debs", "proc/1", "var/log/dpkg.log", "etc/resolv.conf"} {
		if _, err := os.Lstat(filepath.Join(v3[0], p)); err == nil {
			t.Errorf("new layer holds %s", p)
		}
	}
	if l.digest(t, "base") != before {
		t.Error("base's layers changed")
	}
	for _, img := range []string{"base", "v3"} {
		if code, out, errOut := runCLI("image", "verify", "-c", l.cfg, img); code != 0 {
			t.Errorf("image verify %s: exit %d\n%s%s", img, code, out, errOut)
		}
	}
}

// openPTY returns a new pseudo-terminal's master and slave.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// TestImageShellInteractive: on a terminal the command runs in the terminal's foreground:
// Ctrl-C reaches the command alone, not pifleet. A login shell (the default) goes on after
// Ctrl-C interrupts what runs in it, and what the session wrote becomes the new image when
// it exits 0; so does a command that traps SIGINT, which needs pifleet out of the way (a
// shell with job control takes the foreground itself).
func TestImageShellInteractive(t *testing.T) {
	needsImageShell(t)
	l := newShellLab(t, busyboxSource(t), false)
	bin := filepath.Join(t.TempDir(), "pifleet")
	if out, err := exec.Command("go", "build", "-buildvcs=false", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, c := range []struct {
		as      string
		command []string
		input   string // typed before and after Ctrl-C
	}{
		{"v2", nil, "sleep 765432\n"},
		{"v3", []string{"--", "sh", "-c", `trap "echo caught" INT; echo ready; sleep 765432; echo after > /etc/after; echo done; read x`}, ""},
	} {
		master, slave := openPTY(t)
		cmd := exec.Command(bin, append([]string{"image", "shell", "-c", l.cfg, "base", "--as", c.as}, c.command...)...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		slave.Close()
		defer cmd.Process.Kill()
		var mu sync.Mutex
		var screen strings.Builder
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := master.Read(buf)
				mu.Lock()
				screen.Write(buf[:n])
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
		waitFor := func(what string, cond func() bool) {
			t.Helper()
			for range 300 {
				if cond() {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("%s: waiting for %s; terminal:\n%s", c.as, what, screen.String())
		}
		onScreen := func(s string) func() bool {
			return func() bool { mu.Lock(); defer mu.Unlock(); return strings.Contains(screen.String(), s) }
		}
		if c.command == nil {
			master.WriteString("tty; echo rea''dy\n")
		}
		waitFor("the command", onScreen("ready"))
		if c.command == nil {
			// The terminal has its name inside too.
			waitFor("tty to name the terminal", onScreen("\n/dev/pts/"))
		}
		master.WriteString(c.input)
		waitFor("sleep to run", func() bool { return len(processesWith("sleep\x00765432\x00")) > 0 })
		master.WriteString("\x03") // Ctrl-C
		waitFor("sleep to end", func() bool { return len(processesWith("sleep\x00765432\x00")) == 0 })
		if c.command == nil {
			master.WriteString("echo after > /etc/after; echo do''ne\n")
		}
		waitFor("the command to go on after Ctrl-C", onScreen("done"))
		master.WriteString("exit 0\n")
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				mu.Lock()
				t.Fatalf("%s: pifleet: %v; terminal:\n%s", c.as, err, screen.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: pifleet did not end", c.as)
		}
		layers, err := l.store.Layers(c.as)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(layers[0], "etc", "after")); err != nil || string(b) != "after\n" {
			t.Errorf("%s: new layer etc/after = %q, %v", c.as, b, err)
		}
	}
}
