package boot_test

// Scripted boots: a Pi 4, a Pi 3 and a Pi 5 (and a U-Boot board) go through DHCP and
// then the exact TFTP request sequence PI-BOOT.md describes, against pifleet's DHCP and
// TFTP servers in a network namespace; then real clients (curl, tftp-hpa) fetch from the
// same servers over the same veth.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
	"github.com/pifleet/pifleet/boot/dhcp"
	"github.com/pifleet/pifleet/boot/tftp"
	"github.com/pifleet/pifleet/test/netns"
	"github.com/pifleet/pifleet/test/require"
)

// firmwareDir lays out a Pi boot partition with the files every model asks for.
func firmwareDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]int{
		"bootcode.bin": 52_000, "start.elf": 290_000, "fixup.dat": 7_300, "start4.elf": 2_250_000, "fixup4.dat": 5_400,
		"bcm2710-rpi-3-b.dtb": 31_000, "bcm2711-rpi-4-b.dtb": 54_000, "bcm2712-rpi-5-b.dtb": 76_000,
		"overlays/overlay_map.dtb": 4_000, "overlays/vc4-kms-v3d.dtbo": 4_000,
		"kernel8.img": 3_000_000, "kernel_2712.img": 3_100_000, "initramfs8": 1_000_000,
	}
	for name, size := range files {
		data := make([]byte, size)
		rand.Read(data)
		writeFile(t, filepath.Join(dir, name), data)
	}
	writeFile(t, filepath.Join(dir, "config.txt"), []byte("arm_64bit=1\nkernel=kernel8.img\ninitramfs initramfs8 followkernel\n"))
	writeFile(t, filepath.Join(dir, "cmdline.txt"), []byte("console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n"))
	return dir
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// newBoard makes a board whose /boot/firmware is dir, opened escape-proof.
func newBoard(t *testing.T, name, mac, serial, ip, dir string) *boot.Board {
	t.Helper()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	return &boot.Board{
		Name: name, MAC: hw, Serial: serial, IP: netip.MustParseAddr(ip), Hostname: name, Firmware: r.FS(),
		NFSRoot: serverIP.String() + ":/boards/" + name + ",vers=3,tcp,port=2049,mountport=20048,nolock",
		Cmdline: "pifleet.board=" + name, Config: []string{"dtparam=watchdog=on"},
	}
}

// step is one TFTP request of a scripted boot.
type step struct {
	name   string
	probe  bool // read the first block, then "Early terminate"
	exists bool
}

// want is what the board must receive for name (generated files included).
func want(t *testing.T, b *boot.Board, dir, name string) []byte {
	t.Helper()
	switch name {
	case "cmdline.txt":
		s, err := tftp.Cmdline(b)
		if err != nil {
			t.Error(err)
		}
		return []byte(s)
	case "config.txt":
		image, _ := os.ReadFile(filepath.Join(dir, name))
		return append(image, []byte("\n# pifleet: board extras\n"+strings.Join(b.Config, "\n")+"\n")...)
	}
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Error(err) // runs on a namespace thread: no t.Fatal
	}
	return data
}

// piTFTP is a Pi bootloader's TFTP client: lock-step, one socket (and source port) per
// request, options as the model sends them.
type piTFTP struct {
	server netip.Addr
	opts   []string
}

// get requests name; it returns the data (only the first block for a probe) or the
// server's ERROR code.
func (p *piTFTP) get(name string, probe bool) (data []byte, errCode int, err error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		return nil, 0, err
	}
	defer c.Close()
	req := []byte{0, 1}
	for _, f := range append([]string{name, "octet"}, p.opts...) {
		req = append(append(req, f...), 0)
	}
	server := &net.UDPAddr{IP: p.server.AsSlice(), Port: 69}
	if _, err := c.WriteToUDP(req, server); err != nil {
		return nil, 0, err
	}
	blksize, want := 512, uint16(1)
	buf := make([]byte, 70000)
	for {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			return data, 0, fmt.Errorf("%s: %w", name, err)
		}
		pkt := buf[:n]
		switch binary.BigEndian.Uint16(pkt) {
		case 6: // OACK
			f := strings.Split(string(pkt[2:]), "\x00")
			for i := 0; i+1 < len(f); i += 2 {
				if f[i] == "blksize" {
					blksize, _ = strconv.Atoi(f[i+1])
				}
			}
			c.WriteToUDP([]byte{0, 4, 0, 0}, from)
		case 3: // DATA
			if binary.BigEndian.Uint16(pkt[2:]) != want {
				continue
			}
			data = append(data, pkt[4:]...)
			if probe {
				c.WriteToUDP(append([]byte{0, 5, 0, 0}, "Early terminate\x00"...), from)
				return data, 0, nil
			}
			c.WriteToUDP([]byte{0, 4, byte(want >> 8), byte(want)}, from)
			if n-4 < blksize {
				return data, 0, nil
			}
			want++
		case 5: // ERROR
			return nil, int(binary.BigEndian.Uint16(pkt[2:])), nil
		}
	}
}

// runSteps plays a request sequence and checks every answer; it returns the
// timeline entries the steps must have produced, in order.
func runSteps(t *testing.T, n *netns.Pair, client *piTFTP, b *boot.Board, dir, prefix string, steps []step) []string {
	t.Helper()
	var expect []string
	err := netns.Do(n.Client, func() error {
		for _, s := range steps {
			name := prefix + s.name
			data, code, err := client.get(name, s.probe)
			if err != nil {
				return err
			}
			switch {
			case !s.exists && code != 1:
				t.Errorf("%s: got %d bytes (error %d), want file not found", name, len(data), code)
			case s.exists && code != 0:
				t.Errorf("%s: error %d, want the file", name, code)
			case s.exists && s.probe:
				w := want(t, b, dir, s.name)
				if !bytes.Equal(data, w[:min(len(w), len(data))]) || len(data) == 0 {
					t.Errorf("%s: probe got %d bytes that are not the file's first block", name, len(data))
				}
			case s.exists && !bytes.Equal(data, want(t, b, dir, s.name)):
				t.Errorf("%s: got %d bytes, want %d (content differs)", name, len(data), len(want(t, b, dir, s.name)))
			}
			what := "read"
			if !s.exists {
				what = "missing"
			} else if s.probe {
				what = "probe"
			}
			expect = append(expect, what+" "+name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return expect
}

// checkTimeline holds the board's last-boot timeline against the DHCP steps and the
// TFTP steps the script made, in order.
func checkTimeline(t *testing.T, bs *boot.Timeline, b *boot.Board, dhcpSteps []string, tftpSteps []string) {
	t.Helper()
	var gotDHCP, gotTFTP []string
	// The server records a transfer a moment after the board's last ACK: wait (bounded)
	// until every step is there.
	var events []boot.Event
	for range 500 {
		events = bs.LastBoot(b.Name)
		n := 0
		for _, e := range events {
			if e.Stage == boot.StageTFTP {
				n++
			}
		}
		if n >= len(tftpSteps) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A transfer is recorded when it ends, stamped with when it began; the next
	// request can end first.
	slices.SortStableFunc(events, func(x, y boot.Event) int { return x.Time.Compare(y.Time) })
	for _, e := range events {
		switch e.Stage {
		case boot.StageDHCP:
			gotDHCP = append(gotDHCP, e.What)
		case boot.StageTFTP:
			gotTFTP = append(gotTFTP, e.What+" "+e.File)
			if e.MAC != b.MAC.String() || e.Serial != b.Serial || e.Client != b.IP || (e.What != "missing" && e.Err != "") {
				t.Errorf("TFTP event %+v: want MAC %s serial %q client %v, no error", e, b.MAC, b.Serial, b.IP)
			}
		}
	}
	for _, w := range dhcpSteps {
		if !strings.Contains(" "+strings.Join(gotDHCP, " ")+" ", " "+w+" ") {
			t.Errorf("DHCP timeline %v lacks %q", gotDHCP, w)
		}
	}
	if strings.Join(gotTFTP, "\n") != strings.Join(tftpSteps, "\n") {
		t.Errorf("TFTP timeline:\n%s\nwant:\n%s", strings.Join(gotTFTP, "\n"), strings.Join(tftpSteps, "\n"))
	}
}

// pi4Steps is a Pi 4 EEPROM boot once the prefix is settled: the bootloader's reads,
// then start4.elf's (PI-BOOT.md, "TFTP: what a Pi asks for").
var pi4Steps = []step{
	{"config.txt", false, true}, {"pieeprom.sig", false, false}, {"recover4.elf", false, false},
	{"recovery.elf", false, false}, {"start4.elf", false, true}, {"fixup4.dat", false, true},
	{"config.txt", false, true}, {"dt-blob.bin", false, false}, {"initramfs8", false, true},
	{"bcm2711-rpi-4-b.dtb", false, true}, {"overlays/overlay_map.dtb", false, true},
	{"overlays/vc4-kms-v3d.dtbo", false, true}, {"cmdline.txt", false, true}, {"kernel8.img", false, true},
}

// TestPi4Boot: DISCOVER with the Pi's options 60/93/97, OFFER with option 43, REQUEST,
// ACK, then TFTP under the serial prefix, starting with an "Early terminate" probe.
// The second board's serial is not in the fleet: its prefixed probes fail, it drops the
// prefix and is served by its address.
func TestPi4Boot(t *testing.T) {
	n := newNetns(t)
	dir := firmwareDir(t)
	pi := newBoard(t, "pi4-01", "dc:a6:32:01:36:c2", "9ffefdef", "198.18.0.10", dir)
	pi2 := newBoard(t, "pi4-02", "dc:a6:32:01:36:c3", "", "198.18.0.11", dir) // fleet.yaml names it by MAC only
	fleet := &boottest.Fleet{Boards: []*boot.Board{pi, pi2}}
	bs := startBootServers(t, n, fleet, dhcp.ModeFull)

	for _, tc := range []struct {
		board  *boot.Board
		serial uint32
		prefix string
		probes []step
	}{
		{pi, 0x9ffefdef, "9ffefdef/", []step{{"start4.elf", true, true}}},
		{pi2, 0x0badcafe, "", []step{{"start4.elf", true, false}, {"start.elf", true, false}}},
	} {
		t.Run(tc.board.Name, func(t *testing.T) {
			opt97 := piOption97("RPi4", tc.serial, 0xc03111, tc.board.MAC)
			var server netip.Addr
			err := netns.Do(n.Client, func() error {
				c, err := newDHCPClient(n.ClientIf)
				if err != nil {
					return err
				}
				defer c.conn.Close()
				offer, err := c.exchange(piDiscover(0x31313131, tc.board.MAC, opt97), 2)
				if err != nil {
					return err
				}
				if !bytes.Contains(offer.opts[43], []byte("Raspberry Pi Boot")) || offer.yiaddr != tc.board.IP {
					return fmt.Errorf("OFFER: option 43 %q, yiaddr %v", offer.opts[43], offer.yiaddr)
				}
				// The Pi's TFTP server: option 66, else siaddr, else the server identifier.
				server = netip.AddrFrom4([4]byte(offer.opts[54]))
				if s, err := netip.ParseAddr(string(offer.opts[66])); err == nil {
					server = s
				}
				ack, err := c.exchange(piRequest(0x31313131, tc.board.MAC, server, offer.yiaddr, opt97), 5)
				if err != nil {
					return err
				}
				if ack.yiaddr != tc.board.IP {
					return fmt.Errorf("ACK for %v, want %v", ack.yiaddr, tc.board.IP)
				}
				return nil
			})
			if err != nil {
				t.Fatalf("DHCP: %v\n%s", err, bs.logs)
			}
			if server != serverIP {
				t.Fatalf("TFTP server from DHCP = %v, want %v", server, serverIP)
			}
			setClientAddr(t, n, tc.board.IP)
			defer netns.Run(t, "ip", "-n", n.Client, "addr", "del", tc.board.IP.String()+"/15", "dev", n.ClientIf)

			client := &piTFTP{server: server, opts: []string{"tsize", "0", "blksize", "1468"}}
			// The bootloader probes under its serial first; the prefix is kept only if
			// start4.elf is there.
			expect := runSteps(t, n, client, tc.board, dir, fmt.Sprintf("%08x/", tc.serial), tc.probes)
			expect = append(expect, runSteps(t, n, client, tc.board, dir, tc.prefix, pi4Steps)...)
			checkTimeline(t, bs.events, tc.board, []string{"discover", "offer", "request", "ack"}, expect)
		})
	}
	if st := bs.tftp.Stats(); st.Probes != 1 || st.Errors != 0 {
		t.Errorf("TFTP stats %+v: want 1 probe, no errors", st)
	}
	if strings.Contains(bs.logs.String(), "tftp transfer failed") {
		t.Errorf("a transfer was logged as failed:\n%s", bs.logs)
	}

	// Real clients on the same network, as the Pi 4 (its address is still known).
	setClientAddr(t, n, pi.IP)
	kernel, _ := os.ReadFile(filepath.Join(dir, "kernel8.img"))
	for _, blksize := range []string{"512", "1468"} {
		out := filepath.Join(t.TempDir(), "k")
		if msg, err := clientCmd(t, n, "curl", "curl", "-sS", "--tftp-blksize", blksize, "-o", out,
			"tftp://"+serverIP.String()+"/9ffefdef/kernel8.img"); err != nil {
			t.Errorf("curl blksize %s: %v\n%s", blksize, err, msg)
		} else if got, _ := os.ReadFile(out); !bytes.Equal(got, kernel) {
			t.Errorf("curl blksize %s: got %d bytes, want %d", blksize, len(got), len(kernel))
		}
	}
	// More than 65535 blocks of 512 bytes: the block number rolls over.
	big := make([]byte, 65536*512+777)
	rand.Read(big)
	writeFile(t, filepath.Join(dir, "initramfs-big"), big)
	out := filepath.Join(t.TempDir(), "big")
	if msg, err := clientCmd(t, n, "tftp", "tftp-hpa", "-m", "binary", serverIP.String(), "-c", "get", "initramfs-big", out); err != nil || len(bytes.TrimSpace(msg)) > 0 {
		t.Errorf("tftp-hpa: %v\n%s", err, msg)
	} else if got, _ := os.ReadFile(out); !bytes.Equal(got, big) {
		t.Errorf("tftp-hpa rollover: got %d bytes, want %d", len(got), len(big))
	}
}

// clientCmd runs a real client in the client namespace (skipping if not installed).
func clientCmd(t *testing.T, n *netns.Pair, tool, pkg string, args ...string) ([]byte, error) {
	t.Helper()
	require.Tool(t, tool, pkg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + n.Client, tool}, args...)...).CombinedOutput()
}

// TestPi3Boot: the Pi 3B ROM takes the OFFER and never sends a REQUEST; it fetches
// bootcode.bin first, plain octet, 512-byte blocks, no options. Its option 97 carries
// no serial, so the fleet knows it by MAC (DHCP) and address (TFTP).
func TestPi3Boot(t *testing.T) {
	n := newNetns(t)
	dir := firmwareDir(t)
	pi := newBoard(t, "pi3-01", "b8:27:eb:12:34:56", "", "198.18.0.20", dir)
	bs := startBootServers(t, n, &boottest.Fleet{Boards: []*boot.Board{pi}}, dhcp.ModeFull)
	guid := make([]byte, 17)
	for i := 1; i < 17; i++ {
		guid[i] = 0x44
	}
	err := netns.Do(n.Client, func() error {
		c, err := newDHCPClient(n.ClientIf)
		if err != nil {
			return err
		}
		defer c.conn.Close()
		offer, err := c.exchange(piDiscover(0x26f30339, pi.MAC, guid), 2)
		if err != nil {
			return err
		}
		if !bytes.Contains(offer.opts[43], []byte("Raspberry Pi Boot   ")) || offer.yiaddr != pi.IP {
			return fmt.Errorf("OFFER: option 43 %q (want the 3-space padded menu), yiaddr %v", offer.opts[43], offer.yiaddr)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("DHCP: %v\n%s", err, bs.logs)
	}
	setClientAddr(t, n, pi.IP) // from the OFFER, without a REQUEST
	client := &piTFTP{server: serverIP}
	steps := []step{
		{"bootcode.bin", false, true}, {"bootsig.bin", false, false}, {"12345678/start.elf", true, false},
		{"autoboot.txt", false, false}, {"config.txt", false, true}, {"recovery.elf", false, false},
		{"start.elf", false, true}, {"fixup.dat", false, true}, {"config.txt", false, true},
		{"bcm2710-rpi-3-b.dtb", false, true}, {"cmdline.txt", false, true}, {"kernel8.img", false, true},
	}
	expect := runSteps(t, n, client, pi, dir, "", steps)
	checkTimeline(t, bs.events, pi, []string{"discover", "offer"}, expect)
}

// TestPi5Boot: proxy mode (the LAN's router gives the address); the Pi 5 has its
// firmware in EEPROM: config.txt first under the serial prefix, no start4.elf.
func TestPi5Boot(t *testing.T) {
	n := newNetns(t)
	dir := firmwareDir(t)
	pi := newBoard(t, "pi5-01", "2c:cf:67:00:00:01", "0badcafe", "198.18.0.30", dir)
	bs := startBootServers(t, n, &boottest.Fleet{Boards: []*boot.Board{pi}}, dhcp.ModeProxy)
	var server netip.Addr
	err := netns.Do(n.Client, func() error {
		c, err := newDHCPClient(n.ClientIf)
		if err != nil {
			return err
		}
		defer c.conn.Close()
		offer, err := c.exchange(piDiscover(0x55555555, pi.MAC, piOption97("RPi5", 0x0badcafe, 0xd04170, pi.MAC)), 2)
		if err != nil {
			return err
		}
		if !bytes.Contains(offer.opts[43], []byte("Raspberry Pi Boot")) || offer.yiaddr.IsValid() && !offer.yiaddr.IsUnspecified() {
			return fmt.Errorf("proxy OFFER: option 43 %q, yiaddr %v (a proxy gives no address)", offer.opts[43], offer.yiaddr)
		}
		server = netip.AddrFrom4([4]byte(offer.opts[54]))
		return nil
	})
	if err != nil {
		t.Fatalf("DHCP: %v\n%s", err, bs.logs)
	}
	setClientAddr(t, n, pi.IP) // what the router would have given it
	client := &piTFTP{server: server, opts: []string{"tsize", "0", "blksize", "1468"}}
	steps := []step{
		{"config.txt", false, true}, {"pieeprom.sig", false, false}, {"bcm2712-rpi-5-b.dtb", false, true},
		{"overlays/overlay_map.dtb", false, true}, {"armstub8-2712.bin", false, false},
		{"cmdline.txt", false, true}, {"kernel_2712.img", false, true}, {"initramfs8", false, true},
	}
	expect := runSteps(t, n, client, pi, dir, "0badcafe/", steps)
	checkTimeline(t, bs.events, pi, []string{"discover", "offer"}, expect)
}

// TestUBootBoot: a generic arm64 U-Boot board in full mode: boot.scr.uimg, then
// pxelinux.cfg/01-<mac> (after which the hex-IP and default names fail fast), then the
// kernel and initrd it names under the MAC prefix. U-Boot asks timeout 5, blksize 1468.
func TestUBootBoot(t *testing.T) {
	n := newNetns(t)
	dir := firmwareDir(t)
	b := newBoard(t, "arm64-01", "52:54:00:12:34:56", "", "198.18.0.40", dir)
	bs := startBootServers(t, n, &boottest.Fleet{Boards: []*boot.Board{b}}, dhcp.ModeFull)
	err := netns.Do(n.Client, func() error {
		c, err := newDHCPClient(n.ClientIf)
		if err != nil {
			return err
		}
		defer c.conn.Close()
		disc := dhcpPacket(0x1234, b.MAC, opt(53, 1), opt(55, 1, 3, 6, 12, 15, 28, 42, 43, 66, 67),
			opt(60, []byte("PXEClient:Arch:00011:UNDI:003000")...), opt(93, 0, 0x0b), opt(94, 1, 3, 0))
		offer, err := c.exchange(disc, 2)
		if err != nil {
			return err
		}
		if offer.yiaddr != b.IP || offer.siaddr != serverIP {
			return fmt.Errorf("OFFER: yiaddr %v siaddr %v", offer.yiaddr, offer.siaddr)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("DHCP: %v\n%s", err, bs.logs)
	}
	setClientAddr(t, n, b.IP)
	client := &piTFTP{server: serverIP, opts: []string{"timeout", "5", "blksize", "1468"}}
	mac := "52-54-00-12-34-56"
	var script, pxe []byte
	err = netns.Do(n.Client, func() error {
		var code int
		var err error
		if script, code, err = client.get("boot.scr.uimg", false); err != nil || code != 0 {
			return fmt.Errorf("boot.scr.uimg: %v %d", err, code)
		}
		if pxe, code, err = client.get("pxelinux.cfg/01-"+mac, false); err != nil || code != 0 {
			return fmt.Errorf("pxelinux.cfg: %v %d", err, code)
		}
		for _, name := range []string{"pxelinux.cfg/C612002", "pxelinux.cfg/C6", "pxelinux.cfg/default-arm-virt", "pxelinux.cfg/default"} {
			if _, code, err := client.get(name, false); err != nil || code != 1 {
				return fmt.Errorf("%s: %v, error code %d, want file not found", name, err, code)
			}
		}
		for _, name := range []string{"kernel8.img", "initramfs8"} {
			data, code, err := client.get(mac+"/"+name, false)
			if wantData, _ := os.ReadFile(filepath.Join(dir, name)); err != nil || code != 0 || !bytes.Equal(data, wantData) {
				return fmt.Errorf("%s: %v, code %d, %d bytes", name, err, code, len(data))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("TFTP: %v\n%s", err, bs.logs)
	}
	if len(script) < 64 || binary.BigEndian.Uint32(script) != 0x27051956 || script[30] != 6 || !bytes.Contains(script, []byte("setenv tftptimeout 1000\nsetenv tftptimeoutcountmax 50\npxe get\npxe boot\n")) {
		t.Errorf("boot.scr.uimg is not a U-Boot script image setting a 1 s TFTP timeout and running pxe get/boot: %q", script)
	}
	cmdline, _ := tftp.Cmdline(b)
	for _, line := range []string{"kernel " + mac + "/kernel8.img\n", "initrd " + mac + "/initramfs8\n", "append " + cmdline} {
		if !bytes.Contains(pxe, []byte(line)) {
			t.Errorf("pxelinux.cfg lacks %q:\n%s", line, pxe)
		}
	}
}

// TestBlockSizeFitsMTU: on a 1400-byte MTU link a Pi asking for 1468-byte blocks gets
// 1368 (MTU - 20 IP - 8 UDP - 4 TFTP), so no DATA packet is fragmented.
func TestBlockSizeFitsMTU(t *testing.T) {
	n := newNetns(t)
	netns.Run(t, "ip", "-n", n.Server, "link", "set", n.ServerIf, "mtu", "1400")
	netns.Run(t, "ip", "-n", n.Client, "link", "set", n.ClientIf, "mtu", "1400")
	dir := firmwareDir(t)
	pi := newBoard(t, "pi4-01", "dc:a6:32:01:36:c2", "9ffefdef", "198.18.0.10", dir)
	startBootServers(t, n, &boottest.Fleet{Boards: []*boot.Board{pi}}, dhcp.ModeProxy)
	setClientAddr(t, n, pi.IP)
	err := netns.Do(n.Client, func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{})
		if err != nil {
			return err
		}
		defer c.Close()
		c.WriteToUDP([]byte("\x00\x01start4.elf\x00octet\x00blksize\x001468\x00"), &net.UDPAddr{IP: serverIP.AsSlice(), Port: 69})
		buf := make([]byte, 2000)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, _, err := c.ReadFromUDP(buf)
		if err != nil {
			return err
		}
		if got := string(buf[:k]); got != "\x00\x06blksize\x001368\x00" {
			return fmt.Errorf("OACK %q, want blksize 1368", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestNeighbourEvidence (issue 13.1): proxy mode, a Pi 4 without a fixed IP. A host with
// its own MAC that types the board's serial is refused (and bound to nothing); the
// board itself (its MAC in the server's neighbour table, from the ARP it sent) is
// served and its address bound, so its bare names are its files from then on.
func TestNeighbourEvidence(t *testing.T) {
	n := newNetns(t)
	dir := firmwareDir(t)
	pi := newBoard(t, "pi4-nb", "dc:a6:32:01:36:c9", "0badf00d", "198.18.0.104", dir)
	pi.IP = netip.Addr{} // the router's address, unknown to the fleet
	fleet := &boottest.Fleet{Boards: []*boot.Board{pi}}
	bs := startBootServers(t, n, fleet, dhcp.ModeProxy)
	client := &piTFTP{server: serverIP, opts: []string{"tsize", "0", "blksize", "1468"}}
	get := func(name string) (data []byte, code int) {
		t.Helper()
		err := netns.Do(n.Client, func() error {
			var err error
			data, code, err = client.get(name, false)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return data, code
	}

	stranger := netip.MustParseAddr("198.18.0.77")
	setClientAddr(t, n, stranger)
	for _, name := range []string{"0badf00d/config.txt", "dc-a6-32-01-36-c9/cmdline.txt", "pxelinux.cfg/01-dc-a6-32-01-36-c9"} {
		if data, code := get(name); code == 0 {
			t.Errorf("%s from a host that is not the board: %d bytes served", name, len(data))
		}
	}
	if b, ok := fleet.Bound(stranger); ok {
		t.Errorf("the stranger's address is bound to %s", b.Name)
	}
	// A refusal is recorded in the timeline, then counted, just after its ERROR leaves:
	// the client can be done before the server is. Wait (bounded) for the count.
	st := bs.tftp.Stats()
	for i := 0; i < 500 && st.Refused+st.Missing < 3; i++ {
		time.Sleep(10 * time.Millisecond)
		st = bs.tftp.Stats()
	}
	if st.Refused != 2 {
		t.Errorf("stats %+v: want the 2 prefixed requests refused", st)
	}
	var refused int
	for _, e := range bs.events.LastBoot(pi.Name) {
		if e.What == "refused" && e.Client == stranger {
			refused++
		}
	}
	if refused != 2 {
		t.Errorf("board timeline has %d refusals from %v, want 2", refused, stranger)
	}

	netns.Run(t, "ip", "-n", n.Client, "addr", "flush", "dev", n.ClientIf)
	n.SetClientMAC(t, pi.MAC.String())
	board := netip.MustParseAddr("198.18.0.104")
	setClientAddr(t, n, board)
	if data, code := get("0badf00d/config.txt"); code != 0 || !bytes.Equal(data, want(t, pi, dir, "config.txt")) {
		t.Fatalf("the board's own config.txt: error %d, %d bytes\n%s", code, len(data), bs.logs)
	}
	if b, ok := fleet.Bound(board); !ok || b != pi {
		t.Fatalf("the board's address is not bound to it (%v, %v)", b, ok)
	}
	if data, code := get("cmdline.txt"); code != 0 || !bytes.Equal(data, want(t, pi, dir, "cmdline.txt")) {
		t.Errorf("bare cmdline.txt from the bound address: error %d, %d bytes", code, len(data))
	}

	// The board at a new address, having taken the server's MAC from a DHCP reply
	// rather than ARPing for it: the server has no entry for it, asks (ARP), and binds.
	netns.Run(t, "ip", "-n", n.Server, "neigh", "flush", "dev", n.ServerIf)
	netns.Run(t, "ip", "-n", n.Client, "addr", "flush", "dev", n.ClientIf)
	moved := netip.MustParseAddr("198.18.0.105")
	setClientAddr(t, n, moved)
	var serverMAC string
	netns.Do(n.Server, func() error {
		if ifi, err := net.InterfaceByName(n.ServerIf); err == nil {
			serverMAC = ifi.HardwareAddr.String()
		}
		return nil
	})
	netns.Run(t, "ip", "-n", n.Client, "neigh", "replace", serverIP.String(), "lladdr", serverMAC, "dev", n.ClientIf, "nud", "permanent")
	if data, code := get("0badf00d/config.txt"); code != 0 || !bytes.Equal(data, want(t, pi, dir, "config.txt")) {
		t.Fatalf("the board without an ARP entry on the server: error %d, %d bytes\n%s", code, len(data), bs.logs)
	}
	if b, ok := fleet.Bound(moved); !ok || b != pi {
		t.Errorf("the board's new address is not bound to it (%v, %v)", b, ok)
	}
	if _, ok := fleet.Bound(board); ok {
		t.Error("the board's old address is still bound")
	}
}
