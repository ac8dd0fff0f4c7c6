// Package scale is the fleet simulator: N simulated Raspberry Pi 4 boards in a private
// network namespace boot at once from one `pifleet serve` (DHCP, the TFTP boot set, the
// NFS root's accesses), then idle; it measures what the server spent.
//
// One veth pair joins the server's namespace and the boards' namespace; every board has
// its own MAC, serial and fixed address (fleet.yaml ip:), binds its sockets to that
// address, and answers each TFTP block and NFS reply after a think time (Config.Delay),
// as a real board does. DHCP goes through one shared port-68 socket, demultiplexed by
// xid. The NFS part replays a captured Debian boot (trace.go) on a tree made from the
// capture's metadata.
package scale

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/netns"
	"github.com/pifleet/pifleet/test/require"
)

// Config is one simulated run.
type Config struct {
	Boards    int
	FullDHCP  bool          // full mode (fixed addresses handed out); else proxy mode beside a router
	Delay     time.Duration // a board's think time before each TFTP ACK and after each NFS reply
	RealSizes bool          // the Pi 4 boot set at real sizes; else tiny (the NFS trace is the same)
	Idle      time.Duration // how long the booted fleet idles before idle RSS is read
	KeepAlive time.Duration // NULL call period while idle
	// Serve returns the command that runs `pifleet serve -c cfgPath`; it is started
	// inside the server namespace with `ip netns exec`.
	Serve func(cfgPath string) []string
	// Peers boots the fleet from the peer stack (dnsmasq, tftpd-hpa, nfs-ganesha on
	// overlayfs; peers.go) instead of pifleet; Serve is not used then.
	Peers bool
}

// Fleet is a started simulation: namespaces, image, server process.
type Fleet struct {
	t        testing.TB
	cfg      Config
	pair     *netns.Pair
	serverIP netip.Addr
	boards   []*board
	work     *Trace
	sizes    map[string]int64 // boot file -> size
	dhcp     *dhcpSocket
	server   *exec.Cmd
	exited   chan error
	logPath  string
	peerLogs string // the peers' log directory (peer runs)
	cgroup   string // the peers' cgroup v2 directory, "" without one
}

// firmware sizes: real (bench) and tiny (smoke test).
var (
	realFirmware = map[string]int{"start4.elf": 2_228_000, "fixup4.dat": 5_400, "bcm2711-rpi-4-b.dtb": 56_000,
		"kernel8.img": 8_200_000, "initramfs8": 12_400_000}
	tinyFirmware = map[string]int{"start4.elf": 20_000, "fixup4.dat": 5_400, "bcm2711-rpi-4-b.dtb": 3_000,
		"kernel8.img": 30_000, "initramfs8": 40_000}
)

// Start builds the image and the fleet.yaml, creates the namespaces (removed by
// t.Cleanup) and starts the server; it returns once the server is serving.
func Start(t testing.TB, cfg Config) *Fleet {
	t.Helper()
	netns.RequireRoot(t, "creates network namespaces and runs pifleet serve in one")
	if cfg.Peers {
		require.Tools(t, peerTools)
	}
	if cfg.Boards < 1 || cfg.Boards > 250*250 {
		t.Fatalf("boards: %d", cfg.Boards)
	}
	setup := time.Now()
	dir := t.TempDir()
	f := &Fleet{t: t, cfg: cfg, serverIP: netip.MustParseAddr("10.78.0.1"), sizes: map[string]int64{}}
	fw := tinyFirmware
	if cfg.RealSizes {
		fw = realFirmware
	}
	var err error
	if f.work, err = LoadTrace(traceFile); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	must(t, f.work.WriteTree(root))
	fwDir := filepath.Join(root, "boot", "firmware")
	must(t, os.MkdirAll(fwDir, 0o755))
	rng := rand.NewChaCha8([32]byte{16})
	for name, size := range fw {
		data := make([]byte, size)
		rng.Read(data)
		must(t, os.WriteFile(filepath.Join(fwDir, name), data, 0o644))
		f.sizes[name] = int64(size)
	}
	must(t, os.WriteFile(filepath.Join(fwDir, "config.txt"), []byte("arm_64bit=1\nkernel=kernel8.img\ninitramfs initramfs8 followkernel\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(fwDir, "cmdline.txt"), []byte("console=serial0,115200 root=PARTUUID=1234-02 rootfstype=ext4 rootwait\n"), 0o644))

	f.pair = netns.NewPair(t, "pfsim", netip.PrefixFrom(f.serverIP, 16))
	var batch strings.Builder
	for i := range cfg.Boards {
		b := &board{
			index:  i,
			name:   fmt.Sprintf("sim-%03d", i),
			mac:    net.HardwareAddr{0x02, 0x5e, 0, 0, byte(i >> 8), byte(i)},
			serial: 0x5e000000 | uint32(i),
			addr:   netip.AddrFrom4([4]byte{10, 78, byte(1 + i/250), byte(1 + i%250)}),
		}
		f.boards = append(f.boards, b)
		fmt.Fprintf(&batch, "addr add %s/16 dev %s\n", b.addr, f.pair.ClientIf)
	}
	ipBatch := exec.Command("ip", "-n", f.pair.Client, "-batch", "-")
	ipBatch.Stdin = strings.NewReader(batch.String())
	if out, err := ipBatch.CombinedOutput(); err != nil {
		t.Fatalf("board addresses: %v\n%s", err, out)
	}

	mode := "proxy"
	if cfg.FullDHCP {
		mode = "full"
	}
	var y strings.Builder
	fmt.Fprintf(&y, "server:\n  interface: %s\n  address: %s/16\n  state: %s\n  dhcp: {mode: %s}\n",
		f.pair.ServerIf, f.serverIP, filepath.Join(dir, "state"), mode)
	fmt.Fprintf(&y, "images:\n  sim: {path: %s}\ndefaults: {image: sim}\nboards:\n", root)
	for _, b := range f.boards {
		fmt.Fprintf(&y, "  - {name: %s, mac: '%s', serial: '%08x', ip: %s}\n", b.name, b.mac, b.serial, b.addr)
	}
	cfgPath := filepath.Join(dir, "fleet.yaml")
	must(t, os.WriteFile(cfgPath, []byte(y.String()), 0o644))

	t.Logf("image, namespaces and %d board addresses ready after %s", cfg.Boards, time.Since(setup).Round(time.Millisecond))
	if cfg.Peers {
		f.startPeers(dir, root)
	} else {
		// A first start makes every board's identity (an RSA-3072 host key among them):
		// about 0.65 s per board on a loaded 2-core machine.
		f.startServer(dir, cfg.Serve(cfgPath), nil, "pifleet serving", 10*time.Minute)
	}
	t.Logf("%s ready after %s", f.Name(), time.Since(setup).Round(time.Millisecond))
	return f
}

// Name is the server stack's name in the figures.
func (f *Fleet) Name() string {
	if f.cfg.Peers {
		return "peers"
	}
	return "pifleet"
}

// startServer runs cmd in the server namespace, its output to dir/serve.log, until that
// log holds ready (at most timeout); t.Cleanup stops it.
func (f *Fleet) startServer(dir string, cmd []string, attr *syscall.SysProcAttr, ready string, timeout time.Duration) {
	t := f.t
	f.logPath = filepath.Join(dir, "serve.log")
	logf, err := os.Create(f.logPath)
	must(t, err)
	t.Cleanup(func() { logf.Close() })
	f.server = exec.Command("ip", append([]string{"netns", "exec", f.pair.Server}, cmd...)...)
	f.server.Stdout, f.server.Stderr = logf, logf
	f.server.SysProcAttr = attr
	f.exited = make(chan error, 1)
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that forked ends, and the runtime ends a thread
		// whose goroutine exits locked (netns.Do's do): fork and wait on a thread that
		// stays locked here until the server has ended.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := f.server.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		f.exited <- f.server.Wait()
	}()
	must(t, <-started)
	t.Cleanup(f.stop)
	for deadline := time.Now().Add(timeout); !strings.Contains(f.log(), ready); {
		select {
		case err := <-f.exited:
			f.server = nil
			t.Fatalf("%s exited: %v\n%s", f.Name(), err, f.ServerLog())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start in %s\n%s", f.Name(), timeout, f.ServerLog())
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// log returns the server's output so far.
func (f *Fleet) log() string {
	b, _ := os.ReadFile(f.logPath)
	return string(b)
}

// stop ends the server (SIGTERM, then SIGKILL after 20 s).
func (f *Fleet) stop() {
	if f.server == nil || f.server.Process == nil {
		return
	}
	f.server.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.exited:
	case <-time.After(20 * time.Second):
		f.server.Process.Kill()
		<-f.exited
	}
	f.server = nil
}

// inClientNS runs fn on a thread in the boards' namespace (sockets it opens stay there).
func (f *Fleet) inClientNS(fn func() error) error { return netns.Do(f.pair.Client, fn) }

// checkBootFile compares what a TFTP transfer brought with the image's file.
func (f *Fleet) checkBootFile(bf bootFile, n int64) error {
	want, ok := f.sizes[bf.name]
	switch {
	case !ok: // generated (config.txt, cmdline.txt): only not empty
		if n == 0 {
			return fmt.Errorf("%s: empty", bf.name)
		}
	case bf.probe:
		if n != min(want, blksize) {
			return fmt.Errorf("probe %s: %d bytes, want %d", bf.name, n, min(want, blksize))
		}
	case n != want:
		return fmt.Errorf("%s: %d bytes, want %d", bf.name, n, want)
	}
	return nil
}

// procStat is what the server process has used, from /proc/PID/stat and status.
type procStat struct {
	CPU      time.Duration // utime + stime
	RSS, HWM int64         // bytes
	Threads  int
	ByCmd    map[string]time.Duration // CPU per command name (peers: the process tree)
}

// selfCPU is the simulator's own CPU time (its boards compete with the server for cores).
func selfCPU() time.Duration {
	s, err := readStat("self")
	if err != nil {
		return 0
	}
	return s.CPU
}

// serverStat reads the server's /proc entries; for the peers, the sum over the
// supervisor and every process below it. `ip netns exec` execs the command in place,
// so the child's pid is the server's (the supervisor's).
func (f *Fleet) serverStat() (procStat, error) {
	if f.server == nil {
		return procStat{}, fmt.Errorf("%s is not running", f.Name())
	}
	if f.cfg.Peers {
		return f.peerStat()
	}
	return readStat(strconv.Itoa(f.server.Process.Pid))
}

// readStat reads /proc/<pid>/stat and status.
func readStat(pid string) (procStat, error) {
	var s procStat
	b, err := os.ReadFile(fmt.Sprintf("/proc/%s/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name (which may hold spaces) start at field 3.
	rest := string(b)[strings.LastIndexByte(string(b), ')')+2:]
	fields := strings.Fields(rest)
	if len(fields) < 13 {
		return s, fmt.Errorf("/proc/%s/stat: %d fields", pid, len(fields))
	}
	ut, _ := strconv.ParseInt(fields[11], 10, 64) // field 14
	st, _ := strconv.ParseInt(fields[12], 10, 64) // field 15
	s.CPU = time.Duration(ut+st) * time.Second / 100
	sf, err := os.Open(fmt.Sprintf("/proc/%s/status", pid))
	if err != nil {
		return s, err
	}
	defer sf.Close()
	sc := bufio.NewScanner(sf)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "VmRSS":
			s.RSS = n << 10
		case "VmHWM":
			s.HWM = n << 10
		case "Threads":
			s.Threads = int(n)
		}
	}
	return s, nil
}

// Result is one run's figures.
type Result struct {
	Boards      []*BoardResult
	AllBooted   time.Duration // power-on to the last board booted
	Start       procStat      // server after start, before the boards
	Booted      procStat      // when the last board booted
	Idle        procStat      // after Config.Idle of keep-alives
	Load        string        // /proc/loadavg at the end of the boot
	SimCPU      time.Duration // the simulator's own CPU from power-on to all booted
	ServerWarns int           // WARN/ERROR lines in the server's log
}

// Run powers every board on at once, waits for all to boot, idles, and measures.
func (f *Fleet) Run(ctx context.Context) (*Result, error) {
	res := &Result{}
	var err error
	var logsAt []int64
	if f.cfg.Peers {
		logsAt = peerLogSizes(f.peerLogs)
	}
	if res.Start, err = f.serverStat(); err != nil {
		return nil, err
	}
	err = f.inClientNS(func() error {
		var err error
		f.dhcp, err = listenDHCP(f.pair.ClientIf)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer f.dhcp.Close()

	idle, stopIdle := context.WithCancel(ctx)
	defer stopIdle()
	var wg, bootWG sync.WaitGroup
	// The peers' peak RSS: their sum, sampled (a forked tftpd's peak is gone with it).
	sampled := make(chan int64, 1)
	stopSampling := make(chan struct{})
	go func() {
		peak := res.Start.RSS
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for f.cfg.Peers {
			select {
			case <-stopSampling:
				sampled <- peak
				return
			case <-tick.C:
				if s, err := f.serverStat(); err == nil {
					peak = max(peak, s.RSS)
				}
			}
		}
		<-stopSampling
		sampled <- 0
	}()
	res.Boards = make([]*BoardResult, len(f.boards))
	start, simCPU := time.Now(), selfCPU()
	bootWG.Add(len(f.boards))
	for i, b := range f.boards {
		wg.Go(func() {
			res.Boards[i] = b.boot(ctx, idle, f, func(*BoardResult) { bootWG.Done() })
		})
	}
	bootWG.Wait()
	res.AllBooted = time.Since(start)
	res.SimCPU = selfCPU() - simCPU
	close(stopSampling)
	peak := <-sampled
	res.Booted, err = f.serverStat()
	if f.cfg.Peers {
		res.Booted.HWM = max(peak, res.Booted.RSS)
	}
	if err != nil {
		stopIdle()
		wg.Wait()
		return nil, err
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		res.Load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	select {
	case <-time.After(f.cfg.Idle):
	case <-ctx.Done():
	}
	res.Idle, err = f.serverStat()
	stopIdle()
	wg.Wait()
	for _, line := range strings.Split(f.log(), "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") || strings.HasPrefix(line, "peers: ") {
			res.ServerWarns++
		}
	}
	if f.cfg.Peers {
		res.ServerWarns += peerWarnings(f.peerLogs, logsAt)
	}
	return res, err
}

// ServerLog returns the server's output (for failure messages); for the peers, the
// ends of their own logs too.
func (f *Fleet) ServerLog() string {
	out := f.log()
	if f.cfg.Peers {
		for _, name := range peerLogs {
			b, _ := os.ReadFile(filepath.Join(f.peerLogs, name))
			out += fmt.Sprintf("--- %s (end):\n%s", name, b[max(0, len(b)-4000):])
		}
	}
	return out
}
