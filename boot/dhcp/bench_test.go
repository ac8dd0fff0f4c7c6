package dhcp

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot/boottest"
	"github.com/pifleet/pifleet/test/netns"
	"github.com/pifleet/pifleet/test/require"
)

// BenchmarkFullVsDnsmasq runs full-mode pifleet and dnsmasq side by side under perfdhcp
// (BENCH-PEERS.md): each server in its own process pinned to CPU 1, perfdhcp pinned to
// CPU 0, in the test namespaces, leases persisted by both, a plain and a Pi/PXE
// profile. It reports 4-way exchanges per second and drops, and logs the table.
//
//	go test -run '^$' -bench FullVsDnsmasq ./boot/dhcp/
//
// Needs root, dnsmasq (dnsmasq-base), perfdhcp (kea-admin) and taskset (util-linux).

const (
	benchRate    = 3000  // offered load, exchanges/s: above what either server sustains
	benchClients = 20000 // distinct MACs, so per-MAC limits and lease reuse do not flatter anyone
	benchSeconds = 5
)

var (
	benchPoolStart = netip.MustParseAddr("198.18.1.1")
	benchPoolEnd   = netip.MustParseAddr("198.18.200.254")
)

type benchResult struct {
	rate        float64
	drops       int
	sent, acked int
}

func BenchmarkFullVsDnsmasq(b *testing.B) {
	requireRoot(b)
	for _, tool := range []string{"dnsmasq", "perfdhcp", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			require.Missing(b, fmt.Sprintf("needs %s (apt-get install dnsmasq-base kea-admin util-linux)", tool))
		}
	}
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	vc := hex.EncodeToString([]byte(piVendorClass))
	opt97 := hex.EncodeToString(pi4Option97(0x12345678, 0xc03111, mustMAC("dc:a6:32:00:00:01")))
	profiles := []struct {
		name string
		args []string
	}{
		{"plain", nil},
		{"pi-pxe", []string{"-o", "60," + vc, "-o", "93,0000", "-o", "97," + opt97}},
	}
	// Rounds alternate the servers so a noisy neighbour hurts both alike; the
	// median round is reported.
	const rounds = 3
	results := map[string][]benchResult{}
	var order []string
	for range b.N {
		n := newNetns(b)
		netns.Run(b, "ip", "-n", n.Client, "addr", "add", "198.18.0.2/15", "dev", n.ClientIf)
		for round := range rounds {
			for _, p := range profiles {
				for _, server := range []string{"pifleet", "dnsmasq"} {
					name := p.name + "/" + server
					if round == 0 {
						order = append(order, name)
					}
					stop := startBenchServer(b, n, server, p.name, self, b.TempDir())
					results[name] = append(results[name], runPerfdhcp(b, n, p.args))
					stop()
				}
			}
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	var tab strings.Builder
	fmt.Fprintf(&tab, "\nperfdhcp -r %d -R %d -p %d, median of %d alternating rounds; server on CPU 1, perfdhcp on CPU 0; loadavg %s",
		benchRate, benchClients, benchSeconds, rounds, load)
	fmt.Fprintf(&tab, "| profile/server | exchanges/s | DISCOVERs sent | ACKs | drops | all rounds (exchanges/s) |\n|---|---|---|---|---|---|\n")
	for _, name := range order {
		rs := results[name]
		slices.SortFunc(rs, func(a, b benchResult) int { return cmp.Compare(a.rate, b.rate) })
		all := make([]string, len(rs))
		for i, r := range rs {
			all[i] = fmt.Sprintf("%.0f", r.rate)
		}
		m := rs[len(rs)/2]
		fmt.Fprintf(&tab, "| %s | %.0f | %d | %d | %d | %s |\n", name, m.rate, m.sent, m.acked, m.drops, strings.Join(all, " "))
		unit := strings.ReplaceAll(name, "/", "-")
		b.ReportMetric(m.rate, unit+"-exchanges/s")
		b.ReportMetric(float64(m.drops), unit+"-drops")
	}
	b.Log(tab.String())
}

// startBenchServer starts pifleet (this test binary re-executed, see TestMain)
// or dnsmasq in the server namespace, pinned to CPU 1, and returns how to stop it.
func startBenchServer(b *testing.B, n *netns.Pair, server, profile, self, dir string) func() {
	b.Helper()
	var cmd *exec.Cmd
	pool := fmt.Sprintf("%s,%s", benchPoolStart, benchPoolEnd)
	switch server {
	case "pifleet":
		cmd = exec.Command("ip", "netns", "exec", n.Server, "taskset", "-c", "1", self)
		cmd.Env = append(os.Environ(), "PIFLEET_DHCP_BENCH_SERVE=1",
			"PIFLEET_DHCP_BENCH_IFACE="+n.ServerIf,
			"PIFLEET_DHCP_BENCH_POOL="+pool,
			"PIFLEET_DHCP_BENCH_DIR="+dir)
	case "dnsmasq":
		args := []string{"netns", "exec", n.Server, "taskset", "-c", "1", "dnsmasq", "-k",
			"--conf-file=/dev/null", "--port=0", "--no-ping", "--interface=" + n.ServerIf, "--bind-interfaces",
			"--dhcp-range=" + pool + ",255.254.0.0,1h", "--dhcp-leasefile=" + filepath.Join(dir, "leases"),
			"--dhcp-lease-max=200000", "--log-facility=" + filepath.Join(dir, "log"),
			"--pid-file=" + filepath.Join(dir, "pid")}
		if profile == "pi-pxe" {
			args = append(args, `--pxe-service=0,"Raspberry Pi Boot"`)
		}
		cmd = exec.Command("ip", args...)
	}
	out, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatalf("%s: %v", server, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stop := sync.OnceFunc(func() {
		// ip netns exec and taskset exec (no fork), so this pid is the server itself.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		out.Close()
	})
	b.Cleanup(stop)
	waitListening(b, n.Server, 67, done)
	return stop
}

var (
	rateRe  = regexp.MustCompile(`Rate: ([0-9.]+) 4-way exchanges/second`)
	sentRe  = regexp.MustCompile(`sent packets: (\d+)`)
	recvRe  = regexp.MustCompile(`received packets: (\d+)`)
	dropsRe = regexp.MustCompile(`drops: (\d+)`)
)

func runPerfdhcp(b *testing.B, n *netns.Pair, extra []string) benchResult {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(benchSeconds+30)*time.Second)
	defer cancel()
	args := []string{"netns", "exec", n.Client, "taskset", "-c", "0", "perfdhcp", "-4", "-l", n.ClientIf,
		"-r", strconv.Itoa(benchRate), "-R", strconv.Itoa(benchClients), "-p", strconv.Itoa(benchSeconds)}
	out, err := exec.CommandContext(ctx, "ip", append(args, extra...)...).CombinedOutput()
	// perfdhcp exits 3 when packets were dropped; the output is what counts.
	m := rateRe.FindSubmatch(out)
	if m == nil {
		b.Fatalf("perfdhcp: %v\n%s", err, out)
	}
	var r benchResult
	r.rate, _ = strconv.ParseFloat(string(m[1]), 64)
	sent := sentRe.FindAllSubmatch(out, -1)
	recv := recvRe.FindAllSubmatch(out, -1)
	if len(sent) >= 1 {
		r.sent, _ = strconv.Atoi(string(sent[0][1]))
	}
	if len(recv) >= 2 {
		r.acked, _ = strconv.Atoi(string(recv[1][1]))
	}
	for _, d := range dropsRe.FindAllSubmatch(out, -1) {
		v, _ := strconv.Atoi(string(d[1]))
		r.drops += v
	}
	return r
}

// TestMain doubles as the server process of BenchmarkFullVsDnsmasq: with
// PIFLEET_DHCP_BENCH_SERVE=1 (set only by startBenchServer, which runs this binary
// inside the server namespace pinned like dnsmasq) it serves full mode until SIGTERM.
func TestMain(m *testing.M) {
	if os.Getenv("PIFLEET_DHCP_BENCH_SERVE") == "1" {
		if err := benchServe(); err != nil {
			fmt.Fprintln(os.Stderr, "bench server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func benchServe() error {
	dir := os.Getenv("PIFLEET_DHCP_BENCH_DIR")
	start, end, _ := strings.Cut(os.Getenv("PIFLEET_DHCP_BENCH_POOL"), ",")
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	srv, err := New(Config{
		Mode: ModeFull, Interface: os.Getenv("PIFLEET_DHCP_BENCH_IFACE"),
		ServerIP: serverIP, Subnet: testNet, LeaseTime: time.Hour,
		PoolStart: netip.MustParseAddr(start), PoolEnd: netip.MustParseAddr(end),
		LeaseFile: filepath.Join(dir, "leases"), Fleet: &boottest.Fleet{},
		Logger: slog.New(slog.NewTextHandler(logf, nil)),
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := srv.Serve(ctx); err != nil {
		return err
	}
	fmt.Fprintf(logf, "stats %+v leases %d\n", srv.Stats(), len(srv.Leases()))
	return nil
}
