package scale

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/server"
)

// serveEnv, when set, makes the test binary run `pifleet serve` on the fleet.yaml it
// names instead of the tests (the simulator starts it so inside the server namespace).
const serveEnv = "PIFLEET_SIM_SERVE"

// binEnv names a built pifleet binary to run as the server instead (make bench-scale).
const binEnv = "PIFLEET_BIN"

// profileEnv names a file for the server's CPU profile (test-binary server only).
const profileEnv = "PIFLEET_SIM_CPUPROFILE"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(serveEnv); cfg != "" {
		os.Exit(serveChild(cfg))
	}
	if spec := os.Getenv(peerEnv); spec != "" {
		os.Exit(peerChild(spec))
	}
	os.Exit(m.Run())
}

// serveChild is `pifleet serve -c cfg` until SIGTERM.
func serveChild(cfg string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if p := os.Getenv(profileEnv); p != "" {
		f, err := os.Create(p)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	err := server.Run(ctx, server.Options{ConfigPath: cfg, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	return 0
}

// serveCommand runs the server as $PIFLEET_BIN serve, or as this test binary.
func serveCommand(cfgPath string) []string {
	if bin := os.Getenv(binEnv); bin != "" {
		return []string{bin, "serve", "-c", cfgPath}
	}
	exe, _ := os.Executable()
	return []string{exe, "-test.run=^$"}
}

// serversEnv picks the server stacks: pifleet, peers (the Debian servers, peers.go) or
// both, comma-separated. TestFleetSmoke runs pifleet unless told, BenchmarkFleet both.
const serversEnv = "PIFLEET_SIM_SERVERS"

// servers returns the stacks $PIFLEET_SIM_SERVERS names, else def.
func servers(t testing.TB, def string) []string {
	v := os.Getenv(serversEnv)
	if v == "" {
		v = def
	}
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s != "pifleet" && s != "peers" {
			t.Fatalf("%s: %q is neither pifleet nor peers", serversEnv, s)
		}
		out = append(out, s)
	}
	return out
}

// config is a run of n boards; the server command and its environment are filled in.
func config(t testing.TB, n int, full, real bool) Config {
	cfg := Config{Boards: n, FullDHCP: full, Delay: 150 * time.Microsecond, RealSizes: real,
		Idle: 2 * time.Second, KeepAlive: time.Second}
	if v := os.Getenv("PIFLEET_SIM_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("PIFLEET_SIM_DELAY: %v", err)
		}
		cfg.Delay = d
	}
	if v := os.Getenv("PIFLEET_SIM_IDLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("PIFLEET_SIM_IDLE: %v", err)
		}
		cfg.Idle = d
		cfg.KeepAlive = min(5*time.Second, d/3)
	}
	cfg.Serve = serveCommand
	return cfg
}

// TestFleetSmoke boots three boards with a tiny boot set and the captured Debian boot's
// NFS calls in full and proxy mode: every board must get its offer, its boot set and
// every NFS reply as captured, and idle with keep-alives, with no error and at most two
// retransmissions of any exchange. PIFLEET_SIM_SERVERS=pifleet,peers boots them from the
// peer stack too, which must meet the same, but may answer replayed calls otherwise
// (reported, not failed: a peer's difference is not pifleet's error).
func TestFleetSmoke(t *testing.T) {
	for _, server := range servers(t, "pifleet") {
		for _, full := range []bool{true, false} {
			mode := map[bool]string{true: "full", false: "proxy"}[full]
			t.Run(server+"/"+mode, func(t *testing.T) { smoke(t, server, full) })
		}
	}
}

func smoke(t *testing.T, server string, full bool) {
	mode := map[bool]string{true: "full", false: "proxy"}[full]
	cfg := config(t, 3, full, false)
	cfg.Peers = server == "peers"
	f := Start(t, withChildEnv(cfg))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := f.Run(ctx)
	if err != nil {
		t.Fatalf("%v\nserver log:\n%s", err, f.ServerLog())
	}
	s := Summarize(f.Name(), res)
	var b strings.Builder
	WriteTable(&b, mode, []Summary{s})
	t.Log("\n" + b.String())
	if s.Errors != 0 || s.Booted != 3 {
		t.Fatalf("%d of 3 booted, %d errors, first: %v\nserver log:\n%s", s.Booted, s.Errors, s.FirstErr, f.ServerLog())
	}
	for _, br := range res.Boards {
		if br.Ops["READ"] == 0 || br.Ops["READDIRPLUS"] == 0 || br.Ops["WRITE"] == 0 || br.Ops["COMMIT"] == 0 || br.Ops["LOOKUP"] == 0 {
			t.Errorf("board %s made calls %v; want LOOKUP, READ, READDIRPLUS, WRITE and COMMIT", br.Name, br.Ops)
		}
		if br.Diverged != 0 && !cfg.Peers {
			t.Errorf("board %s: %d replayed calls answered otherwise than captured; first: %s", br.Name, br.Diverged, br.FirstDiverge)
		}
		if br.KeepAlives == 0 {
			t.Errorf("board %s: no keep-alive answered while idle", br.Name)
		}
	}
	if s.MaxRetries > 2 {
		t.Errorf("an exchange needed %d retransmissions (goal: at most 2)", s.MaxRetries)
	}
}

// withChildEnv sets the environment a test-binary server needs: the config path is
// known only inside Start, so the child reads it from its command line instead.
func withChildEnv(cfg Config) Config {
	serve := cfg.Serve
	cfg.Serve = func(p string) []string {
		args := serve(p)
		if os.Getenv(binEnv) != "" {
			return args
		}
		// ip netns exec runs env(1), which sets the child's variables.
		env := []string{"env", serveEnv + "=" + p}
		if prof := os.Getenv(profileEnv); prof != "" {
			env = append(env, profileEnv+"="+prof)
		}
		return append(env, args...)
	}
	return cfg
}

// BenchmarkFleet boots 1, 50 and 200 boards with the real boot set and the full
// workload, in full and proxy DHCP mode, from pifleet and from the peer stack (peers.go)
// one after the other for each size (who goes first alternates), and prints the figures side by side (make
// bench-scale). PIFLEET_SIM_BOARDS=1,50 picks the sizes; PIFLEET_SIM_MODES=full the
// modes; PIFLEET_SIM_SERVERS=pifleet the stacks.
func BenchmarkFleet(b *testing.B) {
	sizes := []int{1, 50, 200}
	if v := os.Getenv("PIFLEET_SIM_BOARDS"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("PIFLEET_SIM_BOARDS: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	modes := []string{"full", "proxy"}
	if v := os.Getenv("PIFLEET_SIM_MODES"); v != "" {
		modes = strings.Split(v, ",")
	}
	stacks := servers(b, "pifleet,peers")
	for _, mode := range modes {
		var rows []Summary
		for i, n := range sizes {
			order := slices.Clone(stacks)
			if i%2 == 1 { // rotate who goes first: the machine's load drifts
				slices.Reverse(order)
			}
			for _, server := range order {
				b.Run(fmt.Sprintf("%s/boards=%d/%s", mode, n, server), func(b *testing.B) {
					rows = append(rows, benchFleet(b, mode, n, server)...)
				})
			}
		}
		var sb strings.Builder
		WriteTable(&sb, mode, rows)
		fmt.Print("\n" + sb.String())
	}
}

// benchFleet is one size's runs from one server stack.
func benchFleet(b *testing.B, mode string, n int, server string) []Summary {
	var rows []Summary
	cfg := config(b, n, mode == "full", true)
	cfg.Peers = server == "peers"
	if os.Getenv("PIFLEET_SIM_IDLE") == "" {
		cfg.Idle, cfg.KeepAlive = 20*time.Second, 5*time.Second
	}
	for range b.N {
		f := Start(b, withChildEnv(cfg))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		res, err := f.Run(ctx)
		cancel()
		if err != nil {
			b.Fatalf("%v\nserver log:\n%s", err, f.ServerLog())
		}
		s := Summarize(f.Name(), res)
		rows = append(rows, s)
		b.ReportMetric(s.AllBooted.Seconds(), "s-all-booted")
		b.ReportMetric(s.CPU.Seconds(), "server-cpu-s")
		b.ReportMetric(float64(s.PeakRSS)/(1<<20), "peak-MiB")
		if br := res.Boards[0]; br.Err == nil {
			b.Logf("board %s: %d files in the tree, %d workload steps, TFTP %.1f MiB, NFS read %.1f MiB, calls %v",
				br.Name, f.work.Files(), f.work.Steps(), float64(br.TFTPBytes)/(1<<20), float64(br.NFSBytes)/(1<<20), br.Ops)
		}
		b.Logf("server log: %d WARN/ERROR lines; %d keep-alives answered while idle", s.ServerWarns, s.KeepAlives)
		if s.FirstErr != nil {
			b.Logf("first error: %v", s.FirstErr)
		}
		if p := os.Getenv(profileEnv); p != "" && !cfg.Peers {
			f.stop()
			os.Rename(p, filepath.Join(filepath.Dir(p), fmt.Sprintf("%s-%d-%s", mode, n, filepath.Base(p))))
		}
	}
	return rows
}
