package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/test/netns"
	"github.com/pifleet/pifleet/test/require"
)

func needRoot(t *testing.T) {
	t.Helper()
	require.Root(t, "board overlays keep owners, device-node whiteouts and trusted.* xattrs (CI runs as root)")
}

// freePorts returns n distinct free TCP+UDP ports on loopback.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	// Below the kernel's ephemeral range (32768-60999 by default): a port the kernel hands
	// to another test's ":0" listener or outgoing connection can then never collide with
	// one picked here between this check and the server's bind.
	var out []int
	var ls []io.Closer
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000 {
			t.Fatal("no free TCP+UDP port pair in 20000-32767 after 1000 tries")
		}
		p := 20000 + mathrand.IntN(12768)
		if slices.Contains(out, p) {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.100:%d", p))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.100:%d", p))
		if err != nil {
			l.Close()
			continue
		}
		ls = append(ls, l, u)
		out = append(out, p)
	}
	for _, c := range ls {
		c.Close()
	}
	return out
}

// testImage lays out a tiny Pi root: /boot/firmware with config.txt and cmdline.txt.
func testImage(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	fw := filepath.Join(root, "boot", "firmware")
	if err := os.MkdirAll(fw, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"config.txt":  "arm_64bit=1\nkernel=kernel8.img\n",
		"cmdline.txt": "console=serial0,115200 root=PARTUUID=1234-02 rootfstype=ext4 fsck.repair=yes rootwait init=/usr/lib/raspberrypi-sys-mods/firstboot\n",
		"start4.elf":  strings.Repeat("firmware", 1000),
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(fw, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "os-release"), []byte("ID=test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

type testServer struct {
	t       *testing.T
	cfgPath string
	http    string
	tftp    int
	srv     *Server
	logs    *netns.LogBuffer
	cancel  context.CancelFunc
	done    chan error
}

const fleetTmpl = `server:
  address: 127.0.0.100/8
  state: %s
  dhcp: {mode: off}
  ports: {tftp: %d, nfs: %d, mount: %d, http: %d, portmap: 0}
images:
  img: {path: %s}
defaults: {image: img, cmdline: quiet}
boards:
%s`

func boardYAML(names ...string) string {
	var b strings.Builder
	for i, n := range names {
		fmt.Fprintf(&b, "  - {name: %s, mac: '02:00:00:00:00:%02x', serial: '%08x', ip: 127.0.0.%d}\n", n, i+1, 0xabc00+i, i+2)
	}
	return b.String()
}

func startServer(t *testing.T, boards string) *testServer {
	t.Helper()
	dir := t.TempDir()
	ports := freePorts(t, 4)
	ts := &testServer{t: t, cfgPath: filepath.Join(dir, "fleet.yaml"), tftp: ports[0], logs: &netns.LogBuffer{}, done: make(chan error, 1)}
	y := fmt.Sprintf(fleetTmpl, filepath.Join(dir, "state"), ports[0], ports[1], ports[2], ports[3], testImage(t), boards)
	if err := os.WriteFile(ts.cfgPath, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	ts.start()
	t.Cleanup(ts.stop)
	return ts
}

// start runs the server on ts.cfgPath until stop.
func (ts *testServer) start() {
	t := ts.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	ts.done = make(chan error, 1)
	ready := make(chan *Server, 1)
	go func() {
		ts.done <- Run(ctx, Options{ConfigPath: ts.cfgPath, Logger: slog.New(slog.NewTextHandler(ts.logs, nil)),
			Ready: func(s *Server) { ready <- s }})
	}()
	select {
	case s := <-ready:
		ts.srv = s
		ts.http = "http://" + s.HTTPAddr().String()
	case err := <-ts.done:
		t.Fatalf("server did not start: %v\n%s", err, ts.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("server did not start in 30s\n%s", ts.logs.String())
	}
}

// stop cancels the server and waits for a clean exit.
func (ts *testServer) stop() {
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	ts.cancel = nil
	select {
	case err := <-ts.done:
		if err != nil {
			ts.t.Errorf("server exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		ts.t.Errorf("server did not stop within 20s of cancel")
	}
}

func (ts *testServer) getJSON(path string, v any) int {
	ts.t.Helper()
	resp, err := http.Get(ts.http + path)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		json.NewDecoder(resp.Body).Decode(v)
	}
	return resp.StatusCode
}

// post makes a state-changing API call as the CLI does: with the token from the state
// dir, plus the extra headers hdr.
func (ts *testServer) post(path string, hdr map[string]string) (*http.Response, error) {
	ts.t.Helper()
	si, err := ReadServeInfo(ts.srv.state.Dir)
	if err != nil {
		ts.t.Fatal(err)
	}
	tok, err := si.ReadToken()
	if err != nil {
		ts.t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", ts.http+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return http.DefaultClient.Do(req)
}

func (ts *testServer) getRaw(path string) string {
	ts.t.Helper()
	resp, err := http.Get(ts.http + path)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (ts *testServer) boardNames() []string {
	var bs []BoardStatus
	ts.getJSON("/api/boards", &bs)
	var names []string
	for _, b := range bs {
		names = append(names, b.Name)
	}
	return names
}

// waitFor polls cond (bounded: 150 tries, 100 ms apart) for the file watcher to act.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 150; i++ {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// tftpGet reads name over TFTP from the address from: a board's fixed IP, as only the
// board's own address is served its files.
func tftpGet(t *testing.T, from string, port int, name string) (string, error) {
	t.Helper()
	require.Tool(t, "curl", "curl")
	out, err := exec.Command("curl", "-sS", "--max-time", "20", "--interface", from,
		fmt.Sprintf("tftp://127.0.0.100:%d/%s", port, name)).CombinedOutput()
	return string(out), err
}

// TestServeReload: pifleet serve picks up a good fleet.yaml edit, refuses a broken one
// while it keeps serving, and leaves unchanged boards' live state alone.
func TestServeReload(t *testing.T) {
	needRoot(t)
	ts := startServer(t, boardYAML("alpha", "beta"))
	if got := strings.Join(ts.boardNames(), ","); got != "alpha,beta" {
		t.Fatalf("boards = %s", got)
	}
	// The wired TFTP serves a board's generated cmdline.txt under its serial prefix.
	out, err := tftpGet(t, "127.0.0.2", ts.tftp, "000abc00/cmdline.txt")
	if err != nil {
		t.Fatalf("tftp: %v: %s", err, out)
	}
	for _, want := range []string{"root=/dev/nfs", "nfsroot=127.0.0.100:/boards/alpha,vers=3,tcp,port=", "console=serial0,115200", "quiet"} {
		if !strings.Contains(out, want) {
			t.Errorf("cmdline.txt %q lacks %q", out, want)
		}
	}
	if strings.Contains(out, "PARTUUID") || strings.Contains(out, "firstboot") {
		t.Errorf("cmdline.txt kept SD-card options: %q", out)
	}
	alphaBefore := ts.srv.fleet.cur.Load().boards["alpha"]

	// A good edit: gamma added, beta's cmdline changed, alpha untouched.
	y, _ := os.ReadFile(ts.cfgPath)
	good := strings.Replace(string(y), boardYAML("alpha", "beta"), boardYAML("alpha", "beta", "gamma"), 1)
	good = strings.Replace(good, "ip: 127.0.0.3}", "ip: 127.0.0.3, cmdline: debug}", 1)
	if err := os.WriteFile(ts.cfgPath, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the edit to be picked up", func() bool { return strings.Join(ts.boardNames(), ",") == "alpha,beta,gamma" })
	if !strings.Contains(ts.logs.String(), `msg="board added to the fleet" board=gamma mac=02:00:00:00:00:03`) {
		t.Errorf("the added board's log line does not name its MAC as text:\n%s", ts.logs.String())
	}
	snap := ts.srv.fleet.cur.Load()
	if snap.boards["alpha"] != alphaBefore {
		t.Error("alpha's entry did not change but its live state was rebuilt")
	}
	if out, err := tftpGet(t, "127.0.0.3", ts.tftp, "000abc01/cmdline.txt"); err != nil || !strings.Contains(out, "debug") {
		t.Errorf("beta's new cmdline not served: %v %q", err, out)
	}
	if out, err := tftpGet(t, "127.0.0.4", ts.tftp, "000abc02/config.txt"); err != nil || !strings.Contains(out, "arm_64bit=1") {
		t.Errorf("new board gamma not served: %v %q", err, out)
	}

	// A broken edit is refused with its line, and serving goes on with the last good config.
	if err := os.WriteFile(ts.cfgPath, []byte(good+"  - {name: delta, mac: 'zz:00:00:00:00:09', ip: 127.0.0.9}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the broken edit to be reported", func() bool { return strings.Contains(ts.logs.String(), "fleet.yaml rejected") })
	if !strings.Contains(ts.logs.String(), `mac \"zz:00:00:00:00:09\" is not a MAC address`) {
		t.Errorf("log does not say what is wrong:\n%s", ts.logs.String())
	}
	if got := strings.Join(ts.boardNames(), ","); got != "alpha,beta,gamma" {
		t.Errorf("after a broken edit boards = %s, want the running alpha,beta,gamma", got)
	}
	if out, err := tftpGet(t, "127.0.0.2", ts.tftp, "000abc00/config.txt"); err != nil || !strings.Contains(out, "arm_64bit=1") {
		t.Errorf("serving stopped after a broken edit: %v %q", err, out)
	}
	resp, err := http.Get(ts.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "pifleet_reload_failures_total 1") || !strings.Contains(string(body), "pifleet_boards 3") {
		t.Errorf("metrics:\n%s", body)
	}

	// SIGHUP reloads even when the watcher saw nothing new.
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "SIGHUP to reload", func() bool { return strings.Contains(ts.logs.String(), "SIGHUP: reloading") })

	// A forced reload of a fixed file works through the API too.
	if err := os.WriteFile(ts.cfgPath, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := ts.post("/api/reload", nil)
	if err != nil || r.StatusCode != 200 {
		t.Fatalf("reload: %v %v", err, r)
	}
	r.Body.Close()
}

// TestServeStatusAndReset: the status page lists boards; a reset through the API wipes
// the board's upper dir and diff reads A/C/D from it.
func TestServeStatusAndReset(t *testing.T) {
	needRoot(t)
	ts := startServer(t, boardYAML("alpha", "beta"))
	resp, err := http.Get(ts.http + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "alpha") || !strings.Contains(string(page), "02:00:00:00:00:02") {
		t.Errorf("status page lacks the boards:\n%s", page)
	}
	// Change the board's root through its overlay, as NFS would.
	fs := ts.srv.fleet.cur.Load().boards["alpha"].fs
	f, err := fs.Create("/etc/added.conf")
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("x"))
	f.Close()
	if err := fs.Remove("/etc/os-release"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Chmod("/boot/firmware/config.txt", 0o600); err != nil {
		t.Fatal(err)
	}
	var changes []Change
	ts.getJSON("/api/boards/alpha/diff", &changes)
	got := map[string]string{}
	for _, c := range changes {
		got[c.Path] = c.Kind
	}
	want := map[string]string{"/etc/added.conf": "A", "/etc/os-release": "D", "/boot/firmware/config.txt": "C", "/etc": "C"}
	for p, k := range want {
		if got[p] != k {
			t.Errorf("diff %s = %q, want %q (all: %v)", p, got[p], k, changes)
		}
	}
	r, err := ts.post("/api/boards/alpha/reset", nil)
	if err != nil || r.StatusCode != 200 {
		t.Fatalf("reset: %v %v", err, r.Status)
	}
	r.Body.Close()
	// No changes is an empty list, not null; the reset's log line names the MAC as text.
	if raw := ts.getRaw("/api/boards/alpha/diff"); strings.TrimSpace(raw) != "[]" {
		t.Errorf("after reset the diff is %q, want []", raw)
	}
	if !strings.Contains(ts.logs.String(), `msg="board reset" board=alpha mac=02:00:00:00:00:01 `) {
		t.Errorf("the reset's log line does not name the MAC as text:\n%s", ts.logs.String())
	}
	fs = ts.srv.fleet.cur.Load().boards["alpha"].fs
	if _, err := fs.Stat("/etc/os-release"); err != nil {
		t.Errorf("after reset the image's file is not back: %v", err)
	}
	if _, err := fs.Stat("/etc/added.conf"); err == nil {
		t.Error("after reset the board's own file is still there")
	}
	var ping map[string]string
	if code := ts.getJSON("/api/ping", &ping); code != http.StatusOK || ping["config"] != ts.cfgPath {
		t.Errorf("ping: HTTP %d %v", code, ping)
	}
	var one BoardStatus
	if code := ts.getJSON("/api/boards/alpha", &one); code != http.StatusOK || one.Name != "alpha" || len(one.Events) != 1 || one.Boots != 0 || len(one.Timeline) != 1 || one.Timeline[0].Stage != boot.StageReset {
		t.Errorf("board alpha: HTTP %d %+v (want the reset in its timeline and as a board event, no boot)", code, one)
	}
	if code := ts.getJSON("/api/boards/nope/diff", nil); code != http.StatusNotFound {
		t.Errorf("diff of an unknown board: HTTP %d", code)
	}
}
