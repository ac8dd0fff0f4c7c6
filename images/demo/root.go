package demo

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

//go:embed files
var files embed.FS

// initramfsModules are what the initramfs loads, by module name; their dependencies are
// added in load order at build time. virtio for QEMU -M virt; dwc2 + usbnet for a Pi 3's
// (and QEMU -M raspi3b's usb-net) Ethernet; sunrpc..nfsv3 for the NFS root. Debian's
// kernel has all of them as modules.
var initramfsModules = []string{
	"virtio_pci", "virtio_net",
	"phy_generic", "dwc2", "usbnet", "cdc_ether", "rndis_host", "smsc95xx", "lan78xx",
	"sunrpc", "grace", "lockd", "nfs_acl", "nfs", "nfsv3",
}

// Tree describes a built demo root.
type Tree struct {
	// Root is the directory the tree was built in.
	Root string
	// KernelVersion is the /lib/modules directory name, e.g. 6.1.0-56-arm64.
	KernelVersion string
	// Modules are the initramfs's modules in load order, relative to /lib/modules/<ver>.
	Modules []string
}

// BuildTree builds the demo root into dst (which must not exist yet) without importing it:
// Build uses it, and tests can inspect the result. Needs root.
func BuildTree(ctx context.Context, dst string, opts Options) (*Tree, error) {
	log := opts.logger()
	if os.Geteuid() != 0 {
		return nil, errors.New("building the demo image needs root (root-owned, setuid and device files)")
	}
	d, err := fetchDebs(ctx, opts)
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(dst, 0o755); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	ext, err := os.MkdirTemp(filepath.Dir(dst), "extract-")
	if err != nil {
		return nil, fmt.Errorf("extract: %w", err)
	}
	defer os.RemoveAll(ext)
	log.Info("demo image: extracting packages", "dir", ext)
	for _, deb := range []string{d.kernel, d.busybox, d.firmware} {
		if err := extract(ctx, deb, ext); err != nil {
			return nil, err
		}
	}
	ver := d.kernelVersion
	// The .deb ships no modules.dep (postinst runs depmod); make it for the extracted tree.
	if _, err := run(ctx, "", "depmod", "-b", ext, ver); err != nil {
		return nil, fmt.Errorf("modules of %s: %w", ver, err)
	}
	mods, err := moduleOrder(ctx, ext, ver, initramfsModules)
	if err != nil {
		return nil, err
	}
	t := &Tree{Root: dst, KernelVersion: ver, Modules: mods}
	b := &builder{dst: dst, ext: ext, ver: ver}
	b.layout(mods)
	if b.err != nil {
		return nil, fmt.Errorf("root: %w", b.err)
	}
	if _, err := run(ctx, "", "depmod", "-b", dst, ver); err != nil {
		return nil, fmt.Errorf("modules of %s in the root: %w", ver, err)
	}
	if err := b.bootFiles(mods); err != nil {
		return nil, fmt.Errorf("boot files: %w", err)
	}
	log.Info("demo image: tree built", "root", dst, "kernel", ver, "modules", len(mods))
	return t, nil
}

// moduleOrder returns want and their dependencies in load order, each once, as paths
// relative to lib/modules/<ver>. Built-in modules are left out.
func moduleOrder(ctx context.Context, tree, ver string, want []string) ([]string, error) {
	base := filepath.Join(tree, "lib", "modules", ver) + "/"
	var order []string
	seen := map[string]bool{}
	for _, m := range want {
		out, err := run(ctx, "", "modprobe", "--show-depends", "-d", tree, "-S", ver, m)
		if err != nil {
			return nil, fmt.Errorf("dependencies of module %s: %w", m, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 2 || f[0] != "insmod" {
				continue // "builtin x"
			}
			p := filepath.Clean(f[1])
			rel, ok := strings.CutPrefix(p, filepath.Clean(base)+"/")
			if !ok {
				return nil, fmt.Errorf("module %s: %s is outside %s", m, p, base)
			}
			if !seen[rel] {
				seen[rel] = true
				order = append(order, rel)
			}
		}
	}
	return order, nil
}

// builder lays out the root; the first error sticks and later steps are skipped.
type builder struct {
	dst, ext, ver string
	err           error
}

func (b *builder) path(p string) string { return filepath.Join(b.dst, p) }

func (b *builder) mkdir(p string, perm os.FileMode, uid, gid int) {
	if b.err != nil {
		return
	}
	if b.err = os.MkdirAll(b.path(p), 0o755); b.err != nil {
		return
	}
	b.own(p, perm, uid, gid)
}

// own sets owner then mode: chown clears setuid bits, so the mode must come second.
func (b *builder) own(p string, perm os.FileMode, uid, gid int) {
	if b.err != nil {
		return
	}
	if err := os.Lchown(b.path(p), uid, gid); err != nil {
		b.err = err
		return
	}
	if err := os.Chmod(b.path(p), perm); err != nil {
		b.err = err
	}
}

func (b *builder) write(p string, data []byte, perm os.FileMode, uid, gid int) {
	if b.err != nil {
		return
	}
	if b.err = os.MkdirAll(filepath.Dir(b.path(p)), 0o755); b.err != nil {
		return
	}
	if b.err = os.WriteFile(b.path(p), data, 0o600); b.err != nil {
		return
	}
	b.own(p, perm, uid, gid)
}

func (b *builder) embedded(name, p string, perm os.FileMode) {
	if b.err != nil {
		return
	}
	data, err := files.ReadFile("files/" + name)
	if err != nil {
		b.err = err
		return
	}
	b.write(p, data, perm, 0, 0)
}

// copyFrom copies a file from the extracted packages.
func (b *builder) copyFrom(src, p string, perm os.FileMode) {
	if b.err != nil {
		return
	}
	data, err := os.ReadFile(filepath.Join(b.ext, src))
	if err != nil {
		b.err = err
		return
	}
	b.write(p, data, perm, 0, 0)
}

func (b *builder) symlink(target, p string) {
	if b.err != nil {
		return
	}
	if b.err = os.MkdirAll(filepath.Dir(b.path(p)), 0o755); b.err == nil {
		b.err = os.Symlink(target, b.path(p))
	}
}

func (b *builder) mknod(p string, perm uint32, major, minor uint32) {
	if b.err != nil {
		return
	}
	if err := unix.Mknod(b.path(p), unix.S_IFCHR|perm, int(unix.Mkdev(major, minor))); err != nil {
		b.err = fmt.Errorf("mknod %s: %w", p, err)
		return
	}
	b.own(p, os.FileMode(perm), 0, 0)
}

const (
	passwd = "root:x:0:0:root:/root:/bin/sh\n" +
		"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n" +
		"pi:x:1000:1000:pi:/home/pi:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	// Locked passwords: the console shell is root already; the e2e test uses su as root.
	shadow = "root:*:19000:0:99999:7:::\n" +
		"daemon:*:19000:0:99999:7:::\n" +
		"pi:*:19000:0:99999:7:::\n" +
		"nobody:*:19000:0:99999:7:::\n"
	group = "root:x:0:\ndaemon:x:1:\nshadow:x:42:\npi:x:1000:\nnogroup:x:65534:\n"
)

// sbinApplets get a /sbin link as well, where scripts and habits look for them.
var sbinApplets = []string{"init", "halt", "poweroff", "reboot", "getty", "modprobe", "insmod",
	"rmmod", "lsmod", "ifconfig", "route", "udhcpc", "switch_root", "syslogd", "klogd"}

// layout writes everything but /boot/firmware.
func (b *builder) layout(mods []string) {
	for _, d := range []struct {
		p    string
		perm os.FileMode
		uid  int
	}{
		{"bin", 0o755, 0}, {"sbin", 0o755, 0}, {"usr/bin", 0o755, 0}, {"usr/sbin", 0o755, 0},
		{"usr/local/bin", 0o755, 0}, {"etc/init.d", 0o755, 0}, {"lib/modules", 0o755, 0},
		{"proc", 0o555, 0}, {"sys", 0o555, 0}, {"dev", 0o755, 0}, {"run", 0o755, 0},
		{"tmp", 0o777 | os.ModeSticky, 0}, {"var/tmp", 0o777 | os.ModeSticky, 0},
		{"var/lib", 0o755, 0}, {"var/log", 0o755, 0}, {"mnt", 0o755, 0},
		{"root", 0o700, 0}, {"home/pi", 0o755, 1000}, {"boot/firmware", 0o755, 0},
		{"opt/pifleet-demo/movable/sub", 0o755, 0},
	} {
		b.mkdir(d.p, d.perm, d.uid, d.uid)
	}
	b.copyFrom("bin/busybox", "bin/busybox", 0o755)
	if b.err != nil {
		return
	}
	data, err := os.ReadFile(b.path("bin/busybox"))
	if err != nil {
		b.err = err
		return
	}
	applets, err := busyboxApplets(data)
	if err != nil {
		b.err = err
		return
	}
	for _, a := range applets {
		if a != "busybox" {
			b.symlink("busybox", "bin/"+a)
		}
	}
	for _, a := range sbinApplets {
		b.symlink("../bin/busybox", "sbin/"+a)
	}
	// The setuid test binary (see euidProbe): root-owned, 4755.
	b.write("usr/local/bin/pifleet-euid", euidProbe(), 0o755|os.ModeSetuid, 0, 0)
	b.embedded("pifleet-check", "usr/local/bin/pifleet-check", 0o755)
	b.embedded("inittab", "etc/inittab", 0o644)
	b.embedded("rcS", "etc/init.d/rcS", 0o755)
	b.embedded("profile", "etc/profile", 0o644)
	b.write("etc/passwd", []byte(passwd), 0o644, 0, 0)
	b.write("etc/shadow", []byte(shadow), 0o640, 0, 42)
	b.write("etc/group", []byte(group), 0o644, 0, 0)
	b.write("etc/hostname", []byte("pifleet-demo\n"), 0o644, 0, 0)
	b.write("etc/hosts", []byte("127.0.0.1 localhost\n127.0.1.1 pifleet-demo\n"), 0o644, 0, 0)
	b.write("etc/fstab", []byte("# / comes over NFS (pifleet); nothing to mount from disk.\nproc /proc proc defaults 0 0\n"), 0o644, 0, 0)
	b.write("etc/shells", []byte("/bin/sh\n"), 0o644, 0, 0)
	// Files the e2e test moves and links (pifleet-check perms): they come from the image,
	// so the overlay must copy them up.
	b.write("opt/pifleet-demo/movable/file", []byte("pifleet demo\n"), 0o644, 0, 0)
	b.write("opt/pifleet-demo/movable/sub/deep", []byte("deep\n"), 0o644, 0, 0)
	b.write("opt/pifleet-demo/linkme", []byte("link me\n"), 0o644, 0, 0)
	b.mknod("dev/console", 0o600, 5, 1)
	b.mknod("dev/null", 0o666, 1, 3)
	// The NFS root's modules, so that the booted system shows them in lsmod/modinfo.
	modDir := path.Join("lib/modules", b.ver)
	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		b.copyFrom(path.Join(modDir, f), path.Join(modDir, f), 0o644)
	}
	for _, m := range mods {
		b.copyModule(m, path.Join(modDir, m))
	}
}

// copyModule copies one module and decompresses it if needed, so that neither the
// initramfs nor the root needs a decompressor in busybox insmod.
func (b *builder) copyModule(rel, dst string) {
	if b.err != nil {
		return
	}
	src := filepath.Join(b.ext, "lib/modules", b.ver, rel)
	data, err := readModule(src)
	if err != nil {
		b.err = err
		return
	}
	b.write(strings.TrimSuffix(strings.TrimSuffix(dst, ".xz"), ".gz"), data, 0o644, 0, 0)
}

// readModule reads a .ko, .ko.xz or .ko.gz.
func readModule(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(p, ".xz"):
		if r, err = xz.NewReader(f); err != nil {
			return nil, fmt.Errorf("module %s: %w", p, err)
		}
	case strings.HasSuffix(p, ".gz"):
		if r, err = gzip.NewReader(f); err != nil {
			return nil, fmt.Errorf("module %s: %w", p, err)
		}
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", p, err)
	}
	return data, nil
}

// busyboxApplets reads the applet names from a busybox binary: they are stored as one
// sorted, NUL-separated table starting with "[" and "[[". Reading it avoids running an
// arm64 binary on the build host.
func busyboxApplets(bin []byte) ([]string, error) {
	i := bytes.Index(bin, []byte("[\x00[[\x00"))
	if i < 0 {
		return nil, errors.New("busybox: no applet table found")
	}
	var names []string
	for rest := bin[i:]; ; {
		j := bytes.IndexByte(rest, 0)
		if j <= 0 {
			break
		}
		names = append(names, string(rest[:j]))
		rest = rest[j+1:]
	}
	if !sort.StringsAreSorted(names) || len(names) < 50 {
		return nil, fmt.Errorf("busybox: applet table looks wrong (%d names)", len(names))
	}
	for _, want := range []string{"sh", "mount", "udhcpc", "switch_root", "su", "init"} {
		if _, ok := slicesIndex(names, want); !ok {
			return nil, fmt.Errorf("busybox: no %s applet", want)
		}
	}
	return names, nil
}

func slicesIndex(s []string, v string) (int, bool) {
	i := sort.SearchStrings(s, v)
	return i, i < len(s) && s[i] == v
}
