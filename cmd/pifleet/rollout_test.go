package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/server"
)

// TestBoardRolloutOffline: with no server, board ls shows the image a board ran last and
// fleet.yaml's as pending; board diff --conflicts lists the board's changes that the new
// image changed too, and says when there is no switch to compare.
func TestBoardRolloutOffline(t *testing.T) {
	dir := t.TempDir()
	for img, files := range map[string]map[string]string{
		"v1": {"etc/app.conf": "v1", "etc/keep": "k"},
		"v2": {"etc/app.conf": "v2", "etc/keep": "k"},
	} {
		for p, c := range files {
			full := filepath.Join(dir, img, p)
			os.MkdirAll(filepath.Dir(full), 0o755)
			os.WriteFile(full, []byte(c), 0o644)
		}
		os.MkdirAll(filepath.Join(dir, img, "boot", "firmware"), 0o755)
	}
	cfg := filepath.Join(dir, "fleet.yaml")
	fleet := func(image string) {
		os.WriteFile(cfg, []byte("server: {state: st, ports: {http: 1}}\nimages: {v1: {path: v1}, v2: {path: v2}}\n"+
			"defaults: {image: v1}\ngroups:\n  lab: {image: "+image+"}\nboards:\n  - {name: pi-01, serial: '12345678', group: lab}\n"), 0o644)
	}
	fleet("v1")
	board := filepath.Join(dir, "st", "boards", "pi-01")
	os.MkdirAll(filepath.Join(board, "upper", "etc"), 0o755)
	os.WriteFile(filepath.Join(board, "upper", "etc", "app.conf"), []byte("mine"), 0o644)
	os.WriteFile(filepath.Join(board, "upper", "etc", "keep"), []byte("mine"), 0o644)
	os.WriteFile(filepath.Join(board, "image.json"), fmt.Appendf(nil, `{"image": "v1", "layers": [%q]}`, filepath.Join(dir, "v1")), 0o644)

	code, out, errOut := runCLI("board", "diff", "--conflicts", "-c", cfg, "pi-01")
	if code != 1 || !strings.Contains(errOut, "no image switch to compare") {
		t.Errorf("diff --conflicts without a switch: exit %d\n%s%s", code, out, errOut)
	}
	fleet("v2")
	code, out, errOut = runCLI("board", "ls", "-c", cfg)
	if code != 0 || !strings.Contains(out, "v1 (pending image v2)") {
		t.Errorf("board ls: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI("board", "diff", "--conflicts", "-c", cfg, "pi-01")
	want := "pi-01 runs image v1, pending image v2; its changes shadow the image's at 1 path(s):\nC /etc/app.conf\n"
	if code != 0 || out != want {
		t.Errorf("diff --conflicts: exit %d\n%q\nwant %q\n%s", code, out, want, errOut)
	}
	// The plain diff is against the image the board runs.
	if code, out, _ := runCLI("board", "diff", "-c", cfg, "pi-01"); code != 0 || out != "C /etc\nC /etc/app.conf\nC /etc/keep\n" {
		t.Errorf("diff: exit %d\n%s", code, out)
	}
}

// TestImageRmRefusesARunningImage: an image a board still runs (pending a switch away
// from it) counts as used, although fleet.yaml no longer names it for any board.
func TestImageRmRefusesARunningImage(t *testing.T) {
	dir := t.TempDir()
	st := filepath.Join(dir, "st")
	cfg := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(cfg, []byte("server: {state: st, ports: {http: 1}}\nimages: {v2: {}}\ndefaults: {image: v2}\nboards:\n  - {name: pi-01, serial: '12345678'}\n"), 0o644)
	os.MkdirAll(filepath.Join(st, "boards", "pi-01"), 0o755)
	os.WriteFile(filepath.Join(st, "boards", "pi-01", "image.json"), []byte(`{"image": "v1", "layers": ["/nonexistent"]}`), 0o644)
	c, _, err := server.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := usedBy(c, "v1"); len(got) != 1 || got[0] != "pi-01" {
		t.Errorf("users of v1 = %q, want pi-01 (it still runs it)", got)
	}
	if got := usedBy(c, "v3"); len(got) != 0 {
		t.Errorf("users of v3 = %q", got)
	}
}
