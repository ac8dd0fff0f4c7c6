package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestHelpConfigFlagOnce: --help shows -c and --config as one flag, not two.
func TestHelpConfigFlagOnce(t *testing.T) {
	code, out, _ := runCLI("check", "--help")
	if code != 0 || !strings.Contains(out, "  -c, --config FILE\n") || strings.Count(out, "config") != 1 {
		t.Errorf("check --help: exit %d\n%s", code, out)
	}
	code, out, _ = runCLI("serve", "--help")
	if code != 0 || !strings.Contains(out, "      --log-level string\n") || !strings.Contains(out, "      --log-json\n") {
		t.Errorf("serve --help: exit %d\n%s", code, out)
	}
	// Every spelling still works: the file named is the one read.
	missing := filepath.Join(t.TempDir(), "other-fleet.yaml")
	for _, f := range []string{"-c", "--config", "-config"} {
		if code, _, errOut := runCLI("check", f, missing); code != 1 || !strings.Contains(errOut, missing) {
			t.Errorf("check %s %s: exit %d %s", f, missing, code, errOut)
		}
	}
}

// TestInterrupted: a command stopped by Ctrl-C says so and exits 130, not "context canceled".
func TestInterrupted(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "hosts"), []byte("x"), 0o644)
	cfg := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(cfg, []byte("server: {state: st, ports: {http: 1}}\n"), 0o644)
	for _, tc := range []struct {
		sig  syscall.Signal
		code int
		msg  string
	}{{syscall.SIGINT, 130, "pifleet: interrupted by SIGINT: stopped\n"}, {syscall.SIGTERM, 143, "pifleet: interrupted by SIGTERM: stopped\n"}} {
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(interrupted{tc.sig})
		var out, errb bytes.Buffer
		code := run(ctx, &env{out: &out, err: &errb}, []string{"image", "import", "-c", cfg, "--name", "x", src})
		if code != tc.code || errb.String() != tc.msg {
			t.Errorf("%v: exit %d, stderr %q; want %d, %q", tc.sig, code, errb.String(), tc.code, tc.msg)
		}
	}
}

// TestImportExistsSaysWhatToRun: importing over an image names the commands that replace
// or remove it.
func TestImportExistsSaysWhatToRun(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "hosts"), []byte("x"), 0o644)
	cfg := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(cfg, []byte("server: {state: st, ports: {http: 1}}\n"), 0o644)
	if code, _, errOut := runCLI("image", "import", "-c", cfg, "--no-prepare", "--name", "base", src); code != 0 {
		t.Fatalf("first import: exit %d %s", code, errOut)
	}
	code, _, errOut := runCLI("image", "import", "-c", cfg, "--no-prepare", "--name", "base", src)
	if code != 1 || !strings.Contains(errOut, "image base already exists") ||
		!strings.Contains(errOut, "pifleet image import --replace --name base "+src) || !strings.Contains(errOut, "pifleet image rm base") {
		t.Errorf("second import: exit %d, stderr %q", code, errOut)
	}
}
