package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/server"
	"github.com/pifleet/pifleet/test/require"
)

// helperServeEnv makes TestHelperServe run `pifleet serve -c $value` in this process,
// so that a test can run the server as a real process and kill it.
const helperServeEnv = "PIFLEET_TEST_SERVE"

// TestHelperServe is not a test: it is the server process of TestHistorySurvivesKill.
func TestHelperServe(t *testing.T) {
	cfg := os.Getenv(helperServeEnv)
	if cfg == "" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, &env{out: os.Stdout, err: os.Stderr}, []string{"serve", "-c", cfg}))
}

// TestHistorySurvivesKill: a board's boot, written by the periodic flush, is still in the
// API after the server process is killed (SIGKILL: no shutdown flush) and started again.
func TestHistorySurvivesKill(t *testing.T) {
	require.Root(t, "pifleet serve keeps board files with their owners (CI runs as root)")
	require.Tool(t, "curl", "curl")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "boot", "firmware"), 0o755)
	os.WriteFile(filepath.Join(root, "boot", "firmware", "config.txt"), []byte("arm_64bit=1\n"), 0o644)
	ports := freePorts(t, 4)
	cfg := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("server: {address: 127.0.0.100/8, state: st, dhcp: {mode: off}, ports: {tftp: %d, nfs: %d, mount: %d, http: %d, portmap: 0}}\n"+
		"images: {img: {path: root}}\ndefaults: {image: img}\nboards:\n  - {name: pi-01, serial: '12345678', ip: 127.0.0.5}\n", ports[0], ports[1], ports[2], ports[3])), 0o644)
	state := filepath.Join(dir, "st")

	start := func() (*exec.Cmd, string) {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperServe$")
		cmd.Env = append(os.Environ(), helperServeEnv+"="+cfg)
		logf, err := os.Create(filepath.Join(dir, "serve.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		for range 300 { // bounded: 30 s for the server to answer
			if si, err := server.ReadServeInfo(state); err == nil && si.PID == cmd.Process.Pid && len(si.HTTP) > 0 {
				base := "http://" + dialable(si.HTTP[0])
				if resp, err := http.Get(base + "/api/ping"); err == nil {
					resp.Body.Close()
					return cmd, base
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		log, _ := os.ReadFile(filepath.Join(dir, "serve.log"))
		t.Fatalf("server did not start:\n%s", log)
		return nil, ""
	}
	history := func(base string) boot.History {
		t.Helper()
		var h boot.History
		resp, err := http.Get(base + "/api/boards/pi-01/history")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		json.NewDecoder(resp.Body).Decode(&h)
		return h
	}

	cmd, base := start()
	out, err := exec.Command("curl", "-sS", "--max-time", "20", "--interface", "127.0.0.5", fmt.Sprintf("tftp://127.0.0.100:%d/12345678/config.txt", ports[0])).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "arm_64bit=1") {
		t.Fatalf("tftp: %v %s", err, out)
	}
	// The read is recorded when the server sees the last ACK, which may be just after
	// curl returns: poll (bounded).
	for i := 0; ; i++ {
		h := history(base)
		if len(h.Boots) == 1 && len(h.Boots[0].Events) == 1 {
			break
		}
		if i == 100 {
			t.Fatalf("history before the kill: %+v", h)
		}
		time.Sleep(100 * time.Millisecond)
	}
	file := filepath.Join(state, "history", "boards", "pi-01.jsonl")
	for i := 0; ; i++ { // bounded: the periodic flush comes within seconds
		if data, err := os.ReadFile(file); err == nil && strings.Contains(string(data), "12345678/config.txt") {
			break
		}
		if i == 300 {
			t.Fatalf("%s not written within 30 s", file)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	cmd, base = start()
	h := history(base)
	if len(h.Boots) != 1 || len(h.Boots[0].Events) != 1 || h.Boots[0].Events[0].File != "12345678/config.txt" {
		t.Errorf("history after a kill and a restart: %+v", h)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
}
