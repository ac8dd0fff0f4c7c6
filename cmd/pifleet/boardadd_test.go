package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pifleet/pifleet/server"
	"github.com/pifleet/pifleet/test/require"
)

// TestBoardAddAndBrokenFleet: `board add` edits fleet.yaml (comments kept, check passes)
// and the running server serves the board; duplicates are refused; with fleet.yaml
// broken on disk, `board ls` and `board diff` still answer from the running server.
func TestBoardAddAndBrokenFleet(t *testing.T) {
	require.Root(t, "pifleet serve keeps board files with their owners (CI runs as root)")
	if code, out, _ := runCLI("board", "add", "--help"); code != 0 || !strings.Contains(out, "Usage: pifleet board add") {
		t.Errorf("board add --help: exit %d %q", code, out)
	}
	if code, _, _ := runCLI("board", "add", "pi-09"); code != 2 {
		t.Errorf("board add without --mac: exit %d, want 2", code)
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "boot", "firmware"), 0o755)
	os.WriteFile(filepath.Join(root, "boot", "firmware", "config.txt"), []byte("arm_64bit=1\n"), 0o644)
	ports := freePorts(t, 4)
	fleet := fmt.Sprintf("# the lab fleet\nserver: {address: 127.0.0.100/8, state: st, dhcp: {mode: off}, ports: {tftp: %d, nfs: %d, mount: %d, http: %d, portmap: 0}}\n"+
		"images: {img: {path: root}}   # one image\ndefaults: {image: img}\n\nboards:\n   # racked\n   - name: pi-01\n     serial: '12345678'   # first\n\n# end\n", ports[0], ports[1], ports[2], ports[3])
	cfg := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(cfg, []byte(fleet), 0o644)
	logs := &bytes.Buffer{}
	var mu sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- server.Run(ctx, server.Options{ConfigPath: cfg,
			Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, logs}, nil)),
			Ready:  func(*server.Server) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v\n%s", err, logs.String())
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)

	code, out, errOut := runCLI("board", "add", "-c", cfg, "pi-02", "--mac", "DC:A6:32:01:02:04", "--serial", "1a2b3c4d", "--group", "rack-b")
	if code != 0 || !strings.Contains(out, "added board pi-02") || !strings.Contains(out, "serves it now") {
		t.Fatalf("board add: exit %d\n%s%s", code, out, errOut)
	}
	after, _ := os.ReadFile(cfg)
	want := strings.Replace(fleet, "# first\n", "# first\n   - name: pi-02\n     mac: dc:a6:32:01:02:04\n     serial: 1a2b3c4d\n     group: rack-b\n", 1)
	if string(after) != want {
		t.Errorf("fleet.yaml after board add:\n%s\nwant:\n%s", after, want)
	}
	if code, out, errOut := runCLI("check", "-c", cfg); code != 0 {
		t.Errorf("check after board add: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := runCLI("board", "add", "-c", cfg, "pi-03", "--serial", "1A2B3C4D"); code != 1 || !strings.Contains(errOut, "serial 1a2b3c4d is already board pi-02's") {
		t.Errorf("duplicate serial: exit %d %q", code, errOut)
	}

	// fleet.yaml broken on disk: read-only commands answer from the running server.
	os.WriteFile(cfg, append(after, "  - {name: pi-0x, mac: 'zz'\n"...), 0o644)
	code, out, errOut = runCLI("board", "ls", "-c", cfg)
	if code != 0 || !strings.Contains(out, "pi-01") || !strings.Contains(out, "pi-02") || !strings.Contains(errOut, "has errors") {
		t.Errorf("board ls with a broken fleet.yaml: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI("board", "diff", "-c", cfg, "pi-01")
	if code != 0 {
		t.Errorf("board diff with a broken fleet.yaml: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, _ := runCLI("board", "add", "-c", cfg, "pi-04", "--mac", "02:00:00:00:00:04"); code != 1 {
		t.Errorf("board add to a broken fleet.yaml: exit %d", code)
	}
	// Without a server there is nothing to answer from: the file's errors.
	stop()
	if code, _, errOut := runCLI("board", "ls", "-c", cfg); code != 1 || !strings.Contains(errOut, "fleet.yaml") {
		t.Errorf("board ls, broken fleet.yaml, no server: exit %d %q", code, errOut)
	}
}
