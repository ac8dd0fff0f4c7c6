package images

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The NFS-root preparation layer is an overlayfs-format upper dir stacked above the pristine
// root: the import stays byte-for-byte what the admin gave us, and every change made for NFS
// boot is visible as a file of prep/ (and listed in image.yaml's changes).

// maskedUnit is a first-boot or SD-card service that must not run on an NFS root.
type maskedUnit struct {
	name, why string
}

// maskedUnits are masked when the image has them (Raspberry Pi OS, Debian's raspi images).
// Kept running on purpose: sshswitch.service (turns on sshd when the identity layer's
// /boot/firmware/ssh flag is there) and userconfig.service (creates the first user from the
// identity layer's userconf.txt).
func maskedUnits() []maskedUnit {
	return []maskedUnit{
		{"dphys-swapfile.service", "a swap file on an NFS root"},
		{"resize2fs_once.service", "grows the SD card's root partition (Pi OS bullseye and older)"},
		{"rpi-resize.service", "grows the SD card's root file system at first boot"},
		{"rpi-resizerootfs.service", "grows the SD card's root partition (Debian raspi images)"},
		{"regenerate_ssh_host_keys.service", "would replace the per-board SSH host keys pifleet writes"},
		{"rpi-generate-ssh-host-keys.service", "would replace the per-board SSH host keys pifleet writes (Debian raspi images)"},
		{"rpi-eeprom-update.service", "stages bootloader EEPROM updates; a network-booted board must not flash itself from its NFS root"},
	}
}

// fwLocDefault is Pi OS's /etc/default/raspberrypi-sys-mods setting. raspberrypi-sys-mods'
// get_fw_loc finds the boot partition from fstab or the mount table; over NFS /boot/firmware is
// a plain directory of the root, so without it sshswitch fails and userconfig looks in /boot
// (missing userconf.txt and asking for a user on the console).
const fwLocDefault = "FWLOC=/boot/firmware"

// cmdlineDrops are kernel parameters that point at the SD card or run first-boot resizing.
// A trailing "=" matches any value; init= is dropped only when it runs Pi OS's first-boot
// script (another init= the admin chose stays).
var cmdlineDrops = []string{"resize", "rootfstype=", "fsck.repair=", "root="}

// prepare writes the prep layer for the root at root into prep and returns the changes.
// Nothing is written (and prep does not exist) when no change applies, e.g. a non-Linux tree.
func prepare(ctx context.Context, name, root, prep string, log *slog.Logger) ([]string, error) {
	p := &preparer{name: name, root: root, prep: prep}
	if err := os.MkdirAll(prep, 0o755); err != nil {
		return nil, fmt.Errorf("image %s: prepare for NFS root: %w", name, err)
	}
	steps := []func() error{p.fstab, p.cmdline, p.maskUnits, p.firmwareLocation, p.network}
	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := step(); err != nil {
			return nil, fmt.Errorf("image %s: prepare for NFS root: %w", name, err)
		}
	}
	if len(p.changes) == 0 {
		return nil, os.Remove(prep)
	}
	if err := p.finish(); err != nil {
		return nil, fmt.Errorf("image %s: prepare for NFS root: %w", name, err)
	}
	for _, c := range p.changes {
		log.Info("prepared image for NFS root", "image", name, "change", c)
	}
	return p.changes, nil
}

type preparer struct {
	name, root, prep string
	changes          []string
	dirs             []string // prep dirs created, to copy times from root at the end
}

// readRoot reads a regular file of the root tree.
func (p *preparer) readRoot(rel string) ([]byte, *unix.Stat_t, error) {
	return readInRoot(p.root, rel)
}

// readInRoot reads a regular file (at most 16 MiB) of the tree at root. Symlinks inside the
// image resolve inside the image (RESOLVE_IN_ROOT): an image's absolute symlink must never
// reach the host's files.
func readInRoot(root, rel string) ([]byte, *unix.Stat_t, error) {
	rfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, nil, err
	}
	defer unix.Close(rfd)
	fd, err := unix.Openat2(rfd, rel, &unix.OpenHow{Flags: unix.O_RDONLY, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return nil, nil, err
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, nil, err
	}
	if st.Mode&typeMask != typeReg {
		return nil, nil, fmt.Errorf("/%s is not a regular file", rel)
	}
	b, err := io.ReadAll(io.LimitReader(f, 16<<20))
	return b, &st, err
}

func (p *preparer) existsInRoot(rel string) bool {
	_, err := os.Lstat(filepath.Join(p.root, rel))
	return err == nil
}

// mkdirs creates the parents of rel in prep with the owner and mode the root has for them:
// in an overlay the upper dir's attributes are what the board sees.
func (p *preparer) mkdirs(rel string) error {
	dir := path.Dir(rel)
	if dir == "." {
		return nil
	}
	if err := p.mkdirs(dir); err != nil {
		return err
	}
	dst := filepath.Join(p.prep, dir)
	if isDir(dst) {
		return nil
	}
	mode, uid, gid := uint32(0o755), 0, 0
	var st unix.Stat_t
	inRoot := unix.Lstat(filepath.Join(p.root, dir), &st) == nil && st.Mode&typeMask == typeDir
	if inRoot {
		mode, uid, gid = st.Mode&0o7777, int(st.Uid), int(st.Gid)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := os.Chown(dst, uid, gid); err != nil {
		return err
	}
	p.dirs = append(p.dirs, dir)
	if err := unix.Chmod(dst, mode); err != nil {
		return err
	}
	if !inRoot {
		return nil
	}
	// an upper dir's xattrs (ACLs included) are what the board sees of the merged dir
	x, err := readXattrs(filepath.Join(p.root, dir))
	if err != nil {
		return err
	}
	for k, v := range x {
		if strings.HasPrefix(k, "trusted.overlay.") {
			continue
		}
		if err := unix.Lsetxattr(dst, k, v, 0); err != nil {
			return fmt.Errorf("/%s: setxattr %s: %w", dir, k, err)
		}
	}
	return nil
}

// writePrep writes a file into prep, keeping the owner and mode of the file it replaces.
func (p *preparer) writePrep(rel string, data []byte, like *unix.Stat_t) error {
	if err := p.mkdirs(rel); err != nil {
		return err
	}
	dst := filepath.Join(p.prep, rel)
	mode, uid, gid := uint32(0o644), 0, 0
	if like != nil {
		mode, uid, gid = like.Mode&0o7777, int(like.Uid), int(like.Gid)
	}
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		return err
	}
	if err := os.Chown(dst, uid, gid); err != nil {
		return err
	}
	return unix.Chmod(dst, mode)
}

func (p *preparer) symlinkPrep(rel, target string) error {
	if err := p.mkdirs(rel); err != nil {
		return err
	}
	return os.Symlink(target, filepath.Join(p.prep, rel))
}

// fstab drops SD-card lines: anything mounted by PARTUUID/UUID/LABEL or from /dev/mmcblk,
// and whatever claims / or /boot/firmware (the server provides both over NFS).
func (p *preparer) fstab() error {
	b, st, err := p.readRoot("etc/fstab")
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("/etc/fstab: %w", err)
	}
	out, dropped := filterFstab(string(b))
	if dropped == 0 {
		return nil
	}
	if err := p.writePrep("etc/fstab", []byte(out), st); err != nil {
		return fmt.Errorf("/etc/fstab: %w", err)
	}
	p.changes = append(p.changes, fmt.Sprintf("/etc/fstab: removed %d SD-card line(s)", dropped))
	return nil
}

func filterFstab(in string) (string, int) {
	var out strings.Builder
	dropped := 0
	sc := bufio.NewScanner(strings.NewReader(in))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			spec, mnt := f[0], f[1]
			sd := strings.HasPrefix(spec, "PARTUUID=") || strings.HasPrefix(spec, "UUID=") ||
				strings.HasPrefix(spec, "LABEL=") || strings.HasPrefix(spec, "/dev/mmcblk") ||
				strings.HasPrefix(spec, "/dev/sd") || strings.HasPrefix(spec, "/dev/nvme")
			if sd || mnt == "/" || mnt == "/boot/firmware" || mnt == "/boot" {
				out.WriteString("# pifleet: NFS root, no SD card: " + line + "\n")
				dropped++
				continue
			}
		}
		out.WriteString(line + "\n")
	}
	return out.String(), dropped
}

// cmdline cleans the kernel command line kept in the boot partition. TFTP generates the one a
// board boots with, but keeping this copy clean avoids surprises when it is reused.
func (p *preparer) cmdline() error {
	for _, rel := range []string{"boot/firmware/cmdline.txt", "boot/cmdline.txt"} {
		b, st, err := p.readRoot(rel)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return fmt.Errorf("/%s: %w", rel, err)
		}
		out, dropped := filterCmdline(string(b))
		if len(dropped) == 0 {
			continue
		}
		if err := p.writePrep(rel, []byte(out+"\n"), st); err != nil {
			return fmt.Errorf("/%s: %w", rel, err)
		}
		p.changes = append(p.changes, fmt.Sprintf("/%s: removed %s", rel, strings.Join(dropped, " ")))
	}
	return nil
}

func filterCmdline(in string) (string, []string) {
	var keep, dropped []string
	for _, arg := range strings.Fields(in) {
		drop := strings.HasPrefix(arg, "init=") && (strings.Contains(arg, "firstboot") || strings.Contains(arg, "init_resize"))
		for _, d := range cmdlineDrops {
			if arg == d || (strings.HasSuffix(d, "=") && strings.HasPrefix(arg, d)) {
				drop = true
			}
		}
		if drop {
			dropped = append(dropped, arg)
		} else {
			keep = append(keep, arg)
		}
	}
	return strings.Join(keep, " "), dropped
}

// maskUnits masks the first-boot and SD-card units present in the image (a symlink to
// /dev/null in /etc/systemd/system, as systemctl mask does).
// A unit that lives in /etc/systemd/system itself (Debian's raspi images put theirs there) is
// replaced by the mask in the upper layer, which is what masking means to systemd.
func (p *preparer) maskUnits() error {
	for _, u := range maskedUnits() {
		base := strings.TrimSuffix(u.name, ".service")
		present := p.existsInRoot("lib/systemd/system/"+u.name) || p.existsInRoot("usr/lib/systemd/system/"+u.name) ||
			p.existsInRoot("etc/systemd/system/"+u.name) || p.existsInRoot("etc/init.d/"+base)
		if !present {
			continue
		}
		rel := "etc/systemd/system/" + u.name
		if err := p.symlinkPrep(rel, "/dev/null"); err != nil {
			return fmt.Errorf("mask %s: %w", u.name, err)
		}
		p.changes = append(p.changes, "masked "+u.name+": "+u.why)
	}
	return nil
}

// firmwareLocation tells raspberrypi-sys-mods where the boot partition's files are (see
// fwLocDefault), keeping whatever else the image's /etc/default/raspberrypi-sys-mods says.
func (p *preparer) firmwareLocation() error {
	if !p.existsInRoot("usr/lib/raspberrypi-sys-mods/get_fw_loc") || !p.existsInRoot("boot/firmware") {
		return nil
	}
	const rel = "etc/default/raspberrypi-sys-mods"
	b, st, err := p.readRoot(rel)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("/%s: %w", rel, err)
	}
	var out strings.Builder
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "FWLOC=") {
			if strings.TrimSpace(line) == fwLocDefault {
				return nil
			}
			line = "# pifleet: NFS root, the boot files are a directory: " + line
		}
		out.WriteString(line)
	}
	if out.Len() > 0 && !strings.HasSuffix(out.String(), "\n") {
		out.WriteString("\n")
	}
	out.WriteString("# pifleet: over NFS /boot/firmware is a directory, not a mount; get_fw_loc would not find it\n" + fwLocDefault + "\n")
	if err := p.writePrep(rel, []byte(out.String()), st); err != nil {
		return fmt.Errorf("/%s: %w", rel, err)
	}
	p.changes = append(p.changes, "/"+rel+": "+fwLocDefault+" (sshswitch and userconfig find the ssh and userconf.txt files over NFS)")
	return nil
}

// nmConf keeps NetworkManager's hands off wired interfaces: the kernel configured the one that
// carries the root (ip=dhcp), and NetworkManager re-doing DHCP on it would cut the root away.
const nmConf = `# Written by pifleet: the root file system comes over NFS on a wired interface that the
# kernel configured (ip=dhcp). NetworkManager must not take it down or re-configure it.
[keyfile]
unmanaged-devices=interface-name:eth*;interface-name:en*
`

const dhcpcdBlock = `
# pifleet: the root file system comes over NFS on a wired interface that the kernel
# configured (ip=dhcp); dhcpcd must not take it down.
denyinterfaces eth* en*
`

func (p *preparer) network() error {
	if p.existsInRoot("etc/NetworkManager") {
		if err := p.writePrep("etc/NetworkManager/conf.d/90-pifleet-nfsroot.conf", []byte(nmConf), nil); err != nil {
			return fmt.Errorf("NetworkManager: %w", err)
		}
		p.changes = append(p.changes, "NetworkManager: wired interfaces (eth*, en*) unmanaged")
		// with the interface unmanaged nobody writes resolv.conf; the kernel's DHCP result has
		// the name servers
		if err := p.symlinkPrep("etc/resolv.conf", "/proc/net/pnp"); err != nil {
			return fmt.Errorf("resolv.conf: %w", err)
		}
		p.changes = append(p.changes, "/etc/resolv.conf -> /proc/net/pnp (name servers from the kernel's DHCP)")
	}
	b, st, err := p.readRoot("etc/dhcpcd.conf")
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("/etc/dhcpcd.conf: %w", err)
	}
	if err := p.writePrep("etc/dhcpcd.conf", append(b, dhcpcdBlock...), st); err != nil {
		return fmt.Errorf("/etc/dhcpcd.conf: %w", err)
	}
	p.changes = append(p.changes, "/etc/dhcpcd.conf: denyinterfaces eth* en*")
	return nil
}

// finish gives prep's directories the mtimes the root has for them, deepest first.
func (p *preparer) finish() error {
	if err := os.Chmod(p.prep, 0o755); err != nil {
		return err
	}
	for i := len(p.dirs) - 1; i >= 0; i-- {
		var st unix.Stat_t
		mt := time.Now()
		if err := unix.Lstat(filepath.Join(p.root, p.dirs[i]), &st); err == nil {
			mt = time.Unix(st.Mtim.Unix())
		}
		if err := setMtime(filepath.Join(p.prep, p.dirs[i]), mt); err != nil {
			return err
		}
	}
	return nil
}
