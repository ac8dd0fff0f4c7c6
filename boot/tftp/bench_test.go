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
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pin "github.com/pin/tftp/v3"

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
// v3.1.0 server as the baseline this package replaced. It prints "ready" once bound.
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
		logger := slog.New(slog.DiscardHandler)
		if os.Getenv("PIFLEET_TFTP_BENCH_LOG") != "" { // to see each transfer when tuning
			logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		}
		s, err := New(Config{Addr: addr, Fleet: fleet, Logger: logger})
		if err != nil {
			return err
		}
		fmt.Println("ready")
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

// benchServers in the order they appear in the output.
var benchServers = []string{"pifleet", "tftpd-hpa", "dnsmasq", "pin-v3.1.0"}

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
	servers := map[string]struct {
		port  int
		argv  []string
		env   []string
		ready bool // prints "ready"
	}{
		"pifleet":    {6970, []string{self}, []string{benchServeEnv + "=pifleet", benchRootEnv + "=" + root, benchAddrEnv + "=127.0.0.1:6970"}, true},
		"pin-v3.1.0": {6971, []string{self}, []string{benchServeEnv + "=pin", benchRootEnv + "=" + root, benchAddrEnv + "=127.0.0.1:6971"}, true},
		"tftpd-hpa":  {6972, []string{"in.tftpd", "-L", "-a", "127.0.0.1:6972", "-s", root, "-B", "65464"}, nil, false},
		"dnsmasq": {69, []string{"dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--pid-file=", "--enable-tftp",
			"--tftp-root=" + root, "--listen-address=127.0.0.1", "--bind-interfaces"}, nil, false},
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
			if strings.TrimSpace(line) != "ready" {
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
	args := []string{"--net=/run/netns/" + e.ns, "taskset", "-c", "0", "curl", "-sS", "--tftp-blksize", strconv.Itoa(blksize),
		"-w", "%{time_total}\n"}
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

// sideBySide runs one measurement against every server per iteration, in turn, so that
// load from elsewhere on the machine hits them alike. It reports per server the median
// time ("<server>-s") and the server's own CPU time per iteration ("<server>-cpu-ms",
// which load on other CPUs disturbs far less than wall time), and pifleet's speed
// relative to the fastest C server by both ("x-best-peer", "x-best-peer-cpu"; > 1 means
// pifleet is faster).
//
// Each iteration measures rounds times per server, so that `make bench` (-benchtime 1s,
// often a single iteration) still gets a median of several.
func sideBySide(b *testing.B, e *benchEnv, rounds int, measure func(port int) (time.Duration, error)) {
	b.Logf("load average before: %s", loadAvg())
	times := map[string][]time.Duration{}
	cpu := map[string]time.Duration{}
	for b.Loop() {
		for i := 0; i < rounds*len(benchServers); i++ {
			server := benchServers[i%len(benchServers)]
			c0 := e.cpuTime(server)
			d, err := measure(e.ports[server])
			if err != nil {
				b.Fatalf("%s: %v", server, err)
			}
			time.Sleep(20 * time.Millisecond) // let tftpd-hpa's child exit
			cpu[server] += e.cpuTime(server) - c0
			times[server] = append(times[server], d)
		}
	}
	med := map[string]time.Duration{}
	for _, server := range benchServers {
		med[server] = median(times[server])
		b.ReportMetric(med[server].Seconds(), server+"-s")
		cpu[server] /= time.Duration(len(times[server]))
		b.ReportMetric(float64(cpu[server].Microseconds())/1000, server+"-cpu-ms")
	}
	b.ReportMetric(float64(min(med["tftpd-hpa"], med["dnsmasq"]))/float64(med["pifleet"]), "x-best-peer")
	if cpu["pifleet"] > 0 {
		b.ReportMetric(float64(min(cpu["tftpd-hpa"], cpu["dnsmasq"]))/float64(cpu["pifleet"]), "x-best-peer-cpu")
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
// boot order (one curl per board, files one after another as the bootloader does).
// The time is from the first start to the last finish.
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
		for range boards {
			wg.Go(func() {
				if _, err := e.curl(port, 1468, files...); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		return time.Since(start), <-errs
	})
}
