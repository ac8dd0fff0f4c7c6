package server

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/nfsroot"
	"github.com/pifleet/pifleet/test/netns"
	"github.com/pifleet/pifleet/test/require"
)

// startServerDHCP is startServer with proxy DHCP on a free port of every address (the
// server address 127.0.0.100 is on no interface, so it is not bound to one).
func startServerDHCP(t *testing.T, boards string) (*testServer, int) {
	t.Helper()
	dir := t.TempDir()
	ports := freePorts(t, 5)
	ts := &testServer{t: t, cfgPath: filepath.Join(dir, "fleet.yaml"), tftp: ports[0], logs: &netns.LogBuffer{}, done: make(chan error, 1)}
	y := fmt.Sprintf(fleetTmpl, filepath.Join(dir, "state"), ports[0], ports[1], ports[2], ports[3], testImage(t), boards)
	y = strings.Replace(y, "dhcp: {mode: off}", "dhcp: {mode: proxy}", 1)
	y = strings.Replace(y, "portmap: 0}", fmt.Sprintf("portmap: 0, dhcp: %d}", ports[4]), 1)
	if err := os.WriteFile(ts.cfgPath, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	ts.start()
	t.Cleanup(ts.stop)
	return ts, ports[4]
}

// sendDHCP sends a Pi 4 EEPROM's DISCOVER (option 97: "RPi4", revision, MAC tail,
// serial) from mac as a relay agent would (giaddr set: the reply goes to the relay, an
// address on loopback, never a broadcast).
func sendDHCP(t *testing.T, port int, mac string, serial uint32) {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	opt97 := binary.LittleEndian.AppendUint32([]byte{0, 'R', 'P', 'i', '4'}, 0xc03111)
	opt97 = binary.LittleEndian.AppendUint32(append(opt97, hw[2:6]...), serial)
	d, err := dhcpv4.NewDiscovery(hw, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, opt97),
		dhcpv4.WithGatewayIP(net.IPv4(127, 0, 0, 100)))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp4", fmt.Sprintf("127.0.0.100:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(d.ToBytes()); err != nil {
		t.Fatal(err)
	}
}

// scrape returns the /metrics text.
func (ts *testServer) scrape() string {
	ts.t.Helper()
	resp, err := http.Get(ts.http + "/metrics")
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		ts.t.Fatalf("/metrics: HTTP %d\n%s", resp.StatusCode, body)
	}
	return string(body)
}

// metricsAfterTraffic starts a server, boots a board as far as its NFS root over real
// clients (a DHCP DISCOVER, TFTP reads with curl, a mount and a file read with
// go-nfs-client), sends a stranger's DHCP packet, and returns the /metrics text.
func metricsAfterTraffic(t *testing.T) string {
	needRoot(t)
	ts, dhcpPort := startServerDHCP(t, "  - {name: alpha, mac: '02:00:00:00:00:01', serial: '000abc00', ip: 127.0.0.1}\n  - {name: beta, mac: '02:00:00:00:00:02', ip: 127.0.0.3}\n")
	// The DHCP socket opens once the server runs: resend until both requests are counted.
	defer func() {
		if t.Failed() {
			t.Log(ts.logs.String())
		}
	}()
	waitFor(t, "the DHCP requests to be counted", func() bool {
		sendDHCP(t, dhcpPort, "02:00:00:00:00:01", 0x000abc00)
		sendDHCP(t, dhcpPort, "02:00:00:00:00:99", 0x5eed5eed) // not in the fleet
		out := ts.scrape()
		return strings.Contains(out, `pifleet_dhcp_requests_total{outcome="offer",type="discover"}`) &&
			strings.Contains(out, `pifleet_dhcp_requests_total{outcome="none",type="discover"}`)
	})
	if out, err := tftpGet(t, "127.0.0.1", ts.tftp, "000abc00/config.txt"); err != nil || !strings.Contains(out, "arm_64bit=1") {
		t.Fatalf("tftp: %v %q", err, out)
	}
	if _, err := tftpGet(t, "127.0.0.1", ts.tftp, "000abc00/no-such-file"); err == nil {
		t.Fatal("tftp of a missing file succeeded")
	}
	// The server records and counts a transfer just after its last ACK or its ERROR: curl
	// can be done first. Wait (bounded) until it is, as a board's kernel mounts its root
	// seconds after its last TFTP read, not at once (a read recorded after the mount would
	// begin a new boot). The caller checks the counts.
	waitFor(t, "the TFTP transfers to be counted", func() bool {
		out := ts.scrape()
		return tftpComplete.MatchString(out) && tftpMissing.MatchString(out)
	})
	mc, err := dialMount(ts.srv.cfg.Server.Ports.Mount)
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	m := &nfsc.Mount{Client: mc}
	auth := rpc.AuthUnix{Machinename: "alpha", GidLen: 1}
	v, err := m.Mount("/boards/alpha", auth.Auth())
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	f, err := v.Open("etc/os-release")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(f); string(b) != "ID=test\n" {
		t.Errorf("read over NFS: %q", b)
	}
	f.Close()
	if _, _, err := v.Lookup("etc/nothing-here"); err == nil {
		t.Error("lookup of a missing file succeeded")
	}
	if _, err := m.Mount("/boards/beta", auth.Auth()); err == nil {
		t.Fatal("alpha's address mounted beta's export")
	}
	waitFor(t, "the mount to show", func() bool { return strings.Contains(ts.scrape(), `pifleet_board_mounted{board="alpha"} 1`) })
	return ts.scrape()
}

// tftpComplete and tftpMissing match /metrics once it counts a transfer of each kind.
var (
	tftpComplete = regexp.MustCompile(`pifleet_tftp_transfers_total\{result="complete"\} [1-9]`)
	tftpMissing  = regexp.MustCompile(`pifleet_tftp_transfers_total\{result="missing"\} [1-9]`)
)

// TestMetricsExposition: after DHCP, TFTP and NFS traffic, /metrics passes `promtool check
// metrics` and has what it promises: requests by type and outcome, TFTP transfers and
// bytes, NFS latency by procedure and status, per-board state for fleet boards only, the
// protection counters, Go runtime and process metrics.
func TestMetricsExposition(t *testing.T) {
	promtool := require.Tool(t, "promtool", "prometheus")
	out := metricsAfterTraffic(t)
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s\n--- metrics:\n%s", err, msg, out)
	}
	for _, want := range []string{
		`pifleet_dhcp_dropped_total{reason="oversized"} 0`,
		`pifleet_tftp_transfers_total{result="complete"} 1`,
		`pifleet_tftp_transfers_total{result="missing"} 1`,
		`pifleet_tftp_bytes_total `,
		`pifleet_board_tftp_bytes_total{board="alpha"} `,
		`pifleet_nfs_call_duration_seconds_bucket{proc="mnt",program="mount",status="ok",le="1"} 1`,
		`pifleet_nfs_call_duration_seconds_count{proc="mnt",program="mount",status="acces"} 1`,
		`pifleet_nfs_call_duration_seconds_count{proc="lookup",program="nfs",status="noent"}`,
		`pifleet_nfs_call_duration_seconds_count{proc="read",program="nfs",status="ok"}`,
		`pifleet_nfs_connections_refused_total{limit="per_address"} 0`,
		`pifleet_nfs_accept_errors_total 0`,
		`pifleet_log_lines_suppressed_total{service="dhcp"}`,
		`pifleet_log_lines_suppressed_total{service="nfs"}`,
		`pifleet_board_mounted{board="alpha"} 1`,
		`pifleet_board_mounted{board="beta"} 0`,
		`pifleet_board_boot_stage{board="alpha"} 3`,
		`pifleet_board_boot_stage{board="beta"} 0`,
		`pifleet_board_last_boot_duration_seconds{board="alpha"}`,
		`pifleet_board_upper_bytes{board="alpha"}`,
		`pifleet_board_info{board="alpha",image="img"} 1`,
		`pifleet_boot_events_total{stage="nfs",step="mount"} 1`,
		`pifleet_boards 2`,
		`pifleet_boards_mounted 1`,
		`pifleet_unknown_clients 1`,
		`go_goroutines`,
		`go_gc_duration_seconds`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(out, "pifleet_tftp_bytes_total 0\n") || strings.Contains(out, `pifleet_board_tftp_bytes_total{board="alpha"} 0`+"\n") {
		t.Error("TFTP bytes not counted")
	}
	if testing.Verbose() {
		t.Log(out)
	}
	// Per-board labels name fleet boards only: never the stranger's MAC or an address.
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, `board="`); i >= 0 && !strings.HasPrefix(line[i:], `board="alpha"`) && !strings.HasPrefix(line[i:], `board="beta"`) {
			t.Errorf("per-board label outside the fleet: %s", line)
		}
		if strings.Contains(line, "02:00:00:00:00:99") || strings.Contains(line, "127.0.0.") {
			t.Errorf("a client's MAC or address as a label: %s", line)
		}
	}
}

// metricRef finds metric names in a PromQL expression: the names pifleet, Go and the
// process collector export all start with one of these prefixes.
var metricRef = regexp.MustCompile(`\b(?:pifleet|go|process)_[a-zA-Z0-9_]+`)

// TestGrafanaDashboard: the shipped dashboard (dist/grafana/pifleet.json) is valid JSON
// with panels, and every metric its queries name is in the /metrics output of a server
// that has booted a board.
func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "dist", "grafana", "pifleet.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			exprs = append(exprs, q.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		exprs = append(exprs, v.Definition)
	}
	if len(exprs) < 10 {
		t.Fatalf("dashboard %q has %d queries", dash.Title, len(exprs))
	}
	exported := map[string]bool{}
	for _, line := range strings.Split(metricsAfterTraffic(t), "\n") {
		if name, _, ok := strings.Cut(line, " "); ok && !strings.HasPrefix(line, "#") {
			name, _, _ = strings.Cut(name, "{")
			exported[name] = true
		}
	}
	refs := 0
	for _, e := range exprs {
		for _, name := range metricRef.FindAllString(e, -1) {
			refs++
			if !exported[name] {
				t.Errorf("dashboard query %q names %s, which /metrics does not export", e, name)
			}
		}
	}
	if refs == 0 {
		t.Error("no metric found in the dashboard's queries")
	}
}

// TestStatsCollectorNewField: a field a package adds to its Stats is exported before
// anyone describes it (untyped, named after the field, with a help text), a described
// one gets its name, type and labels, and "-" leaves a field out.
func TestStatsCollectorNewField(t *testing.T) {
	type stats struct {
		Reads        int64
		ActiveNow    int
		Hidden       uint64
		NotANumber   string
		TransfersCap uint32
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(&statsCollector{sources: []statsSource{{prefix: "pifleet_x_", what: "x.Stats",
		get: func() (any, bool) { return stats{Reads: 3, ActiveNow: 2, Hidden: 9, TransfersCap: 7}, true },
		fields: map[string]statField{
			"Reads":  {"pifleet_x_transfers_total", "Transfers.", prometheus.CounterValue, prometheus.Labels{"result": "complete"}},
			"Hidden": {Name: "-"},
		}}}})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf.GetType().String() + " " + mf.GetHelp()
	}
	want := map[string]string{
		"pifleet_x_transfers_total": "COUNTER Transfers.",
		"pifleet_x_active_now":      "UNTYPED x.Stats.ActiveNow (see the package's doc comment).",
		"pifleet_x_transfers_cap":   "UNTYPED x.Stats.TransfersCap (see the package's doc comment).",
	}
	if !maps.Equal(got, want) {
		t.Errorf("gathered %v, want %v", got, want)
	}
}

// TestLastBoot: the boot stage is the furthest step of the last boot, a reset starts
// over, and the duration runs from the first step to the mount.
func TestLastBoot(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	ev := func(sec int, st boot.Stage) boot.Event {
		return boot.Event{Time: t0.Add(time.Duration(sec) * time.Second), Stage: st}
	}
	for _, tc := range []struct {
		evs   []boot.Event
		stage int
		took  time.Duration
	}{
		{nil, 0, 0},
		{[]boot.Event{ev(0, boot.StageDHCP), ev(1, boot.StageTFTP)}, 2, 0},
		{[]boot.Event{ev(0, boot.StageDHCP), ev(1, boot.StageTFTP), ev(9, boot.StageNFS), ev(10, boot.StageTFTP)}, 3, 9 * time.Second},
		{[]boot.Event{ev(0, boot.StageTFTP), ev(4, boot.StageNFS), ev(20, boot.StageReset)}, 0, 0},
	} {
		stage, _, took := lastBoot(tc.evs)
		if stage != tc.stage || took != tc.took {
			t.Errorf("lastBoot(%d events) = stage %d took %v, want %d %v", len(tc.evs), stage, took, tc.stage, tc.took)
		}
	}
}

// TestObserveCallAllocatesNothing: once a (procedure, status) has been seen, recording a
// call in the histogram and the board's totals allocates nothing.
func TestObserveCallAllocatesNothing(t *testing.T) {
	m := newMetrics()
	c := nfsroot.Call{Program: 100003, Proc: 1, Board: "alpha", Duration: 80 * time.Microsecond}
	m.observeCall(c)
	if n := testing.AllocsPerRun(1000, func() { m.observeCall(c) }); n != 0 {
		t.Errorf("observeCall allocates %v times per call", n)
	}
	if got := m.board("alpha").nfsCalls.Load(); got != 1002 {
		t.Errorf("board calls = %d, want 1002", got)
	}
}

// BenchmarkObserveCall is the cost /metrics adds to every NFS call.
func BenchmarkObserveCall(b *testing.B) {
	m := newMetrics()
	c := nfsroot.Call{Program: 100003, Proc: 6, Board: "alpha", Duration: 120 * time.Microsecond}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.observeCall(c)
		}
	})
}
