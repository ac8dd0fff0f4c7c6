package nfsroot

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pifleet/pifleet/overlay"
)

// TestHelperAttackServer is not a test: run by BenchmarkAttacks as a separate process (so
// its RSS is the server's alone) it serves pi-a and pi-b from NFSROOT_ATTACK_DIR.
func TestHelperAttackServer(t *testing.T) {
	dir := os.Getenv("NFSROOT_ATTACK_DIR")
	if dir == "" {
		t.Skip("helper process for BenchmarkAttacks")
	}
	var exps []Export
	for board, a := range map[string]netip.Addr{"pi-a": addrA, "pi-b": addrB} {
		fs, err := overlay.New(overlay.Options{Upper: filepath.Join(dir, board, "upper"), Work: filepath.Join(dir, board, "work"),
			Lowers: []string{filepath.Join(dir, "lower")}})
		must(t, err)
		exps = append(exps, Export{Board: board, Path: exportPath(board), FS: fs, StateDir: filepath.Join(dir, board, "state"),
			Allow: func(c netip.Addr) bool { return c == a }})
	}
	s := New(Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	s.SetExports(exps)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	fmt.Printf("READY %s\n", ln.Addr())
	go func() { // the counters, for the benchmark's table
		for range time.Tick(500 * time.Millisecond) {
			st := s.Stats()
			fmt.Printf("STATS %d %d %d %d %d\n", st.Conns, st.Reserved, st.ReservedPeak, st.ConnsRefused, st.Throttled)
		}
	}()
	_ = s.ServeNFS(context.Background(), ln)
}

// TestHelperAttacker is not a test: run by BenchmarkAttacks as a separate process (so the
// well-behaved client's latency is not the attacker's scheduling) it runs the attack
// NFSROOT_ATTACK (an index into attacks) against NFSROOT_ATTACK_SERVER until killed.
func TestHelperAttacker(t *testing.T) {
	which := os.Getenv("NFSROOT_ATTACK")
	if which == "" {
		t.Skip("helper process for BenchmarkAttacks")
	}
	i, _ := strconv.Atoi(which)
	to := netip.MustParseAddrPort(os.Getenv("NFSROOT_ATTACK_SERVER"))
	c := dialFrom(t, addrA, to)
	_, root := c.mnt(exportPath("pi-a"))
	fh := c.walk(root, "big")
	stop := make(chan struct{})
	attacks[i].run(stop, to, fh)
	fmt.Println("ATTACKING")
	select {}
}

// attacks are what BenchmarkAttacks runs, each from its own process.
var attacks = []struct {
	name string
	run  func(stop <-chan struct{}, to netip.AddrPort, fh []byte)
}{
	{"none (baseline)", func(<-chan struct{}, netip.AddrPort, []byte) {}},
	{"500 conns from one board's address, 16 pipelined 1 MiB READs each, replies read", func(stop <-chan struct{}, to netip.AddrPort, fh []byte) {
		for range 500 {
			go pipeline(stop, addrA, to, fh, 16, true)
		}
	}},
	{"40 conns from one board's address, 256 pipelined 1 MiB READs each, replies never read", func(stop <-chan struct{}, to netip.AddrPort, fh []byte) {
		for range 40 {
			go pipeline(stop, addrA, to, fh, 256, false)
		}
	}},
	{"5000 idle conns from 1250 addresses no export allows", func(stop <-chan struct{}, to netip.AddrPort, fh []byte) {
		for i := range 5000 {
			go func() {
				from := netip.AddrFrom4([4]byte{127, 0, byte(10 + i/4/250), byte(1 + i/4%250)})
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}, Timeout: 5 * time.Second}
				c, err := d.Dial("tcp", to.String())
				if err != nil {
					return
				}
				<-stop
				c.Close()
			}()
		}
	}},
}

// startAttacker runs attack i in a helper process; killing it ends the attack.
func startAttacker(b *testing.B, i int, to netip.AddrPort) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAttacker$", "-test.timeout=30m")
	cmd.Env = append(os.Environ(), "NFSROOT_ATTACK="+strconv.Itoa(i), "NFSROOT_ATTACK_SERVER="+to.String())
	out, err := cmd.StdoutPipe()
	must(b, err)
	cmd.Stderr = os.Stderr
	must(b, cmd.Start())
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "ATTACKING" {
	}
	go func() {
		for sc.Scan() {
		}
	}()
	return cmd
}

// attackServer is the helper process seen from the benchmark.
type attackServer struct {
	cmd  *exec.Cmd
	addr netip.AddrPort
	mu   sync.Mutex
	last string // last STATS line
}

func startAttackServer(b *testing.B, dir string) *attackServer {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAttackServer$", "-test.timeout=30m")
	cmd.Env = append(os.Environ(), "NFSROOT_ATTACK_DIR="+dir)
	out, err := cmd.StdoutPipe()
	must(b, err)
	cmd.Stderr = os.Stderr
	must(b, cmd.Start())
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	as := &attackServer{cmd: cmd}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "READY "):
				ready <- strings.TrimPrefix(line, "READY ")
			case strings.HasPrefix(line, "STATS "):
				as.mu.Lock()
				as.last = strings.TrimPrefix(line, "STATS ")
				as.mu.Unlock()
			}
		}
	}()
	select {
	case l := <-ready:
		as.addr = netip.MustParseAddrPort(l)
	case <-time.After(60 * time.Second):
		b.Fatal("attack server not ready")
	}
	return as
}

// rss returns the server's VmRSS and VmHWM in MiB.
func (as *attackServer) rss() (rss, hwm float64) {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", as.cmd.Process.Pid))
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

func (as *attackServer) stats() string {
	as.mu.Lock()
	defer as.mu.Unlock()
	return as.last
}

// BenchmarkAttacks runs what one address could do to the server (issue 13 item 9) while a
// well-behaved board reads from it, and prints the server's memory and that board's
// latency: 500 connections from one board's address pipelining 1 MiB READs; 40
// connections that pipeline READs and never read a reply; thousands of idle connections
// from addresses no export allows. Needs root (it binds 127.0.0.x source addresses).
func BenchmarkAttacks(b *testing.B) {
	needRoot(b)
	dir := b.TempDir()
	must(b, os.MkdirAll(filepath.Join(dir, "lower/etc"), 0o755))
	must(b, os.WriteFile(filepath.Join(dir, "lower/etc/hostname"), []byte("base\n"), 0o644))
	big, err := os.Create(filepath.Join(dir, "lower/big"))
	must(b, err)
	must(b, big.Truncate(1<<30))
	must(b, big.Close())
	as := startAttackServer(b, dir)

	good := dialFrom(b, addrB, as.addr)
	_, groot := good.mnt(exportPath("pi-b"))
	gbig := good.walk(groot, "big")
	ghost := good.walk(groot, "etc", "hostname")
	var t strings.Builder
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(&t, "\nload average: %s\n", strings.TrimSpace(string(la)))
	}
	fmt.Fprintf(&t, "| attack | good board's calls | p50 | p99 | max | server RSS before | peak | 5 s after | server counters after (conns reserved peak refused throttled) |\n|---|---|---|---|---|---|---|---|---|\n")
	const attackTime = 5 * time.Second
	for i, ph := range attacks {
		before, _ := as.rss()
		stop := make(chan struct{})
		var peak atomic.Uint64
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for {
				r, _ := as.rss()
				if uint64(r) > peak.Load() {
					peak.Store(uint64(r))
				}
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		attacker := startAttacker(b, i, as.addr)
		time.Sleep(500 * time.Millisecond) // let it build up
		var lat []time.Duration
		for end := time.Now().Add(attackTime); time.Now().Before(end); {
			off := uint64(rand.IntN(1<<30-65536)) &^ 4095
			start := time.Now()
			if st, _ := good.getattr(ghost); st != 0 {
				b.Fatalf("good board's GETATTR: status %d", st)
			}
			lat = append(lat, time.Since(start))
			start = time.Now()
			if st, _ := good.read(gbig, off, 65536); st != 0 {
				b.Fatalf("good board's READ: status %d", st)
			}
			lat = append(lat, time.Since(start))
		}
		stats := as.stats()
		_ = attacker.Process.Kill()
		_ = attacker.Wait()
		close(stop)
		<-sampled
		time.Sleep(5 * time.Second)
		after, _ := as.rss()
		slices.Sort(lat)
		p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))].Round(10 * time.Microsecond) }
		fmt.Fprintf(&t, "| %s | %d | %v | %v | %v | %.0f MiB | %d MiB | %.0f MiB | %s |\n",
			ph.name, len(lat), p(0.5), p(0.99), lat[len(lat)-1].Round(10*time.Microsecond), before, peak.Load(), after, stats)
		b.ReportMetric(float64(p(0.99).Microseconds())/1000, fmt.Sprintf("phase%d-p99-ms", i))
		b.ReportMetric(float64(peak.Load()), fmt.Sprintf("phase%d-peak-RSS-MiB", i))
	}
	// The Go runtime gives freed heap back to the system once a collection has lowered its
	// goal; an idle server collects at least every two minutes.
	time.Sleep(125 * time.Second)
	rss, hwm := as.rss()
	fmt.Fprintf(&t, "server RSS 125 s after the last attack: %.0f MiB; VmHWM over the run: %.0f MiB\n", rss, hwm)
	fmt.Print(t.String())
}

// pipeline keeps n 1 MiB READs in flight on one connection from addr until stop, reading
// the replies (read) or never reading them.
func pipeline(stop <-chan struct{}, from netip.Addr, to netip.AddrPort, fh []byte, n int, read bool) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", to.String())
	if err != nil {
		return
	}
	go func() {
		<-stop
		c.Close()
	}()
	cl := &client{t: nil, c: c, br: bufio.NewReaderSize(c, 64<<10)}
	w := bufio.NewWriter(c)
	send := func(k int) error {
		for range k {
			off := uint64(rand.IntN(1023)) << 20
			if _, err := w.Write(cl.callMsgNoT(progNFS, 6, fh, off, 1<<20)); err != nil {
				return err
			}
		}
		return w.Flush()
	}
	if send(n) != nil || !read {
		<-stop
		return
	}
	for {
		if _, err := readRecord(cl.br, nil, 1<<30); err != nil {
			return
		}
		if send(1) != nil {
			return
		}
	}
}

// callMsgNoT builds a READ call without a testing.TB (pipeline runs on its own goroutines).
func (c *client) callMsgNoT(prog, proc uint32, fh []byte, off uint64, count uint32) []byte {
	c.xid++
	w := &xdrWriter{b: make([]byte, 4, 128)}
	for _, v := range []uint32{c.xid, rpcCall, 2, prog, 3, proc, authNone, 0, authNone, 0} {
		w.u32(v)
	}
	w.opaque(fh)
	w.u64(off)
	w.u32(count)
	return w.finish()
}
