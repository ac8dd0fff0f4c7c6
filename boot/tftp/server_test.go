package tftp

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	pin "github.com/pin/tftp/v3"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/test/require"
)

// needTool skips a test whose real client is not installed, naming the package.
func needTool(t *testing.T, tool, pkg string) string {
	t.Helper()
	return require.Tool(t, tool, pkg)
}

// waitStats waits (bounded) until the server has accounted for every transfer: a
// client is done when it sends the last ACK (or its ERROR), the server a moment later.
func waitStats(t *testing.T, s *Server, done func(Stats) bool) Stats {
	t.Helper()
	var st Stats
	for range 500 {
		if st = s.Stats(); done(st) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return st
}

// firmwareFile returns the bytes of a file in a board's tree, as the test laid it out.
func firmwareFile(t *testing.T, b *boot.Board, name string) []byte {
	t.Helper()
	f, err := open(b, name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := io.ReadAll(f.r)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// tftpHPA fetches name with tftp-hpa (blksize 512, no options) into a temp file.
func tftpHPA(t *testing.T, port int, name string) ([]byte, error) {
	t.Helper()
	bin := needTool(t, "tftp", "tftp-hpa")
	out := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-m", "binary", "127.0.0.1", strconv.Itoa(port), "-c", "get", name, out)
	msg, err := cmd.CombinedOutput()
	// tftp-hpa exits 0 even on a TFTP error; its message is the verdict.
	if err != nil || len(bytes.TrimSpace(msg)) > 0 {
		return nil, fmt.Errorf("tftp get %s: %v: %s", name, err, msg)
	}
	return os.ReadFile(out)
}

// curlTFTP fetches name with curl's TFTP client at the given block size.
func curlTFTP(t *testing.T, port, blksize int, name string) ([]byte, error) {
	t.Helper()
	bin := needTool(t, "curl", "curl")
	out := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-sS", "--tftp-blksize", strconv.Itoa(blksize), "-o", out,
		fmt.Sprintf("tftp://127.0.0.1:%d/%s", port, name))
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("curl %s: %v: %s", name, err, msg)
	}
	return os.ReadFile(out)
}

func TestTFTPHPA(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, tl, _ := startServer(t, fleet, Config{})
	cmdline, _ := Cmdline(a)
	for _, name := range []string{"start4.elf", "9ffefdef/start4.elf", "dc-a6-32-01-36-c2/kernel8.img",
		"overlays/vc4-kms-v3d.dtbo", "empty", "exactly-512", "cmdline.txt", "9ffefdef/cmdline.txt"} {
		got, err := tftpHPA(t, serverPort(s), name)
		if err != nil {
			t.Error(err)
			continue
		}
		_, path, _ := resolve(fleet, a, name)
		want := firmwareFile(t, a, path)
		if path == "cmdline.txt" {
			want = []byte(cmdline)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: got %d bytes, want %d (content differs)", name, len(got), len(want))
		}
	}
	if _, err := tftpHPA(t, serverPort(s), "no-such-file"); err == nil || !strings.Contains(err.Error(), "Error code 1") {
		t.Errorf("missing file: %v, want Error code 1", err)
	}
	st := waitStats(t, s, func(st Stats) bool { return st.Reads+st.Missing+st.Errors >= 9 })
	var reads, missing int
	for _, e := range tl.LastBoot("pi-a") {
		switch {
		case e.Stage != boot.StageTFTP || e.Board != "pi-a" || e.MAC != "dc:a6:32:01:36:c2" || e.Serial != "9ffefdef":
			t.Errorf("event %+v: wrong board identity", e)
		case e.What == "read":
			reads++
			if e.File == "dc-a6-32-01-36-c2/kernel8.img" && e.Bytes != 1_500_000 {
				t.Errorf("kernel read recorded %d bytes", e.Bytes)
			}
		case e.What == "missing" && e.File == "no-such-file":
			missing++
		}
	}
	if reads != 8 || missing != 1 {
		t.Errorf("timeline has %d reads and %d missing, want 8 and 1", reads, missing)
	}
	if st.Reads != 8 || st.Missing != 1 || st.Errors != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestCurl(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{})
	config, _, _ := configTxt(a)
	for _, blksize := range []int{512, 1468} {
		// No "empty": curl 7.88 fails on any zero-length TFTP file (getpeername errno 107,
		// tftpd-hpa too); tftp-hpa covers it in TestTFTPHPA.
		for _, name := range []string{"kernel8.img", "exactly-1468", "exactly-512", "config.txt", "9ffefdef/bcm2711-rpi-4-b.dtb"} {
			got, err := curlTFTP(t, serverPort(s), blksize, name)
			if err != nil {
				t.Error(err)
				continue
			}
			_, path, _ := resolve(fleet, a, name)
			want := firmwareFile(t, a, path)
			if path == "config.txt" {
				want = config
			}
			if !bytes.Equal(got, want) {
				t.Errorf("blksize %d, %s: got %d bytes, want %d (content differs)", blksize, name, len(got), len(want))
			}
		}
	}
}

// TestRollover sends files of more than 65535 blocks: the block number wraps to 0.
// Small blocks make that cheap (560 KB at blksize 8 is 70,016 blocks); tftp-hpa's
// 32 MiB at 512 runs in boot's TestPi4Boot.
func TestRollover(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	dir := t.TempDir()
	small := randBytes(t, 560_123)
	must(t, os.WriteFile(filepath.Join(dir, "initramfs8"), small, 0o644))
	a.Firmware = rootFS(t, dir).FS()
	s, _, _ := startServer(t, fleet, Config{})
	got, err := curlTFTP(t, serverPort(s), 8, "initramfs8")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, small) {
		t.Fatalf("curl blksize 8 got %d bytes of %d (content differs)", len(got), len(small))
	}
	got, oack, err := rawGet(t, "127.0.0.1", serverPort(s), "initramfs8", "blksize", "8")
	if err != nil {
		t.Fatal(err)
	}
	if oack["blksize"] != "8" || !bytes.Equal(got, small) {
		t.Fatalf("raw blksize 8: oack %v, got %d bytes of %d", oack, len(got), len(small))
	}
}

// TestConcurrentTransfers: several clients at once, their transfers taking turns on
// the Ps, and every client still gets exactly its file.
func TestConcurrentTransfers(t *testing.T) {
	needTool(t, "curl", "curl") // not from the client goroutines: Skip must run on the test's
	fleet, a, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{})
	kernel := firmwareFile(t, a, "kernel8.img")
	errs := make(chan error, 6)
	for i := range 6 {
		go func() {
			got, err := curlTFTP(t, serverPort(s), []int{512, 1468}[i%2], "kernel8.img")
			if err == nil && !bytes.Equal(got, kernel) {
				err = fmt.Errorf("client %d: got %d bytes, want %d", i, len(got), len(kernel))
			}
			errs <- err
		}()
	}
	for range 6 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if st := waitStats(t, s, func(st Stats) bool { return st.Reads+st.Errors >= 6 }); st.Reads != 6 || st.Errors != 0 {
		t.Errorf("stats %+v, want 6 reads", st)
	}
}

func TestPinClientTsize(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{})
	c, err := pin.NewClient(s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.RequestTSize(true)
	c.SetBlockSize(1468)
	cmdline, _ := Cmdline(a)
	for name, want := range map[string][]byte{
		"kernel8.img":                       firmwareFile(t, a, "kernel8.img"),
		"9ffefdef/cmdline.txt":              []byte(cmdline),
		"boot.scr.uimg":                     scriptImage("pifleet pi-a", bootScript),
		"pxelinux.cfg/01-dc-a6-32-01-36-c2": func() []byte { b, _ := pxeConfig(a); return b }(),
	} {
		wt, err := c.Receive(name, "octet")
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		size, ok := wt.(pin.IncomingTransfer).Size()
		var buf bytes.Buffer
		if _, err := wt.WriteTo(&buf); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !ok || size != int64(len(want)) || !bytes.Equal(buf.Bytes(), want) {
			t.Errorf("%s: tsize %d (%v), got %d bytes, want %d", name, size, ok, buf.Len(), len(want))
		}
	}
	// netascii works too (tsize is then not offered: the size on the wire differs).
	wt, err := c.Receive("name.txt", "netascii")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil || buf.String() != "pi-a\n" {
		t.Errorf("netascii name.txt = %q, %v", buf.String(), err)
	}
	if _, err := c.Send("upload.bin", "octet"); err == nil {
		t.Error("write request accepted")
	}
}

// rawConn is a UDP socket on a chosen loopback address, for packets no real client sends.
func rawConn(t *testing.T, src string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func rrq(op uint16, name, mode string, opts ...string) []byte {
	p := binary.BigEndian.AppendUint16(nil, op)
	for _, f := range append([]string{name, mode}, opts...) {
		p = append(append(p, f...), 0)
	}
	return p
}

// readPacket waits (bounded) for one packet and returns it with its source.
func readPacket(t *testing.T, c *net.UDPConn, wait time.Duration) ([]byte, *net.UDPAddr, error) {
	t.Helper()
	buf := make([]byte, 70000)
	c.SetReadDeadline(time.Now().Add(wait))
	n, from, err := c.ReadFromUDP(buf)
	return buf[:n], from, err
}

func ack(block uint16) []byte { return []byte{0, opACK, byte(block >> 8), byte(block)} }

// rawGet is a minimal lock-step client: RRQ with options, ACK every block, collect data.
func rawGet(t *testing.T, src string, port int, name string, opts ...string) ([]byte, map[string]string, error) {
	t.Helper()
	c := rawConn(t, src)
	server := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	if _, err := c.WriteToUDP(rrq(opRRQ, name, "octet", opts...), server); err != nil {
		return nil, nil, err
	}
	blksize := 512
	oack := map[string]string{}
	var data []byte
	want := uint16(1)
	for {
		p, from, err := readPacket(t, c, 5*time.Second)
		if err != nil {
			return data, oack, err
		}
		switch binary.BigEndian.Uint16(p) {
		case opOACK:
			f := strings.Split(string(p[2:]), "\x00")
			for i := 0; i+1 < len(f); i += 2 {
				oack[f[i]] = f[i+1]
			}
			if v, err := strconv.Atoi(oack["blksize"]); err == nil {
				blksize = v
			}
			c.WriteToUDP(ack(0), from)
		case opDATA:
			if binary.BigEndian.Uint16(p[2:]) != want {
				continue
			}
			data = append(data, p[4:]...)
			c.WriteToUDP(ack(want), from)
			if len(p)-4 < blksize {
				return data, oack, nil
			}
			want++
		case opERROR:
			return data, oack, fmt.Errorf("error %d: %s", binary.BigEndian.Uint16(p[2:]), p[4:])
		}
	}
}

func TestOptionNegotiation(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{})
	want := firmwareFile(t, a, "start4.elf")
	tests := []struct {
		opts []string
		oack map[string]string
	}{
		{[]string{"tsize", "0", "blksize", "1024"}, map[string]string{"tsize": "300000", "blksize": "1024"}}, // Pi 4, 2021
		{[]string{"tsize", "0", "blksize", "1468"}, map[string]string{"tsize": "300000", "blksize": "1468"}}, // Pi 4/5 now
		{[]string{"BLKSIZE", "65464"}, map[string]string{"blksize": "1468"}},                                 // clamped
		{[]string{"blksize", "100"}, map[string]string{"blksize": "100"}},
		{[]string{"timeout", "5", "blksize", "1468"}, map[string]string{"timeout": "5", "blksize": "1468"}}, // U-Boot
		{[]string{"windowsize", "16", "blksize", "abc"}, map[string]string{}},                               // nothing granted: no OACK
		{[]string{"blksize", "7", "timeout", "0"}, map[string]string{}},
	}
	for _, tt := range tests {
		got, oack, err := rawGet(t, "127.0.0.1", serverPort(s), "start4.elf", tt.opts...)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%v: %v, %d bytes", tt.opts, err, len(got))
		}
		if fmt.Sprint(oack) != fmt.Sprint(tt.oack) {
			t.Errorf("%v: OACK %v, want %v", tt.opts, oack, tt.oack)
		}
	}
	// A server limited to 1024 grants no more, even to a client asking for 1468.
	s2, _, _ := startServer(t, fleet, Config{MaxBlockSize: 1024})
	if _, oack, err := rawGet(t, "127.0.0.1", serverPort(s2), "start4.elf", "blksize", "1468"); err != nil || oack["blksize"] != "1024" {
		t.Errorf("MaxBlockSize 1024: OACK %v, %v", oack, err)
	}
}

// expectError sends one request and checks the ERROR code that comes back.
func expectError(t *testing.T, src string, port int, pkt []byte, code uint16) {
	t.Helper()
	c := rawConn(t, src)
	c.WriteToUDP(pkt, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	p, _, err := readPacket(t, c, 5*time.Second)
	if err != nil {
		t.Errorf("%q: %v", pkt, err)
		return
	}
	if len(p) < 4 || binary.BigEndian.Uint16(p) != opERROR || binary.BigEndian.Uint16(p[2:]) != code {
		t.Errorf("%q: got %q, want ERROR %d", pkt, p, code)
	}
}

// expectSilence sends a packet port 69 must not answer, then a request that must work.
func expectSilence(t *testing.T, port int, pkt []byte) {
	t.Helper()
	c := rawConn(t, "127.0.0.1")
	c.WriteToUDP(pkt, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	c.WriteToUDP(rrq(opRRQ, "name.txt", "octet"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	p, from, err := readPacket(t, c, 5*time.Second)
	if err != nil || len(p) < 4 || binary.BigEndian.Uint16(p) != opDATA || string(p[4:]) != "pi-a\n" {
		t.Errorf("after %q: got %q, %v; want only the DATA of the next request", pkt, p, err)
		return
	}
	// Finish the transfer: an unacknowledged one keeps its per-client slot until it
	// times out, and the caller goes on to ask from the same address.
	c.WriteToUDP(ack(1), from)
}

func TestMalformedAndRefused(t *testing.T) {
	fleet, _, _ := twoBoards(t)
	s, _, logs := startServer(t, fleet, Config{})
	port := serverPort(s)
	for _, pkt := range [][]byte{{}, {0}, {0, 9, 1, 2}, {0, opDATA, 0, 1, 'x'}, {0, opACK, 0, 1}, {0, opERROR, 0, 0, 0}, {0, opOACK, 0}} {
		expectSilence(t, port, pkt)
	}
	expectError(t, "127.0.0.1", port, []byte{0, opRRQ}, errCodeIllegal)
	expectError(t, "127.0.0.1", port, []byte("\x00\x01start4.elf"), errCodeIllegal)
	expectError(t, "127.0.0.1", port, []byte("\x00\x01start4.elf\x00octet"), errCodeIllegal)
	expectError(t, "127.0.0.1", port, rrq(opRRQ, "start4.elf", "mail"), errCodeIllegal)
	expectError(t, "127.0.0.1", port, rrq(opWRQ, "start4.elf", "octet"), errCodeAccess)
	for _, name := range []string{"../secret", "/etc/passwd", "9ffefdef/../../secret", "escape-rel", "escape-abs",
		"escape-etc", "up/secret", strings.Repeat("x/", 200), "12345678/name.txt", "dc-a6-32-aa-bb-cc/name.txt"} {
		expectError(t, "127.0.0.1", port, rrq(opRRQ, name, "octet"), errCodeAccess)
	}
	for _, name := range []string{"fifo", "overlays", "no-such", "00000000/start4.elf", "pxelinux.cfg/default",
		"pxelinux.cfg/7F000001", "pxelinux.cfg/01-dc-a6-32-aa-bb-cc"} {
		expectError(t, "127.0.0.1", port, rrq(opRRQ, name, "octet"), errCodeNotFound)
	}
	// pi-b's own address gets pi-b's file under its prefix.
	if got, _, err := rawGet(t, "127.0.0.2", port, "12345678/name.txt"); err != nil || string(got) != "pi-b\n" {
		t.Errorf("pi-b: %q, %v", got, err)
	}
	// A stranger: "not found" every time, logged once.
	for range 3 {
		expectError(t, "127.0.0.9", port, rrq(opRRQ, "start4.elf", "octet"), errCodeNotFound)
	}
	if n := strings.Count(logs.String(), "not in the fleet"); n != 1 {
		t.Errorf("unknown client logged %d times, want once\n%s", n, logs)
	}
	if got, _, err := rawGet(t, "127.0.0.1", port, "name.txt"); err != nil || string(got) != "pi-a\n" {
		t.Errorf("still serving after all that: %q, %v", got, err)
	}
}

// TestEarlyTerminate plays the Pi's existence probe: OACK, ACK 0, DATA 1, then
// ERROR "Early terminate". It is a probe, not a failure.
func TestEarlyTerminate(t *testing.T) {
	fleet, _, _ := twoBoards(t)
	s, tl, logs := startServer(t, fleet, Config{})
	c := rawConn(t, "127.0.0.1")
	c.WriteToUDP(rrq(opRRQ, "9ffefdef/start4.elf", "octet", "tsize", "0", "blksize", "1024"),
		&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: serverPort(s)})
	p, from, err := readPacket(t, c, 5*time.Second)
	if err != nil || binary.BigEndian.Uint16(p) != opOACK || !bytes.Contains(p, []byte("tsize\x00300000\x00")) {
		t.Fatalf("OACK: %q, %v", p, err)
	}
	c.WriteToUDP(ack(0), from)
	if p, _, err = readPacket(t, c, 5*time.Second); err != nil || len(p) != 4+1024 {
		t.Fatalf("DATA 1: %d bytes, %v", len(p), err)
	}
	c.WriteToUDP(append([]byte{0, opERROR, 0, 0}, "Early terminate\x00"...), from)
	st := waitStats(t, s, func(st Stats) bool { return st.Probes+st.Errors > 0 })
	var probes int
	for _, e := range tl.LastBoot("pi-a") {
		if e.What == "probe" && e.File == "9ffefdef/start4.elf" && e.Bytes == 1024 && e.Err == "" {
			probes++
		}
	}
	if probes != 1 || st.Probes != 1 || st.Errors != 0 {
		t.Errorf("probes in timeline %d, stats %+v", probes, st)
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("a probe was logged as a failure:\n%s", logs)
	}
}

// TestRetransmit drops the first DATA's ACK: the server must resend the same block and
// carry on when the ACK comes.
func TestRetransmit(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	// Retries: a loaded machine may hold this client off the CPU for longer than the
	// default 5 resends of 200 ms; the transfer must outlast that, not the point here.
	s, _, _ := startServer(t, fleet, Config{Timeout: 200 * time.Millisecond, Retries: 100})
	c := rawConn(t, "127.0.0.1")
	c.WriteToUDP(rrq(opRRQ, "exactly-1468", "octet"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: serverPort(s)})
	first, from, err := readPacket(t, c, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := readPacket(t, c, 5*time.Second) // not acknowledged: sent again
	if err != nil || !bytes.Equal(first, again) {
		t.Fatalf("resent DATA 1: %v, equal %v", err, bytes.Equal(first, again))
	}
	var data []byte
	data = append(data, first[4:]...)
	for block := uint16(1); ; block++ {
		c.WriteToUDP(ack(block), from)
		// More resends of this block may be queued ahead of the next one (the ACK came
		// later than the 200 ms timeout): skip them, waiting for block+1.
		var p []byte
		for {
			if p, _, err = readPacket(t, c, 5*time.Second); err != nil {
				t.Fatalf("waiting for DATA %d: %v", block+1, err)
			}
			if len(p) >= 4 && binary.BigEndian.Uint16(p) == opDATA && binary.BigEndian.Uint16(p[2:]) == block+1 {
				break
			}
		}
		data = append(data, p[4:]...)
		if len(p) < 516 {
			break
		}
	}
	if !bytes.Equal(data, firmwareFile(t, a, "exactly-1468")) {
		t.Errorf("got %d bytes after a retransmission", len(data))
	}
}

// TestDuplicateACK: a client that ACKs a block twice (its own retransmission) must not
// get the next block twice; answering duplicates doubles every later packet (the
// Sorcerer's Apprentice syndrome, RFC 1123 4.2.3.1).
func TestDuplicateACK(t *testing.T) {
	fleet, _, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{Timeout: 10 * time.Second})
	c := rawConn(t, "127.0.0.1")
	c.WriteToUDP(rrq(opRRQ, "exactly-1468", "octet"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: serverPort(s)})
	var from *net.UDPAddr
	var got []uint16
	for block := uint16(1); block <= 3; block++ {
		p, f, err := readPacket(t, c, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		from = f
		got = append(got, binary.BigEndian.Uint16(p[2:]))
		c.WriteToUDP(ack(block), from)
		c.WriteToUDP(ack(block), from) // duplicate
	}
	// Block 3 was the last (1468 = 2*512 + 444); anything more is a duplicate DATA.
	if p, _, err := readPacket(t, c, 500*time.Millisecond); err == nil {
		t.Errorf("extra packet after the last ACK: %q", p[:4])
	}
	if fmt.Sprint(got) != "[1 2 3]" {
		t.Errorf("blocks received %v, want [1 2 3]", got)
	}
}

// FuzzParseRequest: any datagram on port 69 is a request or an error, never a panic;
// granted options stay within what a Pi can follow.
func FuzzParseRequest(f *testing.F) {
	f.Add(rrq(opRRQ, "9ffefdef/start4.elf", "octet", "tsize", "0", "blksize", "1468"))
	f.Add(rrq(opRRQ, "boot.scr.uimg", "octet", "timeout", "5", "blksize", "1468", "windowsize", "16"))
	f.Add(rrq(opWRQ, "x", "netascii"))
	f.Add([]byte{0, 1, 0, 0, 0})
	f.Add([]byte{0, 1})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		req, err := parseRequest(pkt)
		if err != nil {
			return
		}
		n := negotiate(req.opts, DefaultMaxBlockSize, 300_000, time.Second)
		if n.blockSize < minBlockSize || n.blockSize > DefaultMaxBlockSize || n.timeout < time.Second || n.timeout > MaxClientTimeout {
			t.Fatalf("%q negotiated blksize %d timeout %v", pkt, n.blockSize, n.timeout)
		}
		for _, o := range n.oack {
			if o.name != "blksize" && o.name != "timeout" && o.name != "tsize" {
				t.Fatalf("%q: granted option %q", pkt, o.name)
			}
		}
	})
}

// TestDuplicateRRQ: a Pi resends its RRQ when DATA 1 is slow; the repeat must not start a
// second transfer racing the first from another port.
func TestDuplicateRRQ(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{Timeout: 10 * time.Second})
	c := rawConn(t, "127.0.0.1")
	req := rrq(opRRQ, "exactly-1468", "octet")
	for range 3 {
		c.WriteToUDP(req, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: serverPort(s)})
	}
	var data []byte
	var tid int
	for block := uint16(1); ; block++ {
		p, from, err := readPacket(t, c, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if tid == 0 {
			tid = from.Port
		}
		if from.Port != tid || binary.BigEndian.Uint16(p[2:]) != block {
			t.Fatalf("packet %q from port %d, want DATA %d from %d only", p[:4], from.Port, block, tid)
		}
		data = append(data, p[4:]...)
		c.WriteToUDP(ack(block), from)
		if len(p) < 516 {
			break
		}
	}
	if !bytes.Equal(data, firmwareFile(t, a, "exactly-1468")) {
		t.Errorf("got %d bytes", len(data))
	}
	// Once that transfer is over, the same request from the same port is a new transfer.
	for range 500 {
		s.flightMu.Lock()
		n := len(s.inFlight)
		s.flightMu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.WriteToUDP(req, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: serverPort(s)})
	if p, from, err := readPacket(t, c, 5*time.Second); err != nil || from.Port == tid || binary.BigEndian.Uint16(p[2:]) != 1 {
		t.Errorf("the request again after its transfer: %v, from port %v (first transfer's %d)", err, from, tid)
	}
	if st := waitStats(t, s, func(st Stats) bool { return st.Reads >= 1 }); st.Reads != 1 || st.Errors != 0 {
		t.Errorf("stats %+v: want 1 read and no failed duplicate", st)
	}
}
