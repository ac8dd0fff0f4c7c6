package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pifleet/pifleet/server"
	"github.com/pifleet/pifleet/test/require"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(context.Background(), &env{out: &out, err: &errb}, args)
	return code, out.String(), errb.String()
}

// TestHelpEverywhere: every command and subcommand answers --help with its usage, exit 0.
func TestHelpEverywhere(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"serve", "--help"}, {"check", "--help"}, {"board", "--help"}, {"board", "ls", "--help"},
		{"board", "reset", "--help"}, {"board", "diff", "--help"}, {"image", "--help"}, {"image", "ls", "--help"},
		{"image", "import", "--help"}, {"image", "verify", "--help"}, {"image", "rm", "--help"}, {"image", "demo", "-h"}, {"version", "--help"}, {"completion", "--help"},
	} {
		code, out, errOut := runCLI(args...)
		if code != 0 || !strings.Contains(out, "Usage: pifleet") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{}, {"frobnicate"}, {"check", "--nope"}, {"check", "extra-arg"}, {"board"}, {"board", "reset"},
		{"board", "diff"}, {"image", "import", "x.img"}, {"serve", "--log-level", "loud"},
	} {
		code, _, errOut := runCLI(args...)
		if code != 2 || !strings.HasPrefix(errOut, "pifleet: ") && !strings.Contains(errOut, "pifleet: ") {
			t.Errorf("%v: exit %d (want 2), stderr %q", args, code, errOut)
		}
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("server:\n  adress: 1.2.3.4/24\nimages: {i: {}}\nboards:\n  - {name: a, mac: 'zz', image: i}\n"), 0o644)
	code, out, errOut := runCLI("check", "-c", bad)
	if code != 1 {
		t.Errorf("bad config: exit %d, want 1", code)
	}
	for _, want := range []string{bad + `:2:3: unknown key "adress" in server (hint: did you mean "address"?)`, bad + `:5:20: board a: mac "zz" is not a MAC address`} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "2 error(s)") {
		t.Errorf("stderr = %q", errOut)
	}
	// The repository's demo fleet is valid, but serve refuses it until the demo image is
	// built, and so does check, at the image's line.
	demo, err := os.ReadFile(filepath.Join("..", "..", "fleet.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	demoPath := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(demoPath, demo, 0o644)
	line := 1 + strings.Count(string(demo)[:strings.Index(string(demo), "\n  demo: {}")+1], "\n")
	code, out, errOut = runCLI("check", "-c", demoPath)
	if code != 1 || !strings.Contains(out, fmt.Sprintf("%s:%d:3: image demo is not in the state dir", demoPath, line)) || !strings.Contains(errOut, "pifleet serve would refuse it") {
		t.Errorf("demo fleet without the demo image: exit %d\n%s\n%s", code, out, errOut)
	}
	// With an image tree in place of the demo image it passes.
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "boot", "firmware"), 0o755)
	os.WriteFile(demoPath, []byte(strings.Replace(string(demo), "  demo: {}", "  demo: {path: root}", 1)), 0o644)
	code, out, errOut = runCLI("check", "-c", demoPath)
	if code != 0 || !strings.Contains(out, "ok: 2 board(s)") {
		t.Errorf("demo fleet with an image tree: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, _, errOut := runCLI("check", "-c", filepath.Join(dir, "missing.yaml")); code != 1 || !strings.Contains(errOut, "missing.yaml") {
		t.Errorf("missing file: exit %d, %q", code, errOut)
	}
}

// TestBoardOffline: without a running server, board ls/reset/diff work on the state dir.
func TestBoardOffline(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "hosts"), []byte("x"), 0o644)
	cfg := filepath.Join(dir, "fleet.yaml")
	// An HTTP port nothing listens on, so the CLI takes the offline path.
	os.WriteFile(cfg, []byte("server: {state: st, ports: {http: 1}}\nimages: {img: {path: root}}\ndefaults: {image: img}\nboards:\n  - {name: pi-01, serial: '12345678'}\n"), 0o644)
	upper := filepath.Join(dir, "st", "boards", "pi-01", "upper")
	os.MkdirAll(filepath.Join(upper, "etc"), 0o755)
	os.WriteFile(filepath.Join(upper, "etc", "new"), []byte("hello"), 0o644)
	os.WriteFile(filepath.Join(upper, "etc", "hosts"), []byte("changed"), 0o644)

	code, out, errOut := runCLI("board", "ls", "-c", cfg)
	if code != 0 || !strings.Contains(out, "pi-01") || !strings.Contains(out, "12345678") {
		t.Errorf("board ls: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI("board", "diff", "-c", cfg, "pi-01")
	if code != 0 || !strings.Contains(out, "A /etc/new\n") || !strings.Contains(out, "C /etc/hosts\n") {
		t.Errorf("board diff: exit %d\n%s%s", code, out, errOut)
	}
	// --stat shows each file's size (5 bytes), not the 4 KiB block it takes on disk.
	code, out, errOut = runCLI("board", "diff", "--stat", "-c", cfg, "pi-01")
	if code != 0 || !strings.Contains(out, "A        5 B /etc/new\n") || !strings.Contains(out, "3 change(s), 12 B of files, ") {
		t.Errorf("board diff --stat: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI("board", "reset", "pi-01", "-c", cfg)
	if code != 0 || out != "reset pi-01\n" {
		t.Errorf("board reset: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(upper); !os.IsNotExist(err) {
		t.Errorf("upper still there after reset: %v", err)
	}
	code, out, errOut = runCLI("board", "diff", "-c", cfg, "pi-01")
	if code != 0 || out != "no changes: pi-01 runs its image's pristine state\n" {
		t.Errorf("board diff after reset: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// --group resets every board of the group, and only those.
	os.WriteFile(cfg, []byte("server: {state: st, ports: {http: 1}}\nimages: {img: {path: root}}\ndefaults: {image: img}\nboards:\n  - {name: pi-01, serial: '12345678', group: rack-a}\n  - {name: pi-02, serial: '12345679', group: rack-a}\n  - {name: pi-03, serial: '1234567a'}\n"), 0o644)
	for _, b := range []string{"pi-01", "pi-02", "pi-03"} {
		os.MkdirAll(filepath.Join(dir, "st", "boards", b, "upper", "etc"), 0o755)
	}
	code, out, errOut = runCLI("board", "reset", "--group", "rack-a", "-c", cfg)
	if code != 0 || out != "reset pi-01\nreset pi-02\n" {
		t.Errorf("board reset --group: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "st", "boards", "pi-03", "upper")); err != nil {
		t.Errorf("a board outside the group was reset: %v", err)
	}
	if code, _, errOut := runCLI("board", "reset", "-c", cfg, "nope"); code != 1 || !strings.Contains(errOut, "board nope: not in") {
		t.Errorf("reset of an unknown board: exit %d %q", code, errOut)
	}
}

// TestCheckRefusesWhatServeRefuses: fleets that pifleet serve refuses for their images (a
// path that does not exist, a tree without boot/firmware, a name not in the state dir's
// store) fail check too, at the image's line, and serve names the same line.
func TestCheckRefusesWhatServeRefuses(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "nofw", "etc"), 0o755)
	os.MkdirAll(filepath.Join(dir, "good", "boot", "firmware"), 0o755)
	for _, tc := range []struct{ image, want string }{
		{"{path: missing}", "image img: path " + filepath.Join(dir, "missing") + ": no such file or directory"},
		{"{path: nofw}", "has no boot/firmware directory"},
		{"{}", "image img is not in the state dir"},
	} {
		cfg := filepath.Join(dir, "fleet.yaml")
		os.WriteFile(cfg, []byte("server: {state: st, address: 127.0.0.100/8, dhcp: {mode: off}, ports: {http: 1}}\n"+
			"images:\n  other: {path: good}\n  img: "+tc.image+"\nboards:\n  - {name: pi-01, serial: '12345678', image: img}\n"), 0o644)
		at := cfg + ":4:3: " // img's key
		code, out, errOut := runCLI("check", "-c", cfg)
		if code != 1 || !strings.Contains(out, at) || !strings.Contains(out, tc.want) {
			t.Errorf("check with image %s: exit %d (want 1 and %q at %s)\n%s%s", tc.image, code, tc.want, at, out, errOut)
		}
		code, _, errOut = runCLI("serve", "-c", cfg)
		if code != 1 || !strings.Contains(errOut, at) || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "nothing started") {
			t.Errorf("serve with image %s: exit %d (want 1 and %q at %s)\n%s", tc.image, code, tc.want, at, errOut)
		}
	}
	// An image no board uses is only a warning, for check and serve alike.
	cfg := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(cfg, []byte("server: {state: st}\nimages:\n  img: {path: good}\n  spare: {path: missing}\nboards:\n  - {name: pi-01, serial: '12345678', image: img}\n"), 0o644)
	if code, out, errOut := runCLI("check", "-c", cfg); code != 0 || !strings.Contains(out, cfg+":4:3: warning: image spare: path") {
		t.Errorf("check with an unused missing image: exit %d\n%s%s", code, out, errOut)
	}
}

// TestBoardCommandsFollowTheLock: while pifleet serve holds the state dir, board commands
// go through its API at the address it recorded, even after fleet.yaml's HTTP port
// changed (before, the CLI then fell back to offline and wiped a live board), and offline
// image operations refuse.
func TestBoardCommandsFollowTheLock(t *testing.T) {
	require.Root(t, "pifleet serve keeps board files with their owners (CI runs as root)")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "boot", "firmware"), 0o755)
	os.WriteFile(filepath.Join(root, "boot", "firmware", "config.txt"), []byte("arm_64bit=1\n"), 0o644)
	ports := freePorts(t, 5)
	fleet := func(http int) string {
		return fmt.Sprintf("server: {address: 127.0.0.100/8, state: st, dhcp: {mode: off}, ports: {tftp: %d, nfs: %d, mount: %d, http: %d, portmap: 0}}\n"+
			"images: {img: {path: root}}\ndefaults: {image: img}\nboards:\n  - {name: pi-01, serial: '12345678'}\n", ports[0], ports[1], ports[2], http)
	}
	cfg := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(cfg, []byte(fleet(ports[3])), 0o644)
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
		t.Cleanup(func() { cancel(); <-done })
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v\n%s", err, logs.String())
	}
	// The admin changes the HTTP port in fleet.yaml; the server keeps its own.
	os.WriteFile(cfg, []byte(fleet(ports[4])), 0o644)
	upper := filepath.Join(dir, "st", "boards", "pi-01", "upper")
	os.MkdirAll(upper, 0o755)
	os.WriteFile(filepath.Join(upper, "mine"), []byte("x"), 0o644)

	code, out, errOut := runCLI("board", "ls", "-c", cfg)
	if code != 0 || !strings.Contains(out, "pi-01") || strings.Contains(errOut, "no pifleet server running") {
		t.Errorf("board ls: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI("board", "reset", "-c", cfg, "pi-01")
	if code != 0 || out != "reset pi-01\n" {
		t.Errorf("board reset: exit %d\n%s%s", code, out, errOut)
	}
	mu.Lock()
	served := strings.Contains(logs.String(), "board reset")
	mu.Unlock()
	if !served {
		t.Errorf("the reset did not go through the server:\n%s", logs.String())
	}
	want := fmt.Sprintf("pifleet serve (pid %d) holds the state dir", os.Getpid())
	for _, args := range [][]string{{"image", "rm", "-c", cfg, "img"}, {"image", "import", "-c", cfg, "--replace", "--name", "img", root}} {
		if code, _, errOut := runCLI(args...); code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("%v under a live server: exit %d, %q (want %q)", args, code, errOut, want)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// freePorts returns n distinct ports free for TCP and UDP on 127.0.0.100, where the test
// servers bind. They are picked below the kernel's ephemeral range (32768-60999 by
// default), so a port another test's ":0" socket gets can never take one between this
// check and the server's bind.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
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
		held = append(held, l)
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.100:%d", p))
		if err != nil {
			continue
		}
		held = append(held, u)
		out = append(out, p)
	}
	return out
}
