package demo

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/test/require"
)

// testCache is shared by all test runs on a machine so that CI downloads the .debs once.
const testCache = "/var/cache/pifleet-test"

var (
	treeOnce sync.Once
	treeDir  string
	treeInfo *Tree
	treeErr  error
)

// requireRoot skips tests that need root (chown, mknod, setuid, network namespaces).
func requireRoot(t *testing.T) {
	t.Helper()
	require.Root(t, "the demo image has root-owned, setuid and device files; CI runs as root")
}

// builtTree builds the demo tree once per test binary run.
func builtTree(t *testing.T) *Tree {
	t.Helper()
	requireRoot(t)
	treeOnce.Do(func() {
		treeDir, treeErr = os.MkdirTemp("", "pifleet-demo-test-")
		if treeErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		treeInfo, treeErr = BuildTree(ctx, filepath.Join(treeDir, "root"), Options{CacheDir: testCache, Logger: log})
	})
	if treeErr != nil {
		t.Fatalf("BuildTree: %v", treeErr)
	}
	return treeInfo
}

func TestMain(m *testing.M) {
	code := m.Run()
	if treeDir != "" {
		os.RemoveAll(treeDir)
	}
	os.Exit(code)
}

func TestTreeLayout(t *testing.T) {
	tr := builtTree(t)
	type want struct {
		path     string
		mode     os.FileMode // permission + setuid/sticky bits; 0 = only check existence
		uid, gid uint32
		typ      os.FileMode
	}
	for _, w := range []want{
		{"bin/busybox", 0o755, 0, 0, 0},
		{"bin/sh", 0, 0, 0, os.ModeSymlink},
		{"sbin/init", 0, 0, 0, os.ModeSymlink},
		{"etc/passwd", 0o644, 0, 0, 0},
		{"etc/shadow", 0o640, 0, 42, 0},
		{"etc/group", 0o644, 0, 0, 0},
		{"etc/inittab", 0o644, 0, 0, 0},
		{"etc/init.d/rcS", 0o755, 0, 0, 0},
		{"etc/hostname", 0o644, 0, 0, 0},
		{"usr/local/bin/pifleet-euid", 0o755 | os.ModeSetuid, 0, 0, 0},
		{"usr/local/bin/pifleet-check", 0o755, 0, 0, 0},
		{"tmp", 0o777 | os.ModeSticky, 0, 0, os.ModeDir},
		{"home/pi", 0o755, 1000, 1000, os.ModeDir},
		{"proc", 0, 0, 0, os.ModeDir},
		{"sys", 0, 0, 0, os.ModeDir},
		{"run", 0, 0, 0, os.ModeDir},
		{"dev/console", 0o600, 0, 0, os.ModeDevice | os.ModeCharDevice},
		{"lib/modules/" + tr.KernelVersion + "/modules.dep", 0o644, 0, 0, 0},
		{"boot/firmware/kernel8.img", 0o644, 0, 0, 0},
		{"boot/firmware/initramfs8", 0o644, 0, 0, 0},
		{"boot/firmware/config.txt", 0o644, 0, 0, 0},
		{"boot/firmware/cmdline.txt", 0o644, 0, 0, 0},
		{"boot/firmware/start4.elf", 0o644, 0, 0, 0},
		{"boot/firmware/fixup4.dat", 0o644, 0, 0, 0},
		{"boot/firmware/bootcode.bin", 0o644, 0, 0, 0},
		{"boot/firmware/bcm2711-rpi-4-b.dtb", 0o644, 0, 0, 0},
		{"boot/firmware/bcm2837-rpi-3-b.dtb", 0o644, 0, 0, 0},
	} {
		fi, err := os.Lstat(filepath.Join(tr.Root, w.path))
		if err != nil {
			t.Errorf("%s: %v", w.path, err)
			continue
		}
		if fi.Mode().Type() != w.typ {
			t.Errorf("%s: type %v, want %v", w.path, fi.Mode().Type(), w.typ)
		}
		if w.mode != 0 && fi.Mode()&^os.ModeType != w.mode {
			t.Errorf("%s: mode %v, want %v", w.path, fi.Mode()&^os.ModeType, w.mode)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != w.uid || st.Gid != w.gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", w.path, st.Uid, st.Gid, w.uid, w.gid)
		}
	}
	passwd, _ := os.ReadFile(filepath.Join(tr.Root, "etc/passwd"))
	if !strings.Contains(string(passwd), "\npi:x:1000:1000:") {
		t.Errorf("/etc/passwd has no user pi (uid 1000):\n%s", passwd)
	}
	cfg, _ := os.ReadFile(filepath.Join(tr.Root, "boot/firmware/config.txt"))
	for _, line := range []string{"arm_64bit=1", "kernel=kernel8.img", "initramfs initramfs8 followkernel", "enable_uart=1"} {
		if !strings.Contains(string(cfg), line+"\n") {
			t.Errorf("config.txt lacks %q:\n%s", line, cfg)
		}
	}
	kernel, err := os.ReadFile(filepath.Join(tr.Root, "boot/firmware/kernel8.img"))
	if err != nil || !IsArm64Image(kernel) {
		t.Errorf("kernel8.img is not an uncompressed arm64 Image (err %v)", err)
	}
}

// readInitramfs lists a gzip'd newc archive with cpio(1): name -> mode string.
func readInitramfs(t *testing.T, p string) map[string]string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("initramfs8 is not gzip: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("initramfs8: %v", err)
	}
	// Cross-check our writer with GNU cpio, a reader we did not write.
	cmd := exec.Command("cpio", "-t", "-v", "--quiet")
	cmd.Stdin = bytes.NewReader(raw)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -tv on initramfs8: %v", err)
	}
	entries := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 {
			t.Fatalf("odd cpio listing line %q", line)
		}
		name := f[len(f)-1]
		if f[0][0] == 'l' { // "name -> target"
			name = f[len(f)-3]
		}
		entries[name] = f[0]
	}
	return entries
}

func TestInitramfs(t *testing.T) {
	tr := builtTree(t)
	entries := readInitramfs(t, filepath.Join(tr.Root, "boot/firmware/initramfs8"))
	if m := entries["init"]; m != "-rwxr-xr-x" {
		t.Errorf("/init mode %q, want -rwxr-xr-x", m)
	}
	if m := entries["dev/console"]; !strings.HasPrefix(m, "c") {
		t.Errorf("/dev/console is %q, want a char device", m)
	}
	for _, mod := range []string{"virtio_net.ko", "virtio_pci.ko", "sunrpc.ko", "lockd.ko", "grace.ko", "nfs.ko", "nfsv3.ko", "dwc2.ko", "usbnet.ko", "cdc_ether.ko"} {
		found := false
		for name := range entries {
			if strings.HasPrefix(name, "lib/modules/"+tr.KernelVersion+"/") && filepath.Base(name) == mod {
				found = true
			}
		}
		if !found {
			t.Errorf("initramfs lacks %s", mod)
		}
	}
	// Load order: a module after everything it depends on.
	pos := map[string]int{}
	for i, m := range tr.Modules {
		pos[strings.TrimSuffix(filepath.Base(m), ".ko")] = i
	}
	for _, dep := range [][2]string{{"sunrpc", "lockd"}, {"grace", "lockd"}, {"lockd", "nfs"}, {"nfs", "nfsv3"}, {"usbnet", "cdc_ether"}, {"virtio_pci", "virtio_net"}} {
		a, okA := pos[dep[0]]
		b, okB := pos[dep[1]]
		if !okA || !okB || a > b {
			t.Errorf("module order: %s (%d, %v) must come before %s (%d, %v): %v", dep[0], a, okA, dep[1], b, okB, tr.Modules)
		}
	}
}

func TestBusyboxApplets(t *testing.T) {
	tr := builtTree(t)
	for _, a := range []string{"sh", "mount", "su", "udhcpc", "stat", "ln", "mv", "sha256sum"} {
		target, err := os.Readlink(filepath.Join(tr.Root, "bin", a))
		if err != nil || target != "busybox" {
			t.Errorf("/bin/%s -> %q (%v), want busybox", a, target, err)
		}
	}
	if _, err := busyboxApplets([]byte("no table here")); err == nil {
		t.Error("busyboxApplets accepted a binary without an applet table")
	}
}

func TestBuildImportsOnce(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	store, err := images.OpenStore(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var logs bytes.Buffer
	opts := Options{CacheDir: testCache, Name: "demo-test", Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	info, err := Build(ctx, store, opts)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if info == nil || !store.Exists("demo-test") {
		t.Fatalf("Build returned %+v but the store has no demo-test", info)
	}
	// The first line says what Build is about to do; image ls shows what it was built from.
	if first, _, _ := strings.Cut(logs.String(), "\n"); !strings.Contains(first, "demo image: building it once from Debian packages") {
		t.Errorf("Build's first log line is %q, want what it does", first)
	}
	if !strings.HasPrefix(info.Source, "debian: linux-image-6.1.0-") || !strings.Contains(info.Source, "busybox-static") {
		t.Errorf("demo image source = %q, want the Debian packages it was built from", info.Source)
	}
	root := store.RootDir("demo-test")
	fi, err := os.Stat(filepath.Join(root, "usr/local/bin/pifleet-euid"))
	if err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Errorf("imported pifleet-euid lost its setuid bit: %v %v", fi, err)
	}
	if fi, err := os.Lstat(filepath.Join(root, "dev/console")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("imported /dev/console is not a char device: %v %v", fi, err)
	}
	// A second Build must reuse the image, not rebuild it: the marker survives.
	marker := filepath.Join(root, "etc", "built-once")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(ctx, store, opts); err != nil {
		t.Fatalf("second Build: %v", err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("second Build replaced the existing image: %v", err)
	}
	// Only this process's: other processes (a developer's `make demo`) may share the cache.
	if left, _ := filepath.Glob(filepath.Join(testCache, fmt.Sprintf("demo-build-%d-*", os.Getpid()))); len(left) > 0 {
		t.Errorf("Build left its work dirs behind: %v", left)
	}
}

// TestEuidProbeIsArm64ELF checks the hand-made probe with Go's ELF reader (running it needs
// an arm64 machine: test/e2e does that over NFS).
func TestEuidProbeIsArm64ELF(t *testing.T) {
	f, err := elf.NewFile(bytes.NewReader(euidProbe()))
	if err != nil {
		t.Fatalf("euid probe is not an ELF file: %v", err)
	}
	if f.Machine != elf.EM_AARCH64 || f.Class != elf.ELFCLASS64 || f.Type != elf.ET_EXEC {
		t.Errorf("euid probe: machine %v class %v type %v, want AArch64 64-bit executable", f.Machine, f.Class, f.Type)
	}
	if len(f.Progs) != 1 || f.Entry < f.Progs[0].Vaddr || f.Entry >= f.Progs[0].Vaddr+f.Progs[0].Filesz {
		t.Errorf("euid probe: entry %#x outside its one segment %+v", f.Entry, f.Progs)
	}
}
