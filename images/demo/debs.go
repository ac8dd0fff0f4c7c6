package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// debs are the package files the image is made of, after download.
type debs struct {
	kernelVersion string // e.g. 6.1.0-56-arm64, the /lib/modules directory name
	kernel        string // path of linux-image-<ver>_*.deb
	busybox       string
	firmware      string
}

// kernelPackage matches Debian's generic arm64 kernel packages; the cloud and rt flavours
// lack drivers a Pi or the emulated boards need.
var kernelPackage = regexp.MustCompile(`^linux-image-(6\.1\.0-([0-9]+)-arm64)$`)

// aptSetup is what a host needs before Build can download; printed verbatim in errors.
const aptSetup = `dpkg --add-architecture arm64
sed -i '/^Components:/{/non-free-firmware/!s/$/ non-free-firmware/}' /etc/apt/sources.list.d/debian.sources
apt-get update`

// run runs a command and returns its stdout; stderr goes into the error.
func run(ctx context.Context, dir string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// newestKernel asks apt for the newest linux-image-6.1.0-N-arm64 it knows.
func newestKernel(ctx context.Context) (string, error) {
	out, err := run(ctx, "", "apt-cache", "pkgnames", "linux-image-6.1.0-")
	if err != nil {
		return "", err
	}
	best := pickKernel(strings.Fields(string(out)))
	if best == "" {
		return "", errors.New("apt knows no linux-image-6.1.0-*-arm64 package")
	}
	return best, nil
}

// pickKernel returns the kernel version (e.g. 6.1.0-56-arm64) of the generic arm64 package
// with the highest ABI number among names, or "". ABI numbers compare as numbers: -9 < -10.
func pickKernel(names []string) string {
	best, bestABI := "", -1
	for _, name := range names {
		m := kernelPackage.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		abi, _ := strconv.Atoi(m[2])
		if abi > bestABI {
			best, bestABI = m[1], abi
		}
	}
	return best
}

// aptReady reports what is missing from the apt configuration, or "" when nothing is.
func aptReady(ctx context.Context) string {
	out, _ := run(ctx, "", "dpkg", "--print-foreign-architectures")
	native, _ := run(ctx, "", "dpkg", "--print-architecture")
	if !strings.Contains(string(out), "arm64") && strings.TrimSpace(string(native)) != "arm64" {
		return "the arm64 architecture"
	}
	if _, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", "raspi-firmware"); err != nil {
		return "the non-free-firmware component (raspi-firmware)"
	}
	if _, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", "busybox-static:arm64"); err != nil {
		return "arm64 package lists (apt-get update)"
	}
	return ""
}

// configureApt applies aptSetup. It edits the deb822 sources file Debian 12 installs.
func configureApt(ctx context.Context, log *slog.Logger) error {
	log.Info("demo image: configuring apt for arm64 and non-free-firmware")
	if _, err := run(ctx, "", "dpkg", "--add-architecture", "arm64"); err != nil {
		return err
	}
	const sources = "/etc/apt/sources.list.d/debian.sources"
	b, err := os.ReadFile(sources)
	if err != nil {
		return fmt.Errorf("add non-free-firmware: %w (add it to the Components of your Debian sources by hand)", err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Components:") && !strings.Contains(line, "non-free-firmware") {
			line += " non-free-firmware"
		}
		out = append(out, line)
	}
	if err := os.WriteFile(sources, []byte(strings.Join(out, "\n")), 0o644); err != nil {
		return fmt.Errorf("add non-free-firmware: %w", err)
	}
	_, err = run(ctx, "", "apt-get", "update")
	return err
}

// cached returns the newest file in dir matching pattern, or "".
func cached(dir, pattern string) string {
	m, _ := filepath.Glob(filepath.Join(dir, pattern))
	if len(m) == 0 {
		return ""
	}
	sort.Strings(m)
	return m[len(m)-1]
}

// cachedKernel returns the newest kernel .deb in dir, or "".
func cachedKernel(dir string) string {
	m, _ := filepath.Glob(filepath.Join(dir, "linux-image-6.1.0-*-arm64_*_arm64.deb"))
	var names []string
	for _, p := range m {
		names = append(names, strings.SplitN(filepath.Base(p), "_", 2)[0])
	}
	if ver := pickKernel(names); ver != "" {
		return cached(dir, "linux-image-"+ver+"_*_arm64.deb")
	}
	return ""
}

// fetchDebs downloads (or finds in opts.CacheDir) the three packages. A cached kernel is
// reused without asking apt, so that a built cache works offline.
func fetchDebs(ctx context.Context, opts Options) (*debs, error) {
	log := opts.logger()
	if opts.CacheDir == "" {
		return nil, errors.New("no cache directory for the downloaded packages")
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	// Test packages run in parallel and share one cache: only one may download at a time,
	// the others then find the files.
	lock, err := os.OpenFile(filepath.Join(opts.CacheDir, ".demo-download.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache lock: %w", err)
	}
	defer lock.Close()
	if err := flock(ctx, lock); err != nil {
		return nil, fmt.Errorf("cache lock %s: %w", lock.Name(), err)
	}
	d := &debs{
		kernel:   cachedKernel(opts.CacheDir),
		busybox:  cached(opts.CacheDir, "busybox-static_*_arm64.deb"),
		firmware: cached(opts.CacheDir, "raspi-firmware_*_all.deb"),
	}
	if d.kernel != "" && d.busybox != "" && d.firmware != "" {
		d.kernelVersion = strings.TrimPrefix(strings.SplitN(filepath.Base(d.kernel), "_", 2)[0], "linux-image-")
		log.Info("demo image: using cached packages", "dir", opts.CacheDir, "kernel", d.kernelVersion)
		return d, nil
	}
	if missing := aptReady(ctx); missing != "" {
		if !opts.ConfigureApt || os.Geteuid() != 0 {
			return nil, fmt.Errorf("apt is not configured with %s; as root, run:\n%s", missing, aptSetup)
		}
		if err := configureApt(ctx, log); err != nil {
			return nil, fmt.Errorf("configure apt: %w", err)
		}
		if missing := aptReady(ctx); missing != "" {
			return nil, fmt.Errorf("apt still lacks %s after configuring it; run:\n%s", missing, aptSetup)
		}
	}
	ver, err := newestKernel(ctx)
	if err != nil {
		return nil, err
	}
	kpkg := "linux-image-" + ver
	log.Info("demo image: downloading packages", "dir", opts.CacheDir, "kernel", kpkg)
	// apt-get download writes into the working directory; as root it warns that _apt
	// cannot write there, which is harmless.
	if _, err := run(ctx, opts.CacheDir, "apt-get", "download", kpkg+":arm64", "busybox-static:arm64", "raspi-firmware"); err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	d = &debs{
		kernelVersion: ver,
		kernel:        cached(opts.CacheDir, kpkg+"_*_arm64.deb"),
		busybox:       cached(opts.CacheDir, "busybox-static_*_arm64.deb"),
		firmware:      cached(opts.CacheDir, "raspi-firmware_*_all.deb"),
	}
	if d.kernel == "" || d.busybox == "" || d.firmware == "" {
		return nil, fmt.Errorf("download: apt-get download left no .deb in %s", opts.CacheDir)
	}
	return d, nil
}

// flock takes an exclusive lock on f, giving up when ctx ends (closing f releases it).
func flock(ctx context.Context, f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// extract unpacks deb into dir without installing it (no maintainer scripts run).
func extract(ctx context.Context, deb, dir string) error {
	if _, err := run(ctx, "", "dpkg-deb", "-x", deb, dir); err != nil {
		return fmt.Errorf("extract %s: %w", filepath.Base(deb), err)
	}
	return nil
}
