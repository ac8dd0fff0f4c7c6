package shell

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/overlay"
	"github.com/pifleet/pifleet/test/require"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if IsHelper() {
		os.Exit(Main())
	}
	os.Exit(m.Run())
}

// debCache is where the tests share downloaded .debs (as images/demo and test/e2e do).
const debCache = "/var/cache/pifleet-test"

// busyboxDeb returns busybox-static:arm64's .deb, downloading it once with apt-get.
func busyboxDeb(t *testing.T) string {
	t.Helper()
	if m, _ := filepath.Glob(filepath.Join(debCache, "busybox-static_*_arm64.deb")); len(m) > 0 {
		return m[0]
	}
	require.Tool(t, "apt-get", "apt")
	if err := os.MkdirAll(debCache, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("apt-get", "download", "busybox-static:arm64")
	cmd.Dir = debCache
	if out, err := cmd.CombinedOutput(); err != nil {
		require.Missing(t, fmt.Sprintf("apt-get download busybox-static:arm64 (dpkg --add-architecture arm64; apt-get update): %v\n%s", err, out))
	}
	m, _ := filepath.Glob(filepath.Join(debCache, "busybox-static_*_arm64.deb"))
	if len(m) == 0 {
		t.Fatal("apt-get download left no busybox-static .deb")
	}
	return m[0]
}

// busyboxRoot makes a minimal arm64 root in dir: busybox with a few applet links, /etc
// with bar and passwd. It has no /proc, /dev, /sys, /run or /tmp: image shell makes them.
func busyboxRoot(t *testing.T, dir string) {
	t.Helper()
	require.Tool(t, "dpkg-deb", "dpkg")
	if out, err := exec.Command("dpkg-deb", "-x", busyboxDeb(t), dir).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v\n%s", err, out)
	}
	for _, a := range []string{"sh", "rm", "cat", "ls", "sleep", "touch", "mkdir", "echo", "grep", "stat", "mount"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatal(err)
		}
	}
	must(t, os.MkdirAll(filepath.Join(dir, "etc"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "etc", "bar"), []byte("bar\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// needs is what every test running the helper needs: root, the kernel overlay, and on a
// host that is not arm64 an enabled qemu-aarch64 binfmt handler.
func needs(t *testing.T) {
	t.Helper()
	require.Root(t, "mounts overlayfs, proc and sysfs in a private namespace")
	if runtime.GOARCH != "arm64" {
		bf, err := readBinfmt(DefaultBinfmtDir)
		if err != nil {
			t.Fatal(err)
		}
		head := append([]byte("\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"), make([]byte, 44)...)
		if err := bf.checkRunnable("x86_64", "/bin/busybox", head); err != nil {
			require.Missing(t, err.Error())
		}
	}
}

type fixture struct {
	lowers               []string
	upper, work, scratch string
	tmp                  string
}

// newFixture makes a two-layer image: the busybox root, and over it a layer adding
// /etc/baz.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	tmp := t.TempDir()
	f := &fixture{tmp: tmp, lowers: []string{filepath.Join(tmp, "l1"), filepath.Join(tmp, "l0")},
		upper: filepath.Join(tmp, "run", "upper"), work: filepath.Join(tmp, "run", "work"), scratch: filepath.Join(tmp, "run", "mnt")}
	busyboxRoot(t, f.lowers[1])
	must(t, os.MkdirAll(filepath.Join(f.lowers[0], "etc"), 0o755))
	must(t, os.WriteFile(filepath.Join(f.lowers[0], "etc", "baz"), []byte("baz\n"), 0o644))
	// Attributes a copy-up of /etc must keep, though the scaffold layer (resolv.conf) sits
	// on top of it.
	must(t, os.Lchown(filepath.Join(f.lowers[0], "etc"), 7, 8))
	must(t, os.Chmod(filepath.Join(f.lowers[0], "etc"), 0o751))
	must(t, unix.Lsetxattr(filepath.Join(f.lowers[0], "etc"), "user.pifleet-test", []byte("v"), 0))
	for _, d := range []string{f.upper, f.work, f.scratch} {
		must(t, os.MkdirAll(d, 0o700))
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Join(tmp, "run")) })
	return f
}

func (f *fixture) opts(cmd ...string) Options {
	return Options{Lowers: f.lowers, Upper: f.upper, Work: f.work, Scratch: f.scratch, Command: cmd}
}

// treeDigest hashes every path's type, mode, owner, size, mtime, content, link target,
// device and xattrs under dir.
func treeDigest(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %o %d %d %d %d %d\n", strings.TrimPrefix(p, dir), st.Mode, st.Uid, st.Gid, st.Size, st.Mtim.Nano(), st.Rdev)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h.Write(b)
		case unix.S_IFLNK:
			l, _ := os.Readlink(p)
			h.Write([]byte(l))
		}
		names, err := listXattrs(p)
		if err != nil {
			return err
		}
		for _, n := range names {
			v, _ := getXattr(p, n)
			fmt.Fprintf(h, "%s=%x\n", n, v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
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

// TestRunChangesBecomeLayer: the command's writes and deletions land in the upper, which
// Clean turns into a layer (a whiteout of its own for the deletion, no overlay
// bookkeeping, no mount points); the lowers and the host's mount table are unchanged.
func TestRunChangesBecomeLayer(t *testing.T) {
	needs(t)
	f := newFixture(t)
	before := []string{treeDigest(t, f.lowers[0]), treeDigest(t, f.lowers[1])}
	var out bytes.Buffer
	o := f.opts("sh", "-c", "echo x > /etc/foo; rm /etc/bar /etc/baz; cat /etc/passwd; mkdir -p /var/log/pkg; echo log > /var/log/pkg/l; touch /tmp/t /run/r")
	o.Stdout, o.Stderr = &out, &out
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "root:x:0:0") {
		t.Errorf("output %q lacks /etc/passwd", out.String())
	}
	dropped, err := Clean(f.upper, f.lowers, layerExcludes(t))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(dropped, " ") != "/var/log/pkg/l" {
		t.Errorf("dropped %q, want /var/log/pkg/l", dropped)
	}
	if b, err := os.ReadFile(filepath.Join(f.upper, "etc", "foo")); err != nil || string(b) != "x\n" {
		t.Errorf("etc/foo = %q, %v", b, err)
	}
	for _, name := range []string{"bar", "baz"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(f.upper, "etc", name), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 || st.Nlink != 1 {
			t.Errorf("etc/%s: want a whiteout of its own (char 0/0, 1 link), got mode %o rdev %d nlink %d (%v)", name, st.Mode, st.Rdev, st.Nlink, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(f.upper, "etc"), &st); err != nil || st.Mode&0o7777 != 0o751 || st.Uid != 7 || st.Gid != 8 {
		t.Errorf("upper /etc: mode %o owner %d:%d (%v), want the image's 751 7:8", st.Mode&0o7777, st.Uid, st.Gid, err)
	}
	if v, err := getXattr(filepath.Join(f.upper, "etc"), "user.pifleet-test"); err != nil || string(v) != "v" {
		t.Errorf("upper /etc lost the image's xattr: %q %v", v, err)
	}
	var names []string
	filepath.WalkDir(f.upper, func(p string, d fs.DirEntry, err error) error {
		names = append(names, strings.TrimPrefix(p, f.upper))
		if xs, _ := listXattrs(p); len(xs) > 0 && !(strings.HasSuffix(p, "/etc") && len(xs) == 1) {
			t.Errorf("%s keeps xattrs %q", p, xs)
		}
		return nil
	})
	if got, want := strings.Join(names, " "), " /etc /etc/bar /etc/baz /etc/foo /var /var/log /var/log/pkg"; got != want {
		t.Errorf("upper holds %q, want %q", got, want)
	}
	after := []string{treeDigest(t, f.lowers[0]), treeDigest(t, f.lowers[1])}
	if before[0] != after[0] || before[1] != after[1] {
		t.Error("a lower changed")
	}
	if m := mountsUnder(t, f.tmp); len(m) > 0 {
		t.Errorf("the host's mount table holds: %q", m)
	}
}

// layerExcludes is images.LayerExcludes, compiled.
func layerExcludes(t *testing.T) *overlay.Excludes {
	ex, err := overlay.ParseExcludes(images.LayerExcludes())
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

// TestRunEnvironment: /proc (the namespace's own), /dev/null, a read-only bind, the host's
// DNS config and a clean environment inside the root.
func TestRunEnvironment(t *testing.T) {
	needs(t)
	f := newFixture(t)
	debs := t.TempDir()
	must(t, os.WriteFile(filepath.Join(debs, "pkg.deb"), []byte("deb"), 0o644))
	var out bytes.Buffer
	o := f.opts("sh", "-c", `cat /proc/1/cmdline; echo; echo hi hi > /dev/null && echo null-ok; cat /srv/debs/pkg.deb; echo; `+
		`touch /srv/debs/x 2>/dev/null || echo bind-ro; cat /etc/resolv.conf; echo PATH=$PATH FOO=$FOO HOMEV=$HOME; `+
		`ls /proc/1/exe >/dev/null && echo proc-ok; ls /dev/pts/ptmx >/dev/null && echo pts-ok; `+
		// Package scripts (resolvconf, systemd-resolved) replace it with a symlink.
		`rm /etc/resolv.conf && echo resolv-replaceable; `+
		// ischroot's test: pid 1's root is not the command's.
		`[ "$(stat -L -c %d:%i /proc/1/root)" != "$(stat -c %d:%i /)" ] && echo chroot-visible`)
	o.Binds = []Bind{{Host: debs, Path: "/srv/debs"}}
	o.Env = []string{"FOO=bar"}
	o.Stdout, o.Stderr = &out, &out
	t.Setenv("SECRET_FROM_HOST", "x")
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	resolv, _ := os.ReadFile("/etc/resolv.conf")
	for _, want := range []string{helperName, "null-ok\n", "deb\n", "bind-ro\n", string(resolv),
		"PATH=" + defaultPath + " FOO=bar HOMEV=/root\n", "proc-ok\n", "pts-ok\n", "resolv-replaceable\n", "chroot-visible\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if _, err := Clean(f.upper, f.lowers, layerExcludes(t)); err != nil {
		t.Fatal(err)
	}
	var names []string
	filepath.WalkDir(f.upper, func(p string, d fs.DirEntry, err error) error {
		names = append(names, strings.TrimPrefix(p, f.upper))
		return nil
	})
	if got := strings.Join(names, " "); got != " /etc /etc/resolv.conf" {
		t.Errorf("upper holds %q, want only the deleted resolv.conf (mount points must stay out)", got)
	}
}

// TestRunExitStatus: a failing command's status comes back as *ExitError.
func TestRunExitStatus(t *testing.T) {
	needs(t)
	f := newFixture(t)
	err := Run(context.Background(), f.opts("sh", "-c", "exit 3"))
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 {
		t.Fatalf("got %v, want exit status 3", err)
	}
	f = newFixture(t)
	err = Run(context.Background(), f.opts("no-such-command"))
	if err == nil || !strings.Contains(err.Error(), "no-such-command: not found in the image") {
		t.Fatalf("got %v, want not found", err)
	}
}

// TestRunCancelKillsEverything: cancelling kills the command and what it started in the
// background, and leaves no mount behind.
func TestRunCancelKillsEverything(t *testing.T) {
	needs(t)
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	r, w, err := os.Pipe()
	must(t, err)
	defer r.Close()
	o := f.opts("sh", "-c", "sleep 987654 & echo started; sleep 987655")
	o.Stdout = w
	go func() { done <- Run(ctx, o) }()
	buf := make([]byte, 8)
	if _, err := r.Read(buf); err != nil {
		t.Fatal(err)
	}
	w.Close()
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("cancelled run returned no error")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("cancelled run did not return")
	}
	if pids := processesWith("98765"); len(pids) > 0 {
		t.Errorf("left running: %v", pids)
	}
	if m := mountsUnder(t, f.tmp); len(m) > 0 {
		t.Errorf("the host's mount table holds: %q", m)
	}
}

// processesWith lists the host's processes whose command line contains s.
func processesWith(s string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) && e.Name() != fmt.Sprint(os.Getpid()) {
			out = append(out, e.Name()+": "+string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
		}
	}
	return out
}

// TestRunWithoutQemu: on a host that is not arm64, an arm64 image with no qemu binfmt
// handler fails before the command runs, naming the Debian packages to install.
func TestRunWithoutQemu(t *testing.T) {
	needs(t)
	if runtime.GOARCH == "arm64" {
		t.Log("an arm64 host runs the image natively: nothing to check")
		return
	}
	f := newFixture(t)
	o := f.opts("sh", "-c", "echo ran")
	o.BinfmtDir = t.TempDir() // no handlers at all
	var out bytes.Buffer
	o.Stdout = &out
	err := Run(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "apt-get install qemu-user-static binfmt-support") {
		t.Fatalf("got %v, want an error naming qemu-user-static", err)
	}
	if out.Len() > 0 {
		t.Errorf("the command ran: %q", out.String())
	}
}

// TestRunManyLayers: a stack deeper than one page of mount(2) options mounts (the kernel
// gets one lower at a time), and the topmost layer wins.
func TestRunManyLayers(t *testing.T) {
	needs(t)
	f := newFixture(t)
	base := f.lowers[1]
	f.lowers = nil
	for i := range 80 {
		l := filepath.Join(f.tmp, fmt.Sprintf("a-layer-with-a-rather-long-directory-name-to-fill-the-options-%03d", i))
		must(t, os.MkdirAll(filepath.Join(l, "etc"), 0o755))
		must(t, os.WriteFile(filepath.Join(l, "etc", "layer"), []byte(fmt.Sprint(i)), 0o644))
		must(t, os.WriteFile(filepath.Join(l, "etc", fmt.Sprintf("only-%d", i)), nil, 0o644))
		f.lowers = append([]string{l}, f.lowers...)
	}
	f.lowers = append(f.lowers, base)
	var out bytes.Buffer
	o := f.opts("sh", "-c", "cat /etc/layer; echo; ls /etc/only-0 /etc/only-79")
	o.Stdout, o.Stderr = &out, &out
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if want := "79\n/etc/only-0\n/etc/only-79\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
}
