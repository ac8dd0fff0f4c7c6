package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAPIGuard: a state-changing call needs the API token and must not come from a web
// page of another origin; reads need neither.
func TestAPIGuard(t *testing.T) {
	needRoot(t)
	ts := startServer(t, boardYAML("alpha"))
	fi, err := os.Stat(filepath.Join(ts.srv.state.Dir, "api-token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("api-token: %v, mode %v (want 0600)", err, fi.Mode())
	}
	code := func(req *http.Request) int {
		t.Helper()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, path := range []string{"/api/reload", "/api/boards/alpha/reset"} {
		req, _ := http.NewRequest("POST", ts.http+path, nil)
		if c := code(req); c != http.StatusForbidden {
			t.Errorf("POST %s without a token: HTTP %d, want 403", path, c)
		}
		req, _ = http.NewRequest("POST", ts.http+path, nil)
		req.Header.Set("Authorization", "Bearer 0000")
		if c := code(req); c != http.StatusForbidden {
			t.Errorf("POST %s with a wrong token: HTTP %d, want 403", path, c)
		}
		for _, h := range []map[string]string{
			{"Origin": "http://evil.example"},
			{"Origin": "null"},
			{"Sec-Fetch-Site": "cross-site"},
			{"Sec-Fetch-Site": "same-site"},
		} {
			resp, err := ts.post(path, h)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("POST %s with the token but %v: HTTP %d, want 403", path, h, resp.StatusCode)
			}
		}
	}
	// The status page's own origin, and the CLI (no Origin), are fine.
	resp, err := ts.post("/api/boards/alpha/reset", map[string]string{"Origin": ts.http, "Sec-Fetch-Site": "same-origin"})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("same-origin POST with the token: HTTP %d", resp.StatusCode)
	}
	if c := ts.getJSON("/api/boards", nil); c != http.StatusOK {
		t.Errorf("GET /api/boards: HTTP %d", c)
	}
}

// TestOneServePerStateDir: a second serve on the same state dir fails at once and says
// who holds it; offline operations refuse while it runs, even when fleet.yaml now names
// another HTTP port than the one the server listens on; after it stops they work.
func TestOneServePerStateDir(t *testing.T) {
	needRoot(t)
	ts := startServer(t, boardYAML("alpha"))
	si, err := ReadServeInfo(ts.srv.state.Dir)
	if err != nil || si.PID != os.Getpid() || len(si.HTTP) == 0 || si.HTTP[0] != ts.srv.HTTPAddr().String() {
		t.Fatalf("serve.json: %+v, %v", si, err)
	}
	// fleet.yaml edited: other ports everywhere, the same state dir.
	y, _ := os.ReadFile(ts.cfgPath)
	ports := freePorts(t, 4)
	other := filepath.Join(t.TempDir(), "fleet.yaml")
	edited := strings.Replace(string(y), fmt.Sprintf("ports: {tftp: %d, nfs: %d, mount: %d, http: %d,", ts.tftp,
		ts.srv.cfg.Server.Ports.NFS, ts.srv.cfg.Server.Ports.Mount, ts.srv.cfg.Server.Ports.HTTP),
		fmt.Sprintf("ports: {tftp: %d, nfs: %d, mount: %d, http: %d,", ports[0], ports[1], ports[2], ports[3]), 1)
	if edited == string(y) {
		t.Fatal("could not edit the ports")
	}
	os.WriteFile(other, []byte(edited), 0o644)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = Run(ctx, Options{ConfigPath: other, Logger: discardLogger(), Ready: func(*Server) { t.Error("a second serve started") }})
	var held *HeldError
	want := fmt.Sprintf("pifleet serve (pid %d) holds the state dir %s", os.Getpid(), ts.srv.state.Dir)
	if !errors.As(err, &held) || !strings.Contains(err.Error(), want) {
		t.Errorf("second serve: %v, want %q", err, want)
	}

	cfg, _, err := Load(other)
	if err != nil {
		t.Fatal(err)
	}
	upper := ts.srv.state.Upper("alpha")
	must(t, os.MkdirAll(upper, 0o755))
	must(t, os.WriteFile(filepath.Join(upper, "mine"), []byte("x"), 0o644))
	err = OfflineReset(cfg, "alpha")
	if !errors.As(err, &held) || !strings.Contains(err.Error(), want) {
		t.Errorf("offline reset under a live server: %v, want %q", err, want)
	}
	if _, err := os.Stat(filepath.Join(upper, "mine")); err != nil {
		t.Errorf("the offline reset wiped a live board: %v", err)
	}
	if h, err := StateHolder(cfg.Server.State); err != nil || h == nil || h.Serve == nil || h.PID != os.Getpid() {
		t.Errorf("StateHolder = %+v, %v", h, err)
	}

	ts.stop()
	if _, err := os.Stat(serveInfoPath(ts.srv.state.Dir)); !os.IsNotExist(err) {
		t.Errorf("serve.json left behind after a clean stop: %v", err)
	}
	if h, err := StateHolder(cfg.Server.State); err != nil || h != nil {
		t.Errorf("after stop StateHolder = %+v, %v", h, err)
	}
	if err := OfflineReset(cfg, "alpha"); err != nil {
		t.Errorf("offline reset with no server: %v", err)
	}
	if _, err := os.Stat(filepath.Join(upper, "mine")); !os.IsNotExist(err) {
		t.Errorf("offline reset left the board's file: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestReloadRunsImageChecks: a reload that points a board at an image serve cannot open
// is refused with the image's line, as check reports it, and the running config stays.
func TestReloadRunsImageChecks(t *testing.T) {
	needRoot(t)
	ts := startServer(t, boardYAML("alpha"))
	y, _ := os.ReadFile(ts.cfgPath)
	bad := strings.Replace(string(y), "images:\n  img: {path: ", "images:\n  gone: {path: /nonexistent/root}\n  img: {path: ", 1)
	bad = strings.Replace(bad, "defaults: {image: img", "defaults: {image: gone", 1)
	must(t, os.WriteFile(ts.cfgPath, []byte(bad), 0o644))
	cfg, _, err := Load(ts.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ps := CheckImages(cfg)
	if ps.Errors() != 1 || ps[0].Line != 7 {
		t.Fatalf("check: %v, want one error at line 7", ps)
	}
	resp, err := ts.post("/api/reload", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), ":7:3: image gone: path /nonexistent/root") {
		t.Errorf("reload: HTTP %d %s", resp.StatusCode, body)
	}
	if !strings.Contains(ts.logs.String(), "line=7 col=3") {
		t.Errorf("the rejection is not logged with the image's line:\n%s", ts.logs.String())
	}
	if b, ok := ts.srv.Board("alpha"); !ok || b.Image != "img" {
		t.Errorf("the running config changed: %+v", b)
	}
}
