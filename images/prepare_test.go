package images

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/overlay"
)

// getfaclIn is getfacl's report on rel, a path inside dir.
func getfaclIn(t testing.TB, dir, rel string) string {
	t.Helper()
	cmd := exec.Command("getfacl", "-n", "-P", rel)
	cmd.Dir = dir
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("getfacl %s in %s: %v\n%s", rel, dir, err, b)
	}
	return string(b)
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// writeTree writes files (path -> content; a content starting with "-> " makes a symlink)
// under dir.
func writeTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for p, data := range files {
		full := filepath.Join(dir, p)
		must(t, os.MkdirAll(filepath.Dir(full), 0o755))
		if target, ok := strings.CutPrefix(data, "-> "); ok {
			must(t, os.Symlink(target, full))
			continue
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(data, "#!") {
			mode = 0o755
		}
		must(t, os.WriteFile(full, []byte(data), mode))
	}
}

const unitStub = "[Unit]\nDescription=stub\n[Service]\nType=oneshot\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"

// piOSBookworm is a Raspberry Pi OS bookworm root as far as first boot is concerned: the
// firstboot init= on the kernel command line, fstab by PARTUUID, raspberrypi-sys-mods'
// regenerate_ssh_host_keys and sshswitch, userconf-pi's userconfig (enabled, as the image
// ships it), dphys-swapfile, rpi-eeprom-update, NetworkManager.
func piOSBookworm() map[string]string {
	return map[string]string{
		"boot/firmware/cmdline.txt": "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot splash plymouth.ignore-serial-consoles\n",
		"boot/firmware/config.txt":  "auto_initramfs=1\narm_64bit=1\n",
		"etc/fstab": "proc            /proc           proc    defaults          0       0\n" +
			"PARTUUID=4e639091-01  /boot/firmware  vfat    defaults          0       2\n" +
			"PARTUUID=4e639091-02  /               ext4    defaults,noatime  0       1\n",
		"usr/lib/raspberrypi-sys-mods/firstboot":                                      "#!/bin/sh\n",
		"usr/lib/raspberrypi-sys-mods/get_fw_loc":                                     "#!/bin/sh\n",
		"usr/lib/raspberrypi-sys-mods/regenerate_ssh_host_keys":                       "#!/bin/sh\n",
		"etc/default/raspberrypi-sys-mods":                                            "# Specify location of Raspberry Pi firmware partition\n\n#FWLOC=\n",
		"lib/systemd/system/regenerate_ssh_host_keys.service":                         unitStub,
		"lib/systemd/system/sshswitch.service":                                        unitStub,
		"lib/systemd/system/userconfig.service":                                       unitStub,
		"lib/systemd/system/dphys-swapfile.service":                                   unitStub,
		"lib/systemd/system/rpi-eeprom-update.service":                                unitStub,
		"lib/systemd/system/ssh.service":                                              unitStub,
		"etc/systemd/system/multi-user.target.wants/userconfig.service":               "-> /lib/systemd/system/userconfig.service",
		"etc/systemd/system/multi-user.target.wants/sshswitch.service":                "-> /lib/systemd/system/sshswitch.service",
		"etc/systemd/system/multi-user.target.wants/dphys-swapfile.service":           "-> /lib/systemd/system/dphys-swapfile.service",
		"etc/systemd/system/multi-user.target.wants/regenerate_ssh_host_keys.service": "-> /lib/systemd/system/regenerate_ssh_host_keys.service",
		"usr/lib/userconf-pi/userconf-service":                                        "#!/bin/sh\n",
		"etc/passwd":                                                                  "root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n",
		"etc/NetworkManager/NetworkManager.conf":                                      "[main]\nplugins=ifupdown,keyfile\n",
	}
}

// debianRaspi is a root as Debian's own raspi images (image-specs) lay it out: units copied
// into /etc/systemd/system, fstab and cmdline.txt by LABEL, sysconf.txt on the boot partition.
func debianRaspi() map[string]string {
	return map[string]string{
		"boot/firmware/cmdline.txt":                             "console=tty0 console=ttyS1,115200 root=LABEL=RASPIROOT rw fsck.repair=yes net.ifnames=0 cma=64M rootwait\n",
		"boot/firmware/config.txt":                              "arm_64bit=1\nkernel=vmlinuz-6.1.0-28-arm64\ninitramfs initrd.img-6.1.0-28-arm64 followkernel\n",
		"boot/firmware/sysconf.txt":                             "#root_pw=\n#root_authorized_key=\n#hostname=\n",
		"etc/fstab":                                             "LABEL=RASPIROOT / ext4 rw 0 1\nLABEL=RASPIFIRM /boot/firmware vfat rw 0 2\n",
		"etc/systemd/system/rpi-resizerootfs.service":           unitStub,
		"etc/systemd/system/rpi-generate-ssh-host-keys.service": unitStub,
		"etc/systemd/system/rpi-set-sysconf.service":            unitStub,
		"etc/systemd/system/multi-user.target.wants/rpi-generate-ssh-host-keys.service":   "-> /etc/systemd/system/rpi-generate-ssh-host-keys.service",
		"etc/systemd/system/systemd-remount-fs.service.requires/rpi-resizerootfs.service": "-> /etc/systemd/system/rpi-resizerootfs.service",
		"etc/default/raspi-firmware":     "ROOTPART=LABEL=RASPIROOT\n",
		"lib/systemd/system/ssh.service": unitStub,
	}
}

// TestPreparePiOS runs the NFS-root preparation on Pi OS-, Pi OS bullseye- and Debian
// raspi-shaped trees and checks, through an overlay of identity, prep and root as a board
// mounts it, what the board boots with.
func TestPreparePiOS(t *testing.T) {
	needRoot(t)
	needTool(t, "setfacl", "getfacl")
	bullseye := piOSBookworm()
	bullseye["boot/firmware/cmdline.txt"] = "console=serial0,115200 console=tty1 root=PARTUUID=738a4d67-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspi-config/init_resize.sh\n"
	bullseye["etc/init.d/resize2fs_once"] = "#!/bin/sh\n"
	delete(bullseye, "usr/lib/raspberrypi-sys-mods/get_fw_loc")
	delete(bullseye, "etc/default/raspberrypi-sys-mods")
	delete(bullseye, "lib/systemd/system/rpi-eeprom-update.service")

	cases := []struct {
		name     string
		files    map[string]string
		cmdline  string
		masked   []string
		fwloc    bool
		unmasked []string
	}{
		{"bookworm", piOSBookworm(), "console=serial0,115200 console=tty1 rootwait quiet splash plymouth.ignore-serial-consoles",
			[]string{"dphys-swapfile.service", "regenerate_ssh_host_keys.service", "rpi-eeprom-update.service"}, true,
			[]string{"sshswitch.service", "userconfig.service", "resize2fs_once.service", "rpi-resizerootfs.service"}},
		{"bullseye", bullseye, "console=serial0,115200 console=tty1 rootwait quiet",
			[]string{"dphys-swapfile.service", "regenerate_ssh_host_keys.service", "resize2fs_once.service"}, false,
			[]string{"rpi-eeprom-update.service", "sshswitch.service"}},
		{"debian-raspi", debianRaspi(), "console=tty0 console=ttyS1,115200 rw net.ifnames=0 cma=64M rootwait",
			[]string{"rpi-resizerootfs.service", "rpi-generate-ssh-host-keys.service"}, false,
			[]string{"rpi-set-sysconf.service", "dphys-swapfile.service"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			root, prep, identity := filepath.Join(dir, "root"), filepath.Join(dir, "prep"), filepath.Join(dir, "identity")
			writeTree(t, root, c.files)
			run(t, "setfacl", "-m", "g:4:r-x", filepath.Join(root, "etc")) // as systemd-tmpfiles might
			before := takeSnapshot(t, root, nil)
			var logs strings.Builder
			changes, err := prepare(context.Background(), c.name, root, prep, slogTo(&logs))
			must(t, err)
			compareSnapshots(t, before, takeSnapshot(t, root, nil)) // the pristine tree is untouched
			id := Identity{Hostname: "pi-01", Serial: "9ffefdef", User: "ops", AuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake ops@laptop"}}
			must(t, WriteIdentity(identity, id))
			o, err := overlay.New(overlay.Options{Upper: filepath.Join(dir, "upper"), Work: filepath.Join(dir, "work"), Lowers: []string{identity, prep, root}})
			must(t, err)
			read := func(p string) string {
				t.Helper()
				f, err := o.Open(p)
				must(t, err)
				defer f.Close()
				var b strings.Builder
				buf := make([]byte, 4096)
				for {
					n, err := f.Read(buf)
					b.Write(buf[:n])
					if err != nil {
						return b.String()
					}
				}
			}

			// the merged /etc shows prep's dir: it carries root's ACL
			if a, b := getfaclIn(t, root, "etc"), getfaclIn(t, prep, "etc"); a != b || !strings.Contains(a, "group:4:r-x") {
				t.Errorf("prep/etc ACL:\n%s\nroot/etc ACL:\n%s", b, a)
			}
			if got := strings.TrimSpace(read("boot/firmware/cmdline.txt")); got != c.cmdline {
				t.Errorf("cmdline.txt = %q, want %q", got, c.cmdline)
			}
			for _, line := range strings.Split(read("etc/fstab"), "\n") {
				if f := strings.Fields(line); len(f) > 1 && !strings.HasPrefix(f[0], "#") && f[0] != "proc" {
					t.Errorf("fstab keeps %q", line)
				}
			}
			for _, u := range c.masked {
				if tgt, err := o.Readlink("etc/systemd/system/" + u); err != nil || tgt != "/dev/null" {
					t.Errorf("%s not masked: %q %v", u, tgt, err)
				}
				if !slices.ContainsFunc(changes, func(s string) bool { return strings.HasPrefix(s, "masked "+u+": ") }) {
					t.Errorf("changes do not list the mask of %s: %v", u, changes)
				}
				if !strings.Contains(logs.String(), "masked "+u) {
					t.Errorf("no log line for the mask of %s:\n%s", u, logs.String())
				}
			}
			for _, u := range c.unmasked {
				if tgt, err := o.Readlink("etc/systemd/system/" + u); err == nil && tgt == "/dev/null" {
					t.Errorf("%s masked", u)
				}
			}
			// get_fw_loc reads /etc/default/raspberrypi-sys-mods as shell
			_, err = o.Lstat("etc/default/raspberrypi-sys-mods")
			if c.fwloc {
				def := filepath.Join(dir, "default")
				must(t, os.WriteFile(def, []byte(read("etc/default/raspberrypi-sys-mods")), 0o644))
				out, err := exec.Command("sh", "-c", `. "$1"; echo "$FWLOC"`, "sh", def).Output()
				if err != nil || strings.TrimSpace(string(out)) != "/boot/firmware" {
					t.Errorf("FWLOC from /etc/default/raspberrypi-sys-mods: %q %v", out, err)
				}
			} else if err == nil {
				t.Error("/etc/default/raspberrypi-sys-mods written for an image without get_fw_loc")
			}
			// the first user as Pi OS's userconfig and sshswitch want them
			if got := read("boot/firmware/userconf.txt"); got != "ops:*\n" {
				t.Errorf("userconf.txt = %q", got)
			}
			if _, err := o.Lstat("boot/firmware/ssh"); err != nil {
				t.Errorf("no ssh flag with keys given: %v", err)
			}
		})
	}
}

// TestImportDebianRaspiImage imports a small stand-in for a Debian bookworm arm64 image with
// systemd and raspi-firmware, laid out as a Pi .img.xz (what the e2e test builds for real with
// mmdebstrap): merged /usr, the kernel and initramfs copied to the FAT partition and named by
// config.txt, units in /etc/systemd/system, the journal directory with systemd's ACLs, fstab
// and cmdline.txt by LABEL. It must import, verify and prepare cleanly.
func TestImportDebianRaspiImage(t *testing.T) {
	needRoot(t)
	needTool(t, "mkfs.ext4", "mkfs.vfat", "mcopy", "mmd", "sfdisk", "xz", "setfacl", "getfacl")
	work := t.TempDir()
	src := filepath.Join(work, "src")
	files := debianRaspi()
	for p, v := range map[string]string{
		"bin": "-> usr/bin", "sbin": "-> usr/sbin", "lib": "-> usr/lib",
		"usr/lib/systemd/systemd":                 "#!/bin/sh\n",
		"usr/sbin/init":                           "-> ../lib/systemd/systemd",
		"usr/bin/sudo":                            "#!/bin/sh\n",
		"boot/vmlinuz-6.1.0-28-arm64":             "kernel\n",
		"boot/initrd.img-6.1.0-28-arm64":          "initramfs\n",
		"etc/passwd":                              "root:x:0:0:root:/root:/bin/bash\n",
		"etc/group":                               "root:x:0:\nadm:x:4:\nsystemd-journal:x:999:\n",
		"etc/resolv.conf":                         "-> ../run/systemd/resolve/stub-resolv.conf",
		"var/log/journal/.keep":                   "",
		"etc/systemd/system/getty.target.wants/x": "-> /lib/systemd/system/getty@.service",
	} {
		files[p] = v
	}
	delete(files, "lib/systemd/system/ssh.service")
	files["usr/lib/systemd/system/ssh.service"] = unitStub
	writeTree(t, src, files)
	journal := filepath.Join(src, "var/log/journal")
	run(t, "setfacl", "-m", "g:4:r-x", journal)
	run(t, "setfacl", "-d", "-m", "g:4:r-x", journal)
	boot := map[string][]byte{}
	for p, v := range files {
		if rel, ok := strings.CutPrefix(p, "boot/firmware/"); ok {
			boot[rel] = []byte(v)
		}
	}
	boot["vmlinuz-6.1.0-28-arm64"] = []byte("kernel\n")
	boot["initrd.img-6.1.0-28-arm64"] = []byte("initramfs\n")
	boot["bcm2711-rpi-4-b.dtb"] = randomBytes(t, 30_000)
	must(t, os.RemoveAll(filepath.Join(src, "boot/firmware")))
	must(t, os.Mkdir(filepath.Join(src, "boot/firmware"), 0o755))
	rootPart := filepath.Join(work, "root.ext4")
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "RASPIROOT", "-d", src, rootPart, "32M")
	img := assembleDisk(t, work, rootPart, boot, 32<<20)
	xzFile(t, img, img+".xz")

	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	info, err := st.Import(context.Background(), img+".xz", "bookworm", ImportOptions{Prepare: true, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	root := st.RootDir("bookworm")
	if want, got := getfaclIn(t, src, "var/log/journal"), getfaclIn(t, root, "var/log/journal"); got != want || !strings.Contains(want, "default:group:4:r-x") {
		t.Errorf("journal ACLs:\n--- source\n%s--- imported\n%s", want, got)
	}
	if problems, err := st.Verify(context.Background(), "bookworm"); err != nil || len(problems) > 0 {
		t.Errorf("verify: %v %v", problems, err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "boot/firmware/vmlinuz-6.1.0-28-arm64")); err != nil || string(b) != "kernel\n" {
		t.Errorf("kernel on the boot partition: %q %v", b, err)
	}
	for _, want := range []string{"masked rpi-resizerootfs.service", "masked rpi-generate-ssh-host-keys.service", "/etc/fstab: removed 2 SD-card line(s)", "/boot/firmware/cmdline.txt: removed root=LABEL=RASPIROOT fsck.repair=yes"} {
		if !slices.ContainsFunc(info.Changes, func(c string) bool { return strings.HasPrefix(c, want) }) {
			t.Errorf("changes lack %q: %v", want, info.Changes)
		}
	}
}
