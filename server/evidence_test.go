package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"

	"github.com/pifleet/pifleet/test/netns"
	"github.com/pifleet/pifleet/test/require"
)

// TestAddressNeedsEvidence (issue 13.1): in a network namespace pair, a board without a
// fixed IP. A host that is not the board (its own MAC) reads the board's files under the
// board's serial: refused, and it cannot mount the board's root, not even with an
// address file an older pifleet wrote for it. The real board (its MAC in the neighbour
// table) boots and mounts, and keeps its root across a server restart.
func TestAddressNeedsEvidence(t *testing.T) {
	needRoot(t)
	require.Tool(t, "curl", "curl")
	p := netns.NewPair(t, "pfev", netip.MustParsePrefix("198.18.0.1/15"))
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	// What a version before evidence-only binding left behind after .77 typed the serial.
	if err := os.MkdirAll(filepath.Join(state, "boards", "pi4"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "boards", "pi4", "address"), []byte("198.18.0.77\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "fleet.yaml")
	y := fmt.Sprintf(`server:
  address: 198.18.0.1/15
  interface: %s
  state: %s
  dhcp: {mode: off}
  ports: {tftp: 69, nfs: 2049, mount: 20048, http: 8080}
images:
  img: {path: %s}
defaults: {image: img}
boards:
  - {name: pi4, mac: '02:00:00:00:00:04', serial: '000abd00'}
`, p.ServerIf, state, testImage(t))
	if err := os.WriteFile(cfg, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &netns.LogBuffer{}
	start := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		ready, done := make(chan struct{}), make(chan error, 1)
		go func() {
			done <- netns.Do(p.Server, func() error {
				return Run(ctx, Options{ConfigPath: cfg, Logger: slog.New(slog.NewTextHandler(logs, nil)),
					Ready: func(*Server) { close(ready) }})
			})
		}()
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("server did not start: %v\n%s", err, logs)
		case <-time.After(30 * time.Second):
			t.Fatalf("server did not start in 30 s\n%s", logs)
		}
		return func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("server: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("server did not stop in 20 s")
			}
		}
	}
	stop := start()
	defer func() { stop() }()

	tftpRead := func(name string) error {
		out, err := exec.Command("nsenter", "--net=/run/netns/"+p.Client, "curl", "-sS", "--max-time", "20",
			"-o", "/dev/null", "tftp://198.18.0.1/"+name).CombinedOutput()
		if err != nil {
			return fmt.Errorf("curl %s: %v: %s", name, err, out)
		}
		return nil
	}
	mount := func() error {
		return netns.Do(p.Client, func() error {
			var mc *rpc.Client
			var err error
			for range 5 { // go-nfs-client binds a random reserved port; a clash is not the server's
				if mc, err = nfsc.DialServiceAtPort("198.18.0.1", 20048); err == nil {
					break
				}
			}
			if err != nil {
				return fmt.Errorf("dial MOUNT: %w", err)
			}
			defer mc.Close()
			auth := rpc.AuthUnix{Machinename: "pi4", GidLen: 1}
			_, err = (&nfsc.Mount{Client: mc}).Mount("/boards/pi4", auth.Auth())
			return err
		})
	}

	// The stranger at .77: its own MAC, the board's serial typed into the path.
	netns.Run(t, "ip", "-n", p.Client, "addr", "add", "198.18.0.77/15", "dev", p.ClientIf)
	if err := tftpRead("000abd00/config.txt"); err == nil {
		t.Error("a host that is not the board read the board's config.txt under its serial")
	}
	if err := mount(); err == nil {
		t.Fatal("a host that typed the board's serial mounted the board's root")
	}
	// The TFTP refusal is logged just after its ERROR leaves: the client can be done
	// first. Wait (bounded) for the line.
	for i := 0; i < 200 && !strings.Contains(logs.String(), "not bound to the board"); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "not bound to the board") {
		t.Errorf("the refusal is not logged:\n%s", logs)
	}

	// The real board: its MAC, the address its router gave it.
	netns.Run(t, "ip", "-n", p.Client, "addr", "flush", "dev", p.ClientIf)
	p.SetClientMAC(t, "02:00:00:00:00:04")
	netns.Run(t, "ip", "-n", p.Client, "addr", "add", "198.18.0.104/15", "dev", p.ClientIf)
	for _, name := range []string{"000abd00/start4.elf", "000abd00/config.txt", "cmdline.txt"} {
		if err := tftpRead(name); err != nil {
			t.Fatalf("the board's own read: %v\n%s", err, logs)
		}
	}
	if err := mount(); err != nil {
		t.Fatalf("the board cannot mount its root: %v\n%s", err, logs)
	}
	if got, _ := os.ReadFile(filepath.Join(state, "boards", "pi4", "address")); strings.TrimSpace(string(got)) != "198.18.0.104" {
		t.Errorf("remembered address %q, want the board's 198.18.0.104", got)
	}
	// The board leaves and another host takes its address (its gratuitous ARP puts its own
	// MAC in the server's neighbour table): the binding goes with the evidence.
	p.SetClientMAC(t, "02:00:00:00:00:99")
	netns.Run(t, "ip", "-n", p.Server, "neigh", "replace", "198.18.0.104", "lladdr", "02:00:00:00:00:99", "dev", p.ServerIf, "nud", "reachable")
	refused := false
	for range 50 { // the bound address is looked up again at most every recheckRestored
		if err := mount(); err != nil {
			refused = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !refused {
		t.Fatal("a host with another MAC that took the board's address kept mounting the board's root")
	}
	// The board comes back: its next boot binds it again.
	p.SetClientMAC(t, "02:00:00:00:00:04")
	netns.Run(t, "ip", "-n", p.Server, "neigh", "replace", "198.18.0.104", "lladdr", "02:00:00:00:00:04", "dev", p.ServerIf, "nud", "reachable")
	if err := tftpRead("000abd00/config.txt"); err != nil {
		t.Fatalf("the returning board's read: %v\n%s", err, logs)
	}
	if err := mount(); err != nil {
		t.Fatalf("the returning board cannot mount its root: %v\n%s", err, logs)
	}
	// A restart: the remembered address is confirmed by the neighbour table again.
	stop()
	stop = start()
	if err := mount(); err != nil {
		t.Fatalf("after a restart the board lost its root: %v\n%s", err, logs)
	}
}
