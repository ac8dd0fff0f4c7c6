package tftp

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/test/require"
)

func TestCmdline(t *testing.T) {
	_, a, b := twoBoards(t)
	got, err := Cmdline(a)
	if err != nil {
		t.Fatal(err)
	}
	want := "console=serial0,115200 console=tty1 quiet root=/dev/nfs " +
		"nfsroot=127.0.0.1:/boards/pi-a,vers=3,tcp,port=2049,mountport=20048,nolock rw ip=dhcp rootwait pifleet.board=pi-a\n"
	if got != want {
		t.Errorf("Cmdline(pi-a) =\n%q\nwant\n%q", got, want)
	}
	// The board's own cmdline.txt, changed on the board (through its overlay), is
	// what the next boot starts from.
	b.Firmware = os.DirFS(t.TempDir())
	got, err = Cmdline(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := "root=/dev/nfs nfsroot=127.0.0.1:/boards/pi-b,vers=3,tcp,port=2049,mountport=20048,nolock rw ip=dhcp rootwait\n"; got != want {
		t.Errorf("Cmdline without an image cmdline.txt = %q, want %q", got, want)
	}
	b.NFSRoot = ""
	if _, err := Cmdline(b); err == nil || !strings.Contains(err.Error(), "pi-b") {
		t.Errorf("Cmdline without NFSRoot: %v, want an error naming the board", err)
	}
}

func TestSDCardOptions(t *testing.T) {
	drop := []string{"root=PARTUUID=1-02", "rootfstype=ext4", "fsck.repair=yes", "resize", "rootwait", "rw", "ro",
		"ip=10.0.0.2::10.0.0.1:255.255.255.0", "nfsroot=x:/y", "init=/usr/lib/raspberrypi-sys-mods/firstboot",
		"init=/usr/lib/raspi-config/init_resize.sh"}
	keep := []string{"console=tty1", "quiet", "splash", "init=/sbin/init", "cgroup_enable=memory", "rootdelay=5", "rw=1"}
	for _, a := range drop {
		if !sdCardOption(a) {
			t.Errorf("%q kept, want dropped", a)
		}
	}
	for _, a := range keep {
		if sdCardOption(a) {
			t.Errorf("%q dropped, want kept", a)
		}
	}
}

func TestConfigTxt(t *testing.T) {
	_, a, b := twoBoards(t)
	got, found, err := configTxt(a)
	if err != nil || !found {
		t.Fatal(found, err)
	}
	if !bytes.HasPrefix(got, []byte("# image config\n")) || !bytes.HasSuffix(got, []byte("\n# pifleet: board extras\ndtoverlay=disable-wifi\n")) {
		t.Errorf("config.txt with extras:\n%s", got)
	}
	gotB, found, err := configTxt(b) // no extras: the image's file as is
	if err != nil || !found {
		t.Fatal(found, err)
	}
	if bytes.Contains(gotB, []byte("pifleet")) {
		t.Errorf("config.txt without extras changed:\n%s", gotB)
	}
}

func TestBootFiles(t *testing.T) {
	tests := []struct{ config, kernel, initrd string }{
		{"", "kernel8.img", ""},
		{"kernel=kernel8.img\ninitramfs initramfs8 followkernel\n", "kernel8.img", "initramfs8"},
		{"[pi4]\nkernel=pi4.img\n[all]\nkernel=Image # comment\ninitramfs\tinitrd.img\n", "Image", "initrd.img"},
		{"initramfs_foo=1\nkernel=\n", "kernel8.img", ""},
	}
	for _, tt := range tests {
		k, i := bootFiles([]byte(tt.config))
		if k != tt.kernel || i != tt.initrd {
			t.Errorf("bootFiles(%q) = %q, %q; want %q, %q", tt.config, k, i, tt.kernel, tt.initrd)
		}
	}
}

func TestPXEConfig(t *testing.T) {
	_, a, _ := twoBoards(t)
	got, err := pxeConfig(a)
	if err != nil {
		t.Fatal(err)
	}
	cmdline, _ := Cmdline(a)
	want := "# pifleet: generated for board pi-a\ndefault pifleet\nlabel pifleet\n" +
		"  kernel dc-a6-32-01-36-c2/kernel8.img\n  initrd dc-a6-32-01-36-c2/initramfs8\n  append " + cmdline
	if string(got) != want {
		t.Errorf("pxelinux.cfg =\n%s\nwant\n%s", got, want)
	}
}

// TestBootScriptMatchesMkimage holds the generated U-Boot script image against the one
// u-boot-tools' mkimage writes from the same script, byte for byte.
func TestBootScriptMatchesMkimage(t *testing.T) {
	mkimage := require.Tool(t, "mkimage", "u-boot-tools")
	dir := t.TempDir()
	cmd := filepath.Join(dir, "boot.cmd")
	must(t, os.WriteFile(cmd, []byte(bootScript), 0o644))
	out := filepath.Join(dir, "boot.scr.uimg")
	c := exec.Command(mkimage, "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-n", "pifleet pi-a", "-d", cmd, out)
	c.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=0") // our time stamp is 0 too
	if b, err := c.CombinedOutput(); err != nil {
		t.Fatalf("mkimage: %v\n%s", err, b)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got := scriptImage("pifleet pi-a", bootScript)
	if !bytes.Equal(got, want) {
		t.Errorf("scriptImage differs from mkimage's:\n got %x\nwant %x", got, want)
	}
	ours := filepath.Join(dir, "ours.uimg")
	must(t, os.WriteFile(ours, got, 0o644))
	l, err := exec.Command(mkimage, "-l", ours).CombinedOutput()
	if err != nil || !bytes.Contains(l, []byte("AArch64 Linux Script (uncompressed)")) {
		t.Errorf("mkimage -l: %v\n%s", err, l)
	}
	// And the header is self-consistent without mkimage's help.
	h := append([]byte(nil), got[:uimageHeaderSize]...)
	hcrc := binary.BigEndian.Uint32(h[4:])
	binary.BigEndian.PutUint32(h[4:], 0)
	if crc32.ChecksumIEEE(h) != hcrc || binary.BigEndian.Uint32(got[24:]) != crc32.ChecksumIEEE(got[uimageHeaderSize:]) {
		t.Error("header or data CRC wrong")
	}
}
