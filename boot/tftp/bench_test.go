package tftp

// Benchmarks against the C TFTP servers a Pi fleet would otherwise use (tftpd-hpa,
// dnsmasq), set up as /work/shared/BENCH-PEERS.md describes: every server and every
// client in one private network namespace, all pinned to CPU 0 (lock-step TFTP otherwise
// measures idle-CPU wake-ups), curl as the client, curl's own time_total as the measure.
// Run with `make bench` (go test -run '^$' -bench . ./boot/tftp/); needs root and
// tftpd-hpa, dnsmasq-base, curl.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pin "github.com/pin/tftp/v3"
	"golang.org/x/sys/unix"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
	"github.com/pifleet/pifleet/test/require"
)

// Environment of the server process the benchmark starts (this test binary, re-run).
const (
	benchServeEnv = "PIFLEET_TFTP_BENCH_SERVE" // "pifleet" or "pin"
	benchRootEnv  = "PIFLEET_TFTP_BENCH_ROOT"
	benchAddrEnv  = "PIFLEET_TFTP_BENCH_ADDR"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(benchServeEnv); mode != "" {
		if err := benchServe(mode, os.Getenv(benchRootEnv), os.Getenv(benchAddrEnv)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	if benchStop != nil {
		benchStop() // servers and namespace live for the whole run, so they go last
	}
	os.Exit(code)
}

// benchServe runs a TFTP server over root until SIGTERM: pifleet's, or a bare pin/tftp
// v3.1.0 server as the baseline this package replaced. It prints "ready" once bound
// (pifleet's: "ready" and its address).
func benchServe(mode, root, addr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	switch mode {
	case "pifleet":
		fleet := &boottest.Fleet{Boards: []*boot.Board{{
			Name: "bench", MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Serial: "0b0e0c00",
			IP: netip.MustParseAddr("127.0.0.1"), Firmware: r.FS(),
			NFSRoot: "127.0.0.1:/boards/bench,vers=3,tcp,port=2049,mountport=20048,nolock",
		}}}
		// The storm's boards: one address each (the per-client cap counts by address).
		for i := range stormAddrs {
			fleet.Boards = append(fleet.Boards, &boot.Board{
				Name: fmt.Sprintf("storm-%03d", i), MAC: net.HardwareAddr{2, 0, 0, 0, 1, byte(i)},
				Serial: fmt.Sprintf("0b0e1%03x", i), IP: stormAddr(i), Firmware: r.FS(),
				NFSRoot: "127.0.0.1:/boards/storm,vers=3,tcp,port=2049,mountport=20048,nolock",
			})
		}
		logger := slog.New(slog.DiscardHandler)
		if os.Getenv("PIFLEET_TFTP_BENCH_LOG") != "" { // to see each transfer when tuning
			logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		}
		s, err := New(Config{Addr: addr, Fleet: fleet, Logger: logger})
		if err != nil {
			return err
		}
		fmt.Println("ready", s.Addr())
		return s.Serve(ctx)
	case "pin":
		fsys := r.FS()
		s := pin.NewServer(func(name string, rf io.ReaderFrom) error {
			f, err := fsys.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = rf.ReadFrom(f)
			return err
		}, nil)
		s.SetBlockSize(DefaultMaxBlockSize)
		pc, err := net.ListenPacket("udp4", addr)
		if err != nil {
			return err
		}
		fmt.Println("ready")
		go func() { <-ctx.Done(); s.Shutdown() }()
		return s.Serve(pc)
	}
	return fmt.Errorf("unknown bench server %q", mode)
}

// stormAddrs is how many boards with addresses of their own the benchmark server knows:
// storm-000 at 127.0.1.1 and on.
const stormAddrs = 250

// stormAddr is the address of storm board i.
func stormAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 1, byte(1 + i)}) }

// benchEnv is one namespace with the files and every server running in it.
type benchEnv struct {
	ns    string
	root  string
	ports map[string]int // server name -> TFTP port
	pids  map[string]int // server name -> process (nsenter and taskset exec, so it is the server)
	// cgroups: server name -> its cpuacct cgroup, when the machine has cgroup v1
	// cpuacct; it also counts the children tftpd-hpa forks per transfer.
	cgroups map[string]string
}

// benchServers in the order they appear in the output; setupBench adds "baseline"
// after pifleet when benchBaselineEnv is set.
var benchServers = []string{"pifleet", "tftpd-hpa", "dnsmasq", "pin-v3.1.0"}

// benchBaselineEnv names another build's test binary of this package (go test -c), whose
// pifleet server then runs beside this one as "baseline": a change measured against the
// code before it in the same run.
const benchBaselineEnv = "PIFLEET_TFTP_BENCH_BASELINE"

var (
	benchOnce sync.Once
	benchE    *benchEnv
	benchErr  error
	benchStop func()
)

// setupBench creates the namespace, the files and the servers once for all benchmarks
// of the run (so they are compared side by side under the same load).
func setupBench(b *testing.B) *benchEnv {
	b.Helper()
	require.Root(b, "benchmarks: a network namespace; dnsmasq's TFTP port is always 69")
	require.Tools(b, map[string]string{"in.tftpd": "tftpd-hpa", "dnsmasq": "dnsmasq-base", "curl": "curl",
		"taskset": "util-linux", "nsenter": "util-linux", "ip": "iproute2"})
	benchOnce.Do(func() { benchE, benchStop, benchErr = startBench() })
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchE
}

// The Pi 4 boot set a storm client fetches, with Bookworm-like sizes.
var piBootSet = []struct {
	name string
	size int
}{
	{"config.txt", 1_200}, {"start4.elf", 2_250_000}, {"fixup4.dat", 5_400}, {"config.txt", 1_200},
	{"bcm2711-rpi-4-b.dtb", 54_000}, {"overlays/vc4-kms-v3d.dtbo", 4_000}, {"cmdline.txt", 160},
	{"initramfs8", 6_000_000}, {"kernel8.img", 9_400_000},
}

func startBench() (*benchEnv, func(), error) {
	var cleanups []func()
	stop := func() {
		for _, f := range slices.Backward(cleanups) {
			f()
		}
	}
	fail := func(err error) (*benchEnv, func(), error) { stop(); return nil, nil, err }

	root, err := os.MkdirTemp("", "pifleet-tftp-bench-")
	if err != nil {
		return fail(err)
	}
	cleanups = append(cleanups, func() { os.RemoveAll(root) })
	// dnsmasq and tftpd-hpa read as "nobody": the tree must be world-readable.
	if err := os.Chmod(root, 0o755); err != nil {
		return fail(err)
	}
	files := map[string]int{"file-8m": 8 << 20, "file-33m": 33 << 20}
	for _, f := range piBootSet {
		files[f.name] = f.size
	}
	for _, f := range realBootSet {
		if f.size > 0 {
			files[f.name] = f.size
		}
	}
	for name, size := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fail(err)
		}
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i*7 + i>>11)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return fail(err)
		}
	}

	ns := fmt.Sprintf("pifleet-tftp-bench-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("ip netns add: %v: %s", err, out))
	}
	cleanups = append(cleanups, func() { exec.Command("ip", "netns", "del", ns).Run() })
	// glibc needs an address besides 127.0.0.1 before it believes lo is configured
	// (in.tftpd exits silently otherwise).
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", "127.0.0.2/8", "dev", "lo"}} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			return fail(fmt.Errorf("ip %v: %v: %s", args, err, out))
		}
	}
	env := &benchEnv{ns: ns, root: root, ports: map[string]int{}, pids: map[string]int{}, cgroups: map[string]string{}}
	self, err := os.Executable()
	if err != nil {
		return fail(err)
	}
	type process struct {
		port  int
		argv  []string
		env   []string
		ready bool // prints "ready"
	}
	servers := map[string]process{
		"pifleet":    {6970, []string{self}, []string{benchServeEnv + "=pifleet", benchRootEnv + "=" + root, benchAddrEnv + "=127.0.0.1:6970"}, true},
		"pin-v3.1.0": {6971, []string{self}, []string{benchServeEnv + "=pin", benchRootEnv + "=" + root, benchAddrEnv + "=127.0.0.1:6971"}, true},
		"tftpd-hpa":  {6972, []string{"in.tftpd", "-L", "-a", "127.0.0.1:6972", "-s", root, "-B", "65464"}, nil, false},
		"dnsmasq": {69, []string{"dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--pid-file=", "--enable-tftp",
			"--tftp-root=" + root, "--listen-address=127.0.0.1", "--bind-interfaces"}, nil, false},
	}
	if bin := os.Getenv(benchBaselineEnv); bin != "" {
		servers["baseline"] = process{6973, []string{bin}, []string{benchServeEnv + "=pifleet", benchRootEnv + "=" + root, benchAddrEnv + "=127.0.0.1:6973"}, true}
		benchServers = slices.Insert(benchServers, 1, "baseline")
	}
	for name, sv := range servers {
		argv := append([]string{"--net=/run/netns/" + ns, "taskset", "-c", "0"}, sv.argv...)
		cmd := exec.Command("nsenter", argv...)
		cmd.Env = append(os.Environ(), sv.env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // tftpd-hpa forks per transfer
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return fail(err)
		}
		if err := cmd.Start(); err != nil {
			return fail(fmt.Errorf("start %s: %w", name, err))
		}
		cleanups = append(cleanups, func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
		})
		if sv.ready {
			line, _ := bufio.NewReader(out).ReadString('\n')
			if f := strings.Fields(line); len(f) == 0 || f[0] != "ready" {
				return fail(fmt.Errorf("%s did not start: %q", name, line))
			}
		}
		env.ports[name] = sv.port
		env.pids[name] = cmd.Process.Pid
		cg := fmt.Sprintf("/sys/fs/cgroup/cpuacct/pifleet-tftp-bench-%d-%s", os.Getpid(), name)
		if os.Mkdir(cg, 0o755) == nil {
			if os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644) == nil {
				env.cgroups[name] = cg
			}
			// Runs after the server is killed (cleanups run in reverse).
			cleanups = append(cleanups[:len(cleanups)-1], func() { os.Remove(cg) }, cleanups[len(cleanups)-1])
		}
	}
	// Wait until every server answers (the C servers print nothing when ready).
	for name, port := range env.ports {
		var err error
		for range 50 {
			if _, err = env.curl(port, 512, "fixup4.dat"); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return fail(fmt.Errorf("%s not answering: %w", name, err))
		}
	}
	return env, stop, nil
}

// curl fetches files in one pinned curl process inside the namespace and returns curl's
// own total time for them (so process start-up is not measured).
func (e *benchEnv) curl(port, blksize int, files ...string) (time.Duration, error) {
	return e.curlFrom(netip.Addr{}, port, blksize, files...)
}

// curlFrom is curl from the address src (any if it is not valid).
func (e *benchEnv) curlFrom(src netip.Addr, port, blksize int, files ...string) (time.Duration, error) {
	args := []string{"--net=/run/netns/" + e.ns, "taskset", "-c", "0", "curl", "-sS", "--tftp-blksize", strconv.Itoa(blksize),
		"-w", "%{time_total}\n"}
	if src.IsValid() {
		args = append(args, "--interface", src.String())
	}
	for _, f := range files {
		args = append(args, "-o", "/dev/null", fmt.Sprintf("tftp://127.0.0.1:%d/%s", port, f))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return 0, fmt.Errorf("curl: %v: %s", err, ee.Stderr)
		}
		return 0, fmt.Errorf("curl: %w", err)
	}
	var total time.Duration
	for _, l := range strings.Fields(string(out)) {
		s, err := strconv.ParseFloat(l, 64)
		if err != nil {
			return 0, fmt.Errorf("curl time %q: %w", l, err)
		}
		total += time.Duration(s * float64(time.Second))
	}
	return total, nil
}

// median returns the middle of times (sorting them).
func median(times []time.Duration) time.Duration {
	slices.Sort(times)
	return times[len(times)/2]
}

func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

// cpuTime is the CPU time a server has used: from its cgroup when it has one (children
// included), else from /proc/PID/stat (clock ticks of 10 ms; tftpd-hpa's children missing).
func (e *benchEnv) cpuTime(server string) time.Duration {
	if cg, ok := e.cgroups[server]; ok {
		data, err := os.ReadFile(filepath.Join(cg, "cpuacct.usage"))
		if ns, perr := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err == nil && perr == nil {
			return time.Duration(ns)
		}
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", e.pids[server]))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from 3 on
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime (fields 14-17)
		v, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// sideBySide runs one measurement against every server per round, in turn (each round
// starting one server later), so that load from elsewhere on the machine hits them
// alike. It reports per server the median time ("<server>-s") and the median of the
// server's own CPU time per round ("<server>-cpu-ms", which load on other CPUs disturbs
// far less than wall time), and pifleet's speed relative to the fastest C server by
// both ("x-best-peer", "x-best-peer-cpu"; > 1 means pifleet is faster).
//
// Each iteration measures rounds times per server, so that `make bench` (-benchtime 1s,
// often a single iteration) still gets a median of several.
func sideBySide(b *testing.B, e *benchEnv, rounds int, measure func(port int) (time.Duration, error)) {
	b.Logf("load average before: %s", loadAvg())
	times := map[string][]time.Duration{}
	cpu := map[string][]time.Duration{}
	n := len(benchServers)
	round := 0
	for b.Loop() {
		for range rounds {
			for i := range n {
				server := benchServers[(i+round)%n]
				c0 := e.cpuTime(server)
				d, err := measure(e.ports[server])
				if err != nil {
					b.Fatalf("%s: %v", server, err)
				}
				time.Sleep(20 * time.Millisecond) // let tftpd-hpa's child exit
				cpu[server] = append(cpu[server], e.cpuTime(server)-c0)
				times[server] = append(times[server], d)
			}
			round++
		}
	}
	med, medCPU := map[string]time.Duration{}, map[string]time.Duration{}
	for _, server := range benchServers {
		med[server], medCPU[server] = median(times[server]), median(cpu[server])
		b.ReportMetric(med[server].Seconds(), server+"-s")
		b.ReportMetric(float64(medCPU[server].Microseconds())/1000, server+"-cpu-ms")
	}
	b.ReportMetric(float64(min(med["tftpd-hpa"], med["dnsmasq"]))/float64(med["pifleet"]), "x-best-peer")
	if medCPU["pifleet"] > 0 {
		b.ReportMetric(float64(min(medCPU["tftpd-hpa"], medCPU["dnsmasq"]))/float64(medCPU["pifleet"]), "x-best-peer-cpu")
	}
	b.ReportMetric(0, "ns/op") // the loop times every server: meaningless
	b.Logf("load average after: %s", loadAvg())
}

// BenchmarkTransfer: one client, one file, lock-step; 8 MiB and a 33 MiB kernel at the
// Pi 3's 512-byte and the Pi 4/5's 1468-byte blocks.
func BenchmarkTransfer(b *testing.B) {
	e := setupBench(b)
	for _, file := range []string{"file-8m", "file-33m"} {
		for _, blksize := range []int{512, 1468} {
			b.Run(fmt.Sprintf("%s/blksize=%d", strings.TrimPrefix(file, "file-"), blksize), func(b *testing.B) {
				sideBySide(b, e, 3, func(port int) (time.Duration, error) { return e.curl(port, blksize, file) })
			})
		}
	}
}

// BenchmarkBootStorm: 20 Pi 4s at once, each fetching its boot set at blksize 1468 in
// boot order (one curl per board, from an address of its own, files one after another
// as the bootloader does). The time is from the first start to the last finish.
func BenchmarkBootStorm(b *testing.B) {
	e := setupBench(b)
	const boards = 20
	var files []string
	for _, f := range piBootSet {
		files = append(files, f.name)
	}
	sideBySide(b, e, 1, func(port int) (time.Duration, error) {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, boards)
		for i := range boards {
			wg.Go(func() {
				if _, err := e.curlFrom(stormAddr(i), port, 1468, files...); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		return time.Since(start), <-errs
	})
}

// Realistic clients: a Pi answers each DATA after 100 µs or more over a real network;
// these clients answer after benchDelay (nanosleep with a 1 ns timer slack, so about
// 150 µs plus a wake-up), each from an address of its own, one OS thread each (pinned
// to CPU 1 when there is one, the servers being on CPU 0, as if on other machines).
const benchDelay = 150 * time.Microsecond

// benchBoardsEnv sets the number of boards of BenchmarkRealisticStorm (default 200).
const benchBoardsEnv = "PIFLEET_TFTP_BENCH_BOARDS"

// realFile is one file of the Pi 4 boot set at the sizes of issue 16 (the probe of
// start4.elf, then what start4.elf and the kernel need), fetched at blksize 1468.
type realFile struct {
	name  string
	size  int // 0: the server generates it (config.txt, cmdline.txt)
	probe bool
}

var realBootSet = []realFile{
	{"real/start4.elf", 2_228_000, true}, {"config.txt", 0, false}, {"real/start4.elf", 2_228_000, false},
	{"real/fixup4.dat", 5_400, false}, {"cmdline.txt", 0, false}, {"real/bcm2711-rpi-4-b.dtb", 56_000, false},
	{"real/kernel8.img", 8_200_000, false}, {"real/initramfs8", 12_400_000, false},
}

// realisticGet fetches name from port on 127.0.0.1 through fd (a bound UDP socket with a
// receive timeout) as a Pi does: tsize and blksize asked, each DATA answered after
// delay; a probe ends after the first block with "Early terminate". It returns the
// bytes received and the retransmissions made.
func realisticGet(fd, port int, name string, blksize int, probe bool, delay time.Duration) (int64, int, error) {
	req := []byte{0, opRRQ}
	for _, f := range []string{name, "octet", "tsize", "0", "blksize", strconv.Itoa(blksize)} {
		req = append(append(req, f...), 0)
	}
	to := unix.Sockaddr(&unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port})
	last := req
	if err := unix.Sendto(fd, last, 0, to); err != nil {
		return 0, 0, err
	}
	buf := make([]byte, 4+maxWireBlockSize)
	var got int64
	size, next, tries, resent, started := defaultBlockSize, uint16(1), 0, 0, false
	ts := unix.NsecToTimespec(delay.Nanoseconds())
	answer := func(p []byte) error {
		for t := ts; unix.Nanosleep(&t, &t) == unix.EINTR; {
		}
		last = p
		return unix.Sendto(fd, p, 0, to)
	}
	for packets := 0; packets < 1<<22; packets++ {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN: // the receive timeout: send again
			if tries++; tries > 5 {
				return got, resent, fmt.Errorf("%s: no answer at block %d", name, next)
			}
			resent++
			if err := unix.Sendto(fd, last, 0, to); err != nil {
				return got, resent, err
			}
			continue
		case err != nil:
			return got, resent, err
		}
		sa, ok := from.(*unix.SockaddrInet4)
		if !ok || n < 4 {
			continue
		}
		op := binary.BigEndian.Uint16(buf)
		if !started {
			// Only the OACK (options are always asked) or an ERROR starts the
			// transfer: a DATA could be a late resend of the last file's.
			if op != opOACK && op != opERROR {
				continue
			}
			started, to = true, &unix.SockaddrInet4{Addr: sa.Addr, Port: sa.Port}
		} else if sa.Port != to.(*unix.SockaddrInet4).Port {
			continue
		}
		switch op {
		case opERROR:
			return got, resent, fmt.Errorf("%s: error %q", name, buf[4:n])
		case opOACK:
			if next != 1 {
				continue
			}
			fields := strings.Split(string(buf[2:n]), "\x00")
			for i := 0; i+1 < len(fields); i += 2 {
				if fields[i] == "blksize" {
					size, _ = strconv.Atoi(fields[i+1])
				}
			}
			tries = 0
			if err := answer(ack(0)); err != nil {
				return got, resent, err
			}
		case opDATA:
			if binary.BigEndian.Uint16(buf[2:]) != next {
				continue
			}
			tries = 0
			got += int64(n - 4)
			if probe {
				return got, resent, answer(append([]byte{0, opERROR, 0, 0}, "Early terminate\x00"...))
			}
			if err := answer(ack(next)); err != nil {
				return got, resent, err
			}
			if n-4 < size {
				return got, resent, nil
			}
			next++
		}
	}
	return got, resent, fmt.Errorf("%s: too many packets", name)
}

// realisticBoard runs one board: on a thread of its own in the benchmark's namespace,
// from addr, fetching files in order, sizes checked. It returns the retransmissions.
func (e *benchEnv) realisticBoard(port int, addr netip.Addr, blksize int, files []realFile) (int, error) {
	runtime.LockOSThread() // never unlocked: the thread, moved to the namespace, ends with us
	ns, err := os.Open("/run/netns/" + e.ns)
	if err != nil {
		return 0, err
	}
	err = unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET)
	ns.Close()
	if err != nil {
		return 0, fmt.Errorf("enter %s: %w", e.ns, err)
	}
	if runtime.NumCPU() > 1 {
		var cpus unix.CPUSet
		cpus.Set(1)
		unix.SchedSetaffinity(0, &cpus)
	}
	unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: addr.As4()}); err != nil {
		return 0, err
	}
	tv := unix.NsecToTimeval(time.Second.Nanoseconds()) // a Pi's retransmission timeout
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, err
	}
	resent := 0
	for _, f := range files {
		n, r, err := realisticGet(fd, port, f.name, blksize, f.probe, benchDelay)
		resent += r
		if err != nil {
			return resent, fmt.Errorf("board %s: %w", addr, err)
		}
		want := int64(f.size)
		if f.probe {
			want = int64(min(f.size, blksize))
		}
		if f.size > 0 && n != want || n == 0 {
			return resent, fmt.Errorf("board %s: %s: %d bytes, want %d", addr, f.name, n, want)
		}
	}
	return resent, nil
}

// realisticRun runs boards at once, each fetching files, and returns the time from
// the first start to the last finish.
func (e *benchEnv) realisticRun(b *testing.B, port, boards, blksize int, files []realFile) (time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	var resent atomic.Int64
	errs := make(chan error, boards)
	for i := range boards {
		wg.Go(func() {
			r, err := e.realisticBoard(port, stormAddr(i), blksize, files)
			resent.Add(int64(r))
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	if r := resent.Load(); r > 0 {
		b.Logf("port %d: %d retransmissions by the clients", port, r)
	}
	return d, <-errs
}

// BenchmarkRealisticTransfer: one client answering each block after benchDelay, 8 MiB
// at blksize 512 and 1468.
func BenchmarkRealisticTransfer(b *testing.B) {
	e := setupBench(b)
	for _, blksize := range []int{512, 1468} {
		b.Run(fmt.Sprintf("8m/blksize=%d", blksize), func(b *testing.B) {
			sideBySide(b, e, 3, func(port int) (time.Duration, error) {
				return e.realisticRun(b, port, 1, blksize, []realFile{{"file-8m", 8 << 20, false}})
			})
		})
	}
}

// BenchmarkRealisticStorm: 200 Pi 4s (PIFLEET_TFTP_BENCH_BOARDS) power on at once, each
// fetching the boot set of issue 16 (22.9 MB: the start4.elf probe, start4.elf 2.2 MB,
// kernel8.img 8.2 MB, initramfs8 12.4 MB, ...) at blksize 1468, answering each block
// after benchDelay. pifleet, the baseline and tftpd-hpa (which serves config.txt and
// cmdline.txt from the tree) are measured, in turn, A B C then C B A: dnsmasq serves 50
// transfers at once by default, and a storm takes minutes per server.
func BenchmarkRealisticStorm(b *testing.B) {
	e := setupBench(b)
	boards := 200
	if v := os.Getenv(benchBoardsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > stormAddrs {
			b.Fatalf("%s=%q: want 1..%d", benchBoardsEnv, v, stormAddrs)
		}
		boards = n
	}
	servers := []string{"pifleet"}
	if _, ok := e.ports["baseline"]; ok {
		servers = append(servers, "baseline")
	}
	servers = append(servers, "tftpd-hpa")
	b.Logf("load average before: %s", loadAvg())
	times := map[string][]time.Duration{}
	cpu := map[string][]time.Duration{}
	for b.Loop() {
		slices.Reverse(servers) // A, B, B, A, ...: the load from elsewhere hits both alike
		for _, server := range servers {
			c0 := e.cpuTime(server)
			d, err := e.realisticRun(b, e.ports[server], boards, 1468, realBootSet)
			if err != nil {
				b.Errorf("%s: %v", server, err) // and go on: the other server's run still counts
			}
			times[server] = append(times[server], d)
			cpu[server] = append(cpu[server], e.cpuTime(server)-c0)
			b.Logf("%s: %.2f s, server CPU %.2f s, load average %s", server, d.Seconds(), cpu[server][len(cpu[server])-1].Seconds(), loadAvg())
		}
	}
	for _, server := range servers {
		t, c := times[server], cpu[server]
		b.ReportMetric(median(t).Seconds(), server+"-s")
		b.ReportMetric(median(c).Seconds(), server+"-cpu-s")
		b.Logf("%s: time median %.2f s (%.2f-%.2f), server CPU median %.2f s (%.2f-%.2f)", server,
			median(t).Seconds(), t[0].Seconds(), t[len(t)-1].Seconds(), median(c).Seconds(), c[0].Seconds(), c[len(c)-1].Seconds())
	}
	if c := median(cpu["tftpd-hpa"]); c > 0 {
		b.ReportMetric(median(cpu["pifleet"]).Seconds()/c.Seconds(), "x-tftpd-hpa-cpu")
	}
	b.Logf("load average after: %s", loadAvg())
	b.ReportMetric(0, "ns/op")
}
