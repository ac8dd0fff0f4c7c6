package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
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

// TestJournalLogs: when stderr is the journal, log lines have no time of their own and
// start with the syslog priority; elsewhere they keep the time.
func TestJournalLogs(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(logHandler(&b, slog.LevelDebug, false, true)).With("board", "pi-01")
	log.Info("board reset", "mac", "dc:a6:32:01:02:03")
	log.WithGroup("nfs").Warn("slow", "ms", 12)
	log.Debug("detail")
	want := "<6>level=INFO msg=\"board reset\" board=pi-01 mac=dc:a6:32:01:02:03\n" +
		"<4>level=WARN msg=slow board=pi-01 nfs.ms=12\n" +
		"<7>level=DEBUG msg=detail board=pi-01\n"
	if b.String() != want {
		t.Errorf("journal lines:\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	slog.New(logHandler(&b, slog.LevelInfo, false, false)).Info("x")
	if !strings.HasPrefix(b.String(), "time=") {
		t.Errorf("terminal line %q has no time", b.String())
	}

	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if !journalStream(fmt.Sprintf("%d:%d", st.Dev, st.Ino), f) {
		t.Error("JOURNAL_STREAM naming the file: not recognised")
	}
	for _, env := range []string{"", "1:2", "junk", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1)} {
		if journalStream(env, f) {
			t.Errorf("JOURNAL_STREAM=%q taken for this file", env)
		}
	}
}
