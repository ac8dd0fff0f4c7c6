package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/e2e/testbed"
)

var (
	board1 = testBoard{name: "board1", mac: "52:54:00:12:34:01", ip: "10.77.0.11", tap: "tap1"}
	board2 = testBoard{name: "board2", mac: "52:54:00:12:34:02", ip: "10.77.0.12", tap: "tap2"}
)

// TestFleet boots two U-Boot boards (-M virt) from pifleet over DHCP, TFTP and NFS, and
// checks from inside them what a diskless fleet needs: per-board persistence and
// isolation, reset, Unix permissions, a server crash under load, and an untouched image.
func TestFleet(t *testing.T) {
	l := newLab(t, []testBoard{board1, board2})
	imageRoot := filepath.Join(l.state, "images", "layers") // every layer of every image
	before := treeDigest(t, imageRoot)
	l.startServer(t)

	// Boot both at once, as a fleet powering up would.
	// Started here, not in the subtest: they must outlive it. b1 is replaced by reboots.
	var b1, b2 *testbed.Board
	q1 := testbed.MustStartBoard(t, l.net, testbed.BoardConfig{Name: board1.name, Tap: board1.tap, MAC: board1.mac, Machine: testbed.UBootVirt(), LogDir: l.logDir})
	q2 := testbed.MustStartBoard(t, l.net, testbed.BoardConfig{Name: board2.name, Tap: board2.tap, MAC: board2.mac, Machine: testbed.UBootVirt(), LogDir: l.logDir})
	t.Run("boot", func(t *testing.T) {
		for _, q := range []struct {
			qb *testbed.Board
			b  testBoard
		}{{q1, board1}, {q2, board2}} {
			// Each step of the boot on the console, so a failure says how far it got.
			for _, step := range []string{
				`DHCP client bound to address ` + regexp.QuoteMeta(q.b.ip),
				`Filename 'boot\.scr\.uimg'`,
				`pxelinux\.cfg/01-` + strings.ReplaceAll(q.b.mac, ":", "-"),
				// U-Boot's pxe boot fetches the initrd before the kernel.
				`Retrieving file: [^\r\n]*initramfs8`,
				`Retrieving file: [^\r\n]*kernel8\.img`,
				`Starting kernel`,
				`pifleet-initramfs: lease ` + regexp.QuoteMeta(q.b.ip),
				`pifleet-initramfs: mounting ` + regexp.QuoteMeta(serverAddr) + `:/boards/` + q.b.name,
				`PIFLEET-READY`,
			} {
				if _, err := q.qb.Console.Expect(regexp.MustCompile(step), guestFail, bootTimeout); err != nil {
					t.Fatalf("board %s: %v\nconsole log %s, last output:\n%s", q.b.name, err, q.qb.LogPath, q.qb.Console.Tail(4000))
				}
			}
			info := l.check(t, q.qb, "info", "")
			t.Logf("board %s booted: %s", q.b.name, info)
		}
		b1, b2 = q1, q2
	})
	if b1 == nil || b2 == nil {
		t.Fatal("boards did not boot; the remaining checks need them")
	}

	token := fmt.Sprintf("token-%d", time.Now().UnixNano())
	t.Run("root-is-own-nfs-export", func(t *testing.T) {
		for _, q := range []struct {
			qb   *testbed.Board
			name string
		}{{b1, board1.name}, {b2, board2.name}} {
			q.qb.Console.Send("awk '$2 == \"/\" {print \"ROOT=\" $1 \" \" $3}' /proc/mounts")
			want := regexp.MustCompile(`ROOT=` + regexp.QuoteMeta(serverAddr+":/boards/"+q.name) + ` nfs`)
			if _, err := q.qb.Console.Expect(want, guestFail, checkTimeout); err != nil {
				t.Errorf("board %s: root is not its NFS export: %v\n%s", q.name, err, q.qb.Console.Tail(1500))
			}
		}
	})
	t.Run("write-is-not-visible-on-other-board", func(t *testing.T) {
		l.check(t, b1, "write", token)
		l.check(t, b2, "absent", "")
		// On the server, the write is in board1's upper dir only.
		rel := "var/lib/pifleet-check/token"
		if b, err := os.ReadFile(filepath.Join(l.state, "boards", board1.name, "upper", rel)); err != nil || string(b) != token+"\n" {
			t.Errorf("board1's upper has %s = %q, %v; want %q", rel, b, err, token)
		}
		if _, err := os.Lstat(filepath.Join(l.state, "boards", board2.name, "upper", rel)); err == nil {
			t.Errorf("board2's upper has board1's %s", rel)
		}
	})
	t.Run("permissions-setuid-hardlink-rename", func(t *testing.T) {
		l.check(t, b1, "perms", "")
	})
	t.Run("server-sigkill-under-io", func(t *testing.T) {
		io := regexp.MustCompile(`PIFLEET-IO ([0-9]+)`)
		b2.Console.Send("pifleet-check io " + token)
		for range 3 {
			if _, err := b2.Console.Expect(io, guestFail, checkTimeout); err != nil {
				t.Fatalf("io loop did not start: %v\n%s", err, b2.Console.Tail(2000))
			}
		}
		l.killServer()
		t.Log("server killed with SIGKILL while board2 loops on I/O")
		time.Sleep(2 * time.Second) // let the board hit the dead server, not just a gap
		l.startServer(t)
		// Rounds after the restart must complete: the board's handles survived it.
		for range 5 {
			if _, err := b2.Console.Expect(io, guestFail, checkTimeout); err != nil {
				t.Fatalf("io loop did not carry on after the server restart: %v\n%s", err, b2.Console.Tail(3000))
			}
		}
		b2.Console.Send("stop")
		m, err := b2.Console.Expect(regexp.MustCompile(`PIFLEET-CHECK ok io[^\r\n]*\r?\n`), guestFail, checkTimeout)
		m = strings.TrimSpace(m)
		if err != nil {
			t.Fatalf("io loop: %v\n%s", err, b2.Console.Tail(3000))
		}
		t.Log(m)
		// What the board synced is on the server's disk, in board2's upper dir.
		var rounds int
		if _, err := fmt.Sscanf(m, "PIFLEET-CHECK ok io %d rounds", &rounds); err != nil || rounds < 8 {
			t.Fatalf("io loop reported %q: want at least 8 rounds", m)
		}
		ioDir := filepath.Join(l.state, "boards", board2.name, "upper", "var/lib/pifleet-check/io")
		for i := 1; i <= rounds; i++ {
			b, err := os.ReadFile(filepath.Join(ioDir, fmt.Sprintf("f%d", i)))
			if want := fmt.Sprintf("round %d %s\n", i, token); err != nil || string(b) != want {
				t.Errorf("server side %s/f%d = %q, %v; want %q", ioDir, i, b, err, want)
			}
		}
		// No stale handle and no I/O error reached the kernel log either.
		b2.Console.Send("dmesg | grep -ciE 'stale|i/o error|nfs: server .* not responding, timed out' ; echo dmesg-checked")
		if _, err := b2.Console.Expect(regexp.MustCompile(`\n0\r?\ndmesg-checked`), nil, checkTimeout); err != nil {
			b2.Console.Send("dmesg | tail -n 30")
			time.Sleep(3 * time.Second)
			t.Errorf("kernel log mentions stale handles or I/O errors: %v\n%s", err, b2.Console.Tail(3000))
		}
	})
	t.Run("write-survives-reboot", func(t *testing.T) {
		l.powerOff(t, b1)
		b1 = l.boot(t, board1)
		l.check(t, b1, "read", token)
		l.check(t, b2, "absent", "")
	})
	t.Run("reset-restores-image", func(t *testing.T) {
		l.powerOff(t, b1)
		// --force: the server cannot know that a powered-off board let go of its root.
		if out, err := l.pifleet("board", "reset", "-c", l.cfgPath, "--force", board1.name); err != nil {
			t.Fatalf("pifleet board reset %s: %v\n%s", board1.name, err, out)
		}
		b1 = l.boot(t, board1)
		l.check(t, b1, "absent", "")
	})
	t.Run("image-unchanged", func(t *testing.T) {
		b1.Kill()
		b2.Kill()
		l.stopServer()
		if after := treeDigest(t, imageRoot); after != before {
			t.Errorf("the base image %s changed while the boards ran (digest %s, was %s)", imageRoot, after, before)
		}
		// A recovered panic or a crash trace in the server is a bug even if the boards coped.
		if b, err := os.ReadFile(filepath.Join(l.logDir, "server.log")); err != nil || strings.Contains(string(b), "panic") || strings.Contains(string(b), "goroutine ") {
			t.Errorf("server log %s mentions a panic (or cannot be read: %v)", filepath.Join(l.logDir, "server.log"), err)
		}
	})
}

// TestPi3Path follows a Raspberry Pi 3 as far as QEMU allows: QEMU's raspi3b has no
// network boot ROM, so the test fetches what the Pi's firmware would over pifleet's TFTP,
// under the board's serial prefix, boots those with -kernel/-dtb/-initrd and lets the
// initramfs mount the root over NFS through -device usb-net.
func TestPi3Path(t *testing.T) {
	pi := testBoard{name: "pi3", mac: "52:54:00:12:34:03", ip: "10.77.0.13", serial: "00c0ffee", tap: "tap3"}
	l := newLab(t, []testBoard{pi})
	l.startServer(t)
	dl := filepath.Join(l.dir, "tftp")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		t.Fatal(err)
	}
	// The Pi's firmware fetches these from the board's own MAC and address: only that
	// evidence (here the board's fixed ip:) lets pifleet serve the serial's tree. The
	// firmware stand-in is a namespace on the bridge with the board's MAC and address,
	// removed before the emulated board takes them over.
	fw := firmwareHost(t, l.net, pi)
	for _, f := range []string{"config.txt", "cmdline.txt", "kernel8.img", "initramfs8", "bcm2837-rpi-3-b.dtb", "start.elf", "bootcode.bin"} {
		out, err := exec.CommandContext(t.Context(), "ip", "netns", "exec", fw, "busybox", "tftp", "-g", "-b", "1468", "-r", pi.serial+"/"+f, "-l", filepath.Join(dl, f), serverAddr).CombinedOutput()
		if err != nil {
			t.Fatalf("TFTP %s/%s from pifleet: %v: %s", pi.serial, f, err, out)
		}
	}
	if out, err := exec.Command("ip", "netns", "del", fw).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v: %s", fw, err, out)
	}
	// A host that is not the board gets nothing under its serial.
	if out, err := l.net.Command(t.Context(), "busybox", "tftp", "-g", "-r", pi.serial+"/config.txt", "-l", filepath.Join(l.dir, "stranger-config.txt"), serverAddr).CombinedOutput(); err == nil {
		t.Errorf("the server's own namespace (not the board) read %s/config.txt: %s", pi.serial, out)
	}
	cfg, _ := os.ReadFile(filepath.Join(dl, "config.txt"))
	if !strings.Contains(string(cfg), "kernel=kernel8.img") {
		t.Errorf("config.txt over TFTP lacks kernel=kernel8.img:\n%s", cfg)
	}
	cmdline, _ := os.ReadFile(filepath.Join(dl, "cmdline.txt"))
	wantRoot := "nfsroot=" + serverAddr + ":/boards/" + pi.name
	if !strings.Contains(string(cmdline), wantRoot) {
		t.Fatalf("cmdline.txt over TFTP lacks %s:\n%s", wantRoot, cmdline)
	}
	// QEMU's raspi3b UART receives nothing, so the checks run at boot (pifleet.check=,
	// read by the image's rcS) and the test only reads the console.
	appendLine := strings.TrimSpace(string(cmdline)) + " pifleet.check=info,write:pi3-token,read:pi3-token,perms"
	qb := testbed.MustStartBoard(t, l.net, testbed.BoardConfig{
		Name: pi.name, Tap: pi.tap, MAC: pi.mac, LogDir: l.logDir,
		Machine: []string{"-M", "raspi3b", "-m", "1G",
			"-kernel", filepath.Join(dl, "kernel8.img"), "-dtb", filepath.Join(dl, "bcm2837-rpi-3-b.dtb"),
			"-initrd", filepath.Join(dl, "initramfs8"), "-append", appendLine},
		NIC: "usb-net,netdev=net0,mac=" + pi.mac,
	})
	for _, step := range []string{
		`pifleet-initramfs: lease ` + regexp.QuoteMeta(pi.ip),
		`pifleet-initramfs: mounting ` + regexp.QuoteMeta(serverAddr) + `:/boards/` + pi.name,
		`pifleet-demo: pi3 up on Raspberry Pi 3 Model B[^,]*, root ` + regexp.QuoteMeta(serverAddr) + `:/boards/pi3 \(nfs\)`,
		`PIFLEET-READY`,
		`PIFLEET-CHECK ok info`,
		`PIFLEET-CHECK ok write`,
		`PIFLEET-CHECK ok read`,
		`PIFLEET-CHECK ok perms`,
	} {
		if _, err := qb.Console.Expect(regexp.MustCompile(step), guestFail, bootTimeout); err != nil {
			t.Fatalf("pi3: %v\nconsole log %s, last output:\n%s", err, qb.LogPath, qb.Console.Tail(4000))
		}
	}
}

// firmwareHost stands in for a Pi's boot firmware on the lab's bridge: a namespace whose
// veth end has the board's MAC and fixed address. It returns the namespace's name; the
// test deletes it (and t.Cleanup again, in case the test ends first).
func firmwareHost(t *testing.T, n *testbed.Net, b testBoard) string {
	t.Helper()
	ns := n.Name + "-fw"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run("-n", n.Name, "link", "add", "fwbr", "type", "veth", "peer", "name", "fw0", "netns", ns)
	run("-n", n.Name, "link", "set", "fwbr", "master", n.Bridge, "up")
	run("-n", ns, "link", "set", "fw0", "address", b.mac)
	run("-n", ns, "addr", "add", b.ip+"/24", "dev", "fw0")
	run("-n", ns, "link", "set", "fw0", "up")
	run("-n", ns, "link", "set", "lo", "up")
	return ns
}
