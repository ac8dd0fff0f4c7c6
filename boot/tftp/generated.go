package tftp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"strings"

	"github.com/pifleet/pifleet/boot"
)

// Files pifleet writes per board instead of serving them from the image: the kernel
// command line must point at the board's NFS root, config.txt carries the fleet's extras,
// and U-Boot boards need a boot script and a pxelinux config that exist in no Pi image.
const (
	cmdlineName    = "cmdline.txt"
	configName     = "config.txt"
	bootScriptName = "boot.scr.uimg"
	pxeDir         = "pxelinux.cfg"
)

// Cmdline returns the kernel command line board b boots with: the image's own
// cmdline.txt (read through the board's overlay) without the options that only make
// sense for an SD card, then the NFS root options, then the board's extras, with repeats
// removed (see dedupeArgs). It is one newline-terminated line, as the Pi firmware expects.
func Cmdline(b *boot.Board) (string, error) {
	if b.NFSRoot == "" {
		return "", fmt.Errorf("board %s: cmdline: no NFS root configured", b.Name)
	}
	image, err := fs.ReadFile(b.Firmware, cmdlineName)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("board %s: cmdline: read the image's %s: %w", b.Name, cmdlineName, err)
	}
	var args []string
	for _, a := range strings.Fields(string(image)) {
		if !sdCardOption(a) {
			args = append(args, a)
		}
	}
	args = append(args, "root=/dev/nfs", "nfsroot="+b.NFSRoot, "rw", "ip=dhcp", "rootwait")
	args = append(args, strings.Fields(b.Cmdline)...)
	return strings.Join(dedupeArgs(args), " ") + "\n", nil
}

// sdCardOption reports whether a kernel argument from the image's cmdline.txt must go:
// it names the SD card's root, resizes or first-boots it, or would clash with the NFS
// root options Cmdline adds.
func sdCardOption(arg string) bool {
	key, val, _ := strings.Cut(arg, "=")
	switch key {
	case "root", "rootfstype", "fsck.repair", "ip", "nfsroot", "nfsrootdebug":
		return true
	case "resize", "rootwait", "rw", "ro":
		return val == "" // "rw"/"ro" as flags; never a "rw=..." someone meant otherwise
	case "init":
		// Pi OS first-boot helpers resize the SD card's partition (firstboot,
		// init_resize.sh); on an NFS root they fail and can stop the boot.
		return strings.Contains(val, "firstboot") || strings.Contains(val, "init_resize")
	}
	return false
}

// configTxt returns the board's config.txt: the image's, then the board's extras under a
// marker comment. found is false when neither exists (the firmware then uses defaults).
func configTxt(b *boot.Board) (data []byte, found bool, err error) {
	image, err := fs.ReadFile(b.Firmware, configName)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		image = nil
	case err != nil:
		return nil, false, fmt.Errorf("board %s: read the image's %s: %w", b.Name, configName, err)
	default:
		found = true
	}
	if len(b.Config) == 0 {
		return image, found, nil
	}
	var buf bytes.Buffer
	buf.Write(image)
	if len(image) > 0 && image[len(image)-1] != '\n' {
		buf.WriteByte('\n')
	}
	buf.WriteString("\n# pifleet: board extras\n")
	for _, l := range b.Config {
		buf.WriteString(l)
		buf.WriteByte('\n')
	}
	return buf.Bytes(), true, nil
}

// bootFiles reads the kernel and initramfs names from a config.txt the way the Pi
// firmware does for the unconditional parts ("kernel=NAME", "initramfs NAME followkernel"):
// the last setting wins; conditional sections other than [all] are skipped because a
// generic U-Boot board matches none of them.
func bootFiles(config []byte) (kernel, initrd string) {
	kernel = "kernel8.img"
	section := "all"
	sc := bufio.NewScanner(bytes.NewReader(config))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = strings.ToLower(strings.TrimSpace(line[1 : len(line)-1]))
			continue
		}
		if section != "all" {
			continue
		}
		if v, ok := strings.CutPrefix(line, "kernel="); ok && strings.TrimSpace(v) != "" {
			kernel = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "initramfs"); ok && (strings.HasPrefix(v, " ") || strings.HasPrefix(v, "\t")) {
			if f := strings.Fields(v); len(f) > 0 {
				initrd = f[0]
			}
		}
	}
	return kernel, initrd
}

// macDashes writes a MAC the way the Pi's TFTP_PREFIX=2 and pxelinux do: lowercase hex
// pairs joined by dashes.
func macDashes(b *boot.Board) string {
	return strings.ReplaceAll(strings.ToLower(b.MAC.String()), ":", "-")
}

// pxeConfig returns pxelinux.cfg/01-<mac> for a U-Boot board. Kernel and initrd are named
// under the board's MAC prefix so that U-Boot's fetches resolve to this board even before
// the fleet has learned its address.
func pxeConfig(b *boot.Board) ([]byte, error) {
	if len(b.MAC) == 0 {
		return nil, fmt.Errorf("board %s: pxelinux.cfg: board has no MAC", b.Name)
	}
	cmdline, err := Cmdline(b)
	if err != nil {
		return nil, err
	}
	cfg, _, err := configTxt(b)
	if err != nil {
		return nil, err
	}
	kernel, initrd := bootFiles(cfg)
	prefix := macDashes(b)
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# pifleet: generated for board %s\ndefault pifleet\nlabel pifleet\n", b.Name)
	fmt.Fprintf(&buf, "  kernel %s/%s\n", prefix, kernel)
	if initrd != "" {
		fmt.Fprintf(&buf, "  initrd %s/%s\n", prefix, initrd)
	}
	fmt.Fprintf(&buf, "  append %s", cmdline) // Cmdline ends in a newline
	return buf.Bytes(), nil
}

// bootScript is what U-Boot's distro boot runs after DHCP. Debian's qemu_arm64 U-Boot
// fetches boot.scr.uimg but never runs "pxe get" by itself, so the script does.
//
// It also shortens U-Boot's TFTP retransmission timeout from 5 s to 1 s (its minimum),
// with 50 tries instead of 10, so U-Boot waits as long before giving up. U-Boot ignores
// a DATA block it already has without acknowledging it again (net/tftp.c), so a lost
// ACK is recovered only by U-Boot's own timer, whatever the server does: each lost
// packet cost a whole U-Boot timeout (5 s, the "T" on its console), 1 s now.
const bootScript = "echo pifleet: PXE boot from ${serverip}\nsetenv tftptimeout 1000\nsetenv tftptimeoutcountmax 50\npxe get\npxe boot\n"

// Legacy U-Boot image header constants (include/image.h), for a script image the way
// "mkimage -A arm64 -O linux -T script -C none" writes one.
const (
	uimageMagic      = 0x27051956
	uimageHeaderSize = 64
	uimageOSLinux    = 5
	uimageArchARM64  = 22
	uimageTypeScript = 6
	uimageCompNone   = 0
	uimageNameLen    = 32
)

// scriptImage wraps a U-Boot script in a legacy image (what "mkimage -T script" makes):
// a 64-byte big-endian header, then a table of part lengths ending in 0, then the script.
// The time stamp is 0 so every board gets identical bytes for identical input.
func scriptImage(name, script string) []byte {
	payload := make([]byte, 8+len(script))
	binary.BigEndian.PutUint32(payload[0:], uint32(len(script)))
	binary.BigEndian.PutUint32(payload[4:], 0)
	copy(payload[8:], script)

	img := make([]byte, uimageHeaderSize+len(payload))
	h := img[:uimageHeaderSize]
	binary.BigEndian.PutUint32(h[0:], uimageMagic)
	// h[4:8] header CRC, filled in last; h[8:12] time = 0
	binary.BigEndian.PutUint32(h[12:], uint32(len(payload)))
	// h[16:20] load address, h[20:24] entry point: 0, a script is not loaded anywhere
	binary.BigEndian.PutUint32(h[24:], crc32.ChecksumIEEE(payload))
	h[28] = uimageOSLinux
	h[29] = uimageArchARM64
	h[30] = uimageTypeScript
	h[31] = uimageCompNone
	copy(h[32:32+uimageNameLen-1], name) // NUL-terminated, truncated like mkimage
	binary.BigEndian.PutUint32(h[4:], crc32.ChecksumIEEE(h))
	copy(img[uimageHeaderSize:], payload)
	return img
}
