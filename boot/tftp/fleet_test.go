package tftp

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
	"github.com/pifleet/pifleet/test/netns"
)

// secret is what the files outside every board's tree contain; no request may ever
// return it.
const secret = "SECRET-outside-the-board-tree"

// piTree lays out a Pi 4 boot partition in dir/<name>/firmware, next to a file outside
// the tree and symlinks that try to reach it. It returns the firmware dir.
func piTree(t testing.TB, dir, name string) string {
	t.Helper()
	fw := filepath.Join(dir, name, "firmware")
	must(t, os.MkdirAll(filepath.Join(fw, "overlays"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, name, "secret"), []byte(secret), 0o644))
	files := map[string][]byte{
		"bootcode.bin":              randBytes(t, 52_000),
		"start4.elf":                randBytes(t, 300_000),
		"start.elf":                 randBytes(t, 290_000),
		"fixup4.dat":                randBytes(t, 5_400),
		"fixup.dat":                 randBytes(t, 7_300),
		"bcm2711-rpi-4-b.dtb":       randBytes(t, 52_000),
		"bcm2712-rpi-5-b.dtb":       randBytes(t, 76_000),
		"bcm2710-rpi-3-b.dtb":       randBytes(t, 31_000),
		"overlays/vc4-kms-v3d.dtbo": randBytes(t, 3_000),
		"overlays/overlay_map.dtb":  randBytes(t, 4_000),
		"kernel8.img":               randBytes(t, 1_500_000),
		"kernel_2712.img":           randBytes(t, 1_400_000),
		"initramfs8":                randBytes(t, 700_000),
		"name.txt":                  []byte(name + "\n"),
		"config.txt":                []byte("# image config\ndtparam=audio=on\n[pi4]\nkernel=wrong.img\n[all]\nkernel=kernel8.img\ninitramfs initramfs8 followkernel\narm_64bit=1\n"),
		"cmdline.txt":               []byte("console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n"),
		"empty":                     nil,
		"exactly-512":               randBytes(t, 512),
		"exactly-1468":              randBytes(t, 1468),
		"sub/dir/nested.txt":        []byte("nested " + name + "\n"),
		"pxelinux.cfg/default":      []byte("image's own default, never served\n"),
		"boot.scr.uimg":             []byte("image's own boot script, never served\n"),
		"9ffefdef/not-a-prefix.txt": []byte("a serial-like directory in the tree\n"),
		"overlays/README":           []byte("overlays\n"),
		"issue.txt":                 []byte("Raspberry Pi reference\n"),
		"LICENCE.broadcom":          []byte("licence\n"),
		"dir-only/.keep":            nil,
		"link-inside-target.txt":    []byte("target inside " + name + "\n"),
	}
	for n, data := range files {
		p := filepath.Join(fw, n)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, data, 0o644))
	}
	must(t, os.Symlink("../secret", filepath.Join(fw, "escape-rel")))
	must(t, os.Symlink(filepath.Join(dir, name, "secret"), filepath.Join(fw, "escape-abs")))
	must(t, os.Symlink("/etc/passwd", filepath.Join(fw, "escape-etc")))
	must(t, os.Symlink("..", filepath.Join(fw, "up")))
	must(t, os.Symlink("link-inside-target.txt", filepath.Join(fw, "link-inside")))
	must(t, syscall.Mkfifo(filepath.Join(fw, "fifo"), 0o644))
	return fw
}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// rootFS opens dir the way tests stand in for a board's overlay: os.Root refuses every
// path that leaves dir, symlinks included.
func rootFS(t testing.TB, dir string) *os.Root {
	t.Helper()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// twoBoards builds a fleet of two Pi 4s with their own trees: pi-a at 127.0.0.1 and
// pi-b at 127.0.0.2 (both loopback addresses of this host).
func twoBoards(t testing.TB) (*boottest.Fleet, *boot.Board, *boot.Board) {
	t.Helper()
	dir := t.TempDir()
	a := &boot.Board{
		Name:     "pi-a",
		MAC:      net.HardwareAddr{0xdc, 0xa6, 0x32, 0x01, 0x36, 0xc2},
		Serial:   "9ffefdef",
		IP:       netip.MustParseAddr("127.0.0.1"),
		Firmware: rootFS(t, piTree(t, dir, "pi-a")).FS(),
		NFSRoot:  "127.0.0.1:/boards/pi-a,vers=3,tcp,port=2049,mountport=20048,nolock",
		Cmdline:  "pifleet.board=pi-a",
		Config:   []string{"dtoverlay=disable-wifi"},
	}
	b := &boot.Board{
		Name:     "pi-b",
		MAC:      net.HardwareAddr{0xdc, 0xa6, 0x32, 0xaa, 0xbb, 0xcc},
		Serial:   "12345678",
		IP:       netip.MustParseAddr("127.0.0.2"),
		Firmware: rootFS(t, piTree(t, dir, "pi-b")).FS(),
		NFSRoot:  "127.0.0.1:/boards/pi-b,vers=3,tcp,port=2049,mountport=20048,nolock",
	}
	return &boottest.Fleet{Boards: []*boot.Board{a, b}}, a, b
}

// startServer runs a Server on 127.0.0.1:0 until the test ends.
func startServer(t testing.TB, fleet boot.Fleet, cfg Config) (*Server, *boot.Timeline, *netns.LogBuffer) {
	t.Helper()
	logs := &netns.LogBuffer{}
	cfg.Fleet = fleet
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Events == nil {
		cfg.Events = boot.NewTimeline()
	}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
	})
	return s, cfg.Events, logs
}

func serverPort(s *Server) int { return s.Addr().(*net.UDPAddr).Port }
