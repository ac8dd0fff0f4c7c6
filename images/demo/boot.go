package demo

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// configTxt tells a Pi's firmware to boot the 64-bit kernel with the initramfs.
const configTxt = `# pifleet demo image
arm_64bit=1
kernel=kernel8.img
initramfs initramfs8 followkernel
enable_uart=1
`

// cmdlineTxt is the image's own part of the command line; pifleet's TFTP adds the NFS root
// (root=/dev/nfs nfsroot=... ip=dhcp ...) per board.
const cmdlineTxt = "console=serial0,115200 console=ttyAMA0,115200\n"

// arm64Magic sits at offset 56 of an arm64 Image (Documentation/arch/arm64/booting.rst).
var arm64Magic = []byte("ARM\x64")

// IsArm64Image reports whether b starts like an uncompressed arm64 kernel Image, the only
// form U-Boot's booti accepts.
func IsArm64Image(b []byte) bool {
	return len(b) >= 64 && bytes.Equal(b[56:60], arm64Magic)
}

// bootFiles writes /boot/firmware.
func (b *builder) bootFiles(mods []string) error {
	kernel, err := os.ReadFile(filepath.Join(b.ext, "boot", "vmlinuz-"+b.ver))
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	// Debian's arm64 vmlinuz is an uncompressed Image today; older or other builds gzip it.
	if !IsArm64Image(kernel) && len(kernel) > 2 && kernel[0] == 0x1f && kernel[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(kernel))
		if err != nil {
			return fmt.Errorf("kernel: %w", err)
		}
		if kernel, err = io.ReadAll(zr); err != nil {
			return fmt.Errorf("kernel: gunzip: %w", err)
		}
	}
	if !IsArm64Image(kernel) {
		return fmt.Errorf("kernel vmlinuz-%s is not an arm64 Image (no ARM\\x64 magic)", b.ver)
	}
	initrd, err := b.initramfs(mods)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	fw := "boot/firmware"
	b.write(path.Join(fw, "kernel8.img"), kernel, 0o644, 0, 0)
	b.write(path.Join(fw, "initramfs8"), initrd, 0o644, 0, 0)
	b.write(path.Join(fw, "config.txt"), []byte(configTxt), 0o644, 0, 0)
	b.write(path.Join(fw, "cmdline.txt"), []byte(cmdlineTxt), 0o644, 0, 0)
	// Pi 4 needs start4.elf/fixup4.dat; Pi 3 bootcode.bin, start.elf, fixup.dat.
	for _, f := range []string{"bootcode.bin", "start4.elf", "fixup4.dat", "start.elf", "fixup.dat"} {
		b.copyFrom(path.Join("usr/lib/raspi-firmware", f), path.Join(fw, f), 0o644)
	}
	for _, f := range []string{"bcm2711-rpi-4-b.dtb", "bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb"} {
		b.copyFrom(path.Join("usr/lib/linux-image-"+b.ver, "broadcom", f), path.Join(fw, f), 0o644)
	}
	return b.err
}

// initramfs makes the gzip'd newc cpio: busybox, /init, the udhcpc hook and the modules.
func (b *builder) initramfs(mods []string) ([]byte, error) {
	busybox, err := os.ReadFile(filepath.Join(b.ext, "bin/busybox"))
	if err != nil {
		return nil, err
	}
	initScript, err := files.ReadFile("files/init")
	if err != nil {
		return nil, err
	}
	hook, err := files.ReadFile("files/udhcpc.script")
	if err != nil {
		return nil, err
	}
	type mod struct {
		name string
		data []byte
	}
	var loaded []mod
	var list strings.Builder
	for _, m := range mods {
		data, err := readModule(filepath.Join(b.ext, "lib/modules", b.ver, m))
		if err != nil {
			return nil, err
		}
		name := strings.TrimSuffix(strings.TrimSuffix(m, ".xz"), ".gz")
		loaded = append(loaded, mod{path.Join(b.ver, name), data})
		fmt.Fprintln(&list, path.Join(b.ver, name))
	}
	var out bytes.Buffer
	err = gzipCpio(&out, func(c *cpioWriter) {
		for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "run", "tmp", "newroot", "lib", "lib/modules"} {
			c.Dir(d, 0o755)
		}
		c.CharDev("dev/console", 0o600, 5, 1)
		c.CharDev("dev/null", 0o666, 1, 3)
		c.File("bin/busybox", 0o755, busybox)
		c.Symlink("bin/sh", "busybox")
		c.File("init", 0o755, initScript)
		c.File("bin/udhcpc.script", 0o755, hook)
		c.File("etc/initramfs-modules", 0o644, []byte(list.String()))
		made := map[string]bool{}
		for _, m := range loaded {
			// Parents first: the kernel's unpacker does not create them.
			var parents []string
			for d := path.Dir(m.name); d != "." && !made[d]; d = path.Dir(d) {
				parents = append(parents, d)
				made[d] = true
			}
			for i := len(parents) - 1; i >= 0; i-- {
				c.Dir(path.Join("lib/modules", parents[i]), 0o755)
			}
			c.File(path.Join("lib/modules", m.name), 0o644, m.data)
		}
	})
	if err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
