// Package demo builds pifleet's demo image: a busybox root with Debian's arm64 kernel, an
// NFS-root initramfs and the Raspberry Pi firmware, from Debian's apt repositories only.
//
// The image is what `make run` and the end-to-end tests boot. It is built once into the image
// store and reused: Build returns at once when the image already exists.
//
// Layout of the root (see root.go for the why of each part):
//
//	/bin/busybox + applet links, /sbin/init    busybox init, /etc/inittab, /etc/init.d/rcS
//	/etc/passwd, /etc/shadow (0640 root:shadow), /etc/group: root and pi (uid 1000)
//	/usr/local/bin/pifleet-euid (4755 root)     setuid test binary: exits with its euid
//	/usr/local/bin/pifleet-check                the guest side of the end-to-end test
//	/lib/modules/<ver>/                         the modules the NFS root needs, with modules.dep
//	/boot/firmware/                             kernel8.img (uncompressed arm64 Image),
//	                                            initramfs8, config.txt, cmdline.txt, start4.elf,
//	                                            fixup4.dat, bootcode.bin, Pi 3/4 dtbs
//
// The packages (linux-image-6.1.0-N-arm64, the newest apt knows; busybox-static:arm64;
// raspi-firmware) are fetched with apt-get download and unpacked with dpkg-deb -x, never
// installed. apt must know the arm64 architecture and the non-free-firmware component:
// Build fixes that itself only when Options.ConfigureApt is set, else it fails with the
// exact commands to run.
package demo

import (
	"log/slog"
)

// DefaultName is the image name Build uses when Options.Name is empty.
const DefaultName = "demo"

// Options tunes Build.
type Options struct {
	// Name of the image in the store; DefaultName when empty.
	Name string
	// CacheDir keeps the downloaded .debs (e.g. <state>/cache) so that a rebuild does not
	// download again. Required.
	CacheDir string
	// Logger receives progress; slog.Default() when nil.
	Logger *slog.Logger
	// ConfigureApt lets Build, when apt lacks the arm64 architecture or the
	// non-free-firmware component, fix that itself (dpkg --add-architecture arm64, add
	// non-free-firmware to /etc/apt/sources.list.d/debian.sources, apt-get update).
	// Off by default: changing the host's package sources is the admin's decision, so
	// without it Build fails with the exact commands to run.
	ConfigureApt bool
}

func (o *Options) name() string {
	if o.Name == "" {
		return DefaultName
	}
	return o.Name
}

func (o *Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.Default()
	}
	return o.Logger
}
