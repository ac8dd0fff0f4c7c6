package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/server"
	"github.com/pifleet/pifleet/test/require"
)

// TestBoardCommit: `pifleet board commit` offline (no server holds the state dir) and
// through a running server: the new image is the board's image plus one layer with the
// board's change and without its excluded paths; usage errors exit 2.
func TestBoardCommit(t *testing.T) {
	require.Root(t, "board files keep their owners and whiteouts are device nodes (CI runs as root)")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for rel, data := range map[string]string{"boot/firmware/config.txt": "arm_64bit=1\n", "etc/hostname": "image\n", "etc/os-release": "ID=test\n"} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(rel)), 0o755)
		os.WriteFile(filepath.Join(root, rel), []byte(data), 0o644)
	}
	state := filepath.Join(dir, "st")
	store, err := images.OpenStore(filepath.Join(state, "images"))
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := store.TempDir("test")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", root+"/.", tmp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	l, err := store.AddLayer(tmp, "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.CreateImage("img", "", []string{l.Digest}, images.ImageMeta{}); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 4)
	cfg := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("server: {address: 127.0.0.100/8, state: st, dhcp: {mode: off}, ports: {tftp: %d, nfs: %d, mount: %d, http: %d, portmap: 0},"+
		" commit: {exclude: [/srv/cache]}}\nimages: {img: {}}\ndefaults: {image: img}\nboards:\n  - {name: pi-01, serial: '12345678'}\n  - {name: pi-02, serial: '12345679'}\n", ports[0], ports[1], ports[2], ports[3])), 0o644)
	upper := filepath.Join(state, "boards", "pi-01", "upper")
	for rel, data := range map[string]string{"etc/app.conf": "kiosk\n", "etc/hostname": "pi-01\n", "srv/cache/x": "c", "var/log/syslog": "l"} {
		os.MkdirAll(filepath.Join(upper, filepath.Dir(rel)), 0o755)
		os.WriteFile(filepath.Join(upper, rel), []byte(data), 0o644)
	}

	for _, args := range [][]string{{"board", "commit", "-c", cfg, "pi-01"}, {"board", "commit", "-c", cfg, "--as", "v2"}, {"board", "commit", "-c", cfg, "pi-01", "--as", "bad/name"}} {
		if code, _, errOut := runCLI(args...); code != 2 {
			t.Errorf("%v: exit %d (want 2) %s", args, code, errOut)
		}
	}
	if code, out, _ := runCLI("board", "commit", "--help"); code != 0 || !strings.Contains(out, "--as") {
		t.Errorf("board commit --help: exit %d\n%s", code, out)
	}
	code, out, errOut := runCLI("board", "commit", "pi-01", "--as", "v2", "-c", cfg)
	if code != 0 || !strings.Contains(out, "committed board pi-01 as image v2 (img + 1 layer)\n") || !strings.Contains(out, "excluded") {
		t.Fatalf("board commit offline: exit %d\n%s%s", code, out, errOut)
	}
	checkCommitted(t, store, "v2")
	if code, _, errOut := runCLI("board", "commit", "pi-01", "--as", "v2", "-c", cfg); code != 1 || !strings.Contains(errOut, "exists") {
		t.Errorf("commit over an existing image: exit %d %s", code, errOut)
	}

	if code, _, errOut := runCLI("board", "commit", "pi-02", "--as", "v4", "-c", cfg); code != 1 || !strings.Contains(errOut, "nothing to commit") {
		t.Errorf("commit of a board that never booted: exit %d %s", code, errOut)
	}

	// through a running server
	var mu sync.Mutex
	logs := &bytes.Buffer{}
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
		t.Cleanup(func() { cancel(); <-done })
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v\n%s", err, logs.String())
	}
	code, out, errOut = runCLI("board", "commit", "-c", cfg, "pi-01", "--as", "v3")
	if code != 0 || !strings.Contains(out, "as image v3") {
		t.Fatalf("board commit live: exit %d\n%s%s", code, out, errOut)
	}
	mu.Lock()
	served := strings.Contains(logs.String(), "board committed")
	mu.Unlock()
	if !served {
		t.Errorf("the commit did not go through the server:\n%s", logs.String())
	}
	checkCommitted(t, store, "v3")
}

// checkCommitted checks image name = img + a layer with /etc/app.conf and without the
// excluded paths, with the board's /var/log dir but not its files.
func checkCommitted(t *testing.T, store *images.Store, name string) {
	t.Helper()
	layers, err := store.Layers(name)
	if err != nil || len(layers) != 2 {
		t.Fatalf("image %s: layers %v %v", name, layers, err)
	}
	if b, err := os.ReadFile(filepath.Join(layers[0], "etc/app.conf")); err != nil || string(b) != "kiosk\n" {
		t.Errorf("%s: etc/app.conf %q %v", name, b, err)
	}
	for _, p := range []string{"etc/hostname", "srv/cache", "var/log/syslog"} {
		if _, err := os.Lstat(filepath.Join(layers[0], p)); err == nil {
			t.Errorf("%s: excluded %s is in the layer", name, p)
		}
	}
	if fi, err := os.Lstat(filepath.Join(layers[0], "var/log")); err != nil || !fi.IsDir() {
		t.Errorf("%s: the board's new /var/log is not in the layer as a dir (its files left out): %v", name, err)
	}
}
