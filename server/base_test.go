package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/images"
)

// storeLayer adds a one-file layer to the store.
func storeLayer(t *testing.T, st *images.Store, content string) string {
	t.Helper()
	dir, err := st.TempDir("test")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "boot/firmware"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc-motd"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := st.AddLayer(dir, content)
	if err != nil {
		t.Fatal(err)
	}
	return l.Digest
}

// TestImageBase: fleet.yaml's `base:` holds only when the store image is stacked on that
// base, with the base's current layers; otherwise check reports it at the base: line.
func TestImageBase(t *testing.T) {
	state := t.TempDir()
	st, err := images.OpenStore(State{Dir: state}.Images())
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.CreateImage("bookworm", "", []string{storeLayer(t, st, "root")}, images.ImageMeta{Source: "test"}))
	must(st.CreateImage("trixie", "", []string{storeLayer(t, st, "trixie")}, images.ImageMeta{Source: "test"}))
	must(st.CreateImage("kiosk", "bookworm", []string{storeLayer(t, st, "kiosk")}, images.ImageMeta{Source: "test"}))
	must(st.CreateImage("kiosk2", "kiosk", []string{storeLayer(t, st, "kiosk2")}, images.ImageMeta{Source: "test"}))
	check := func(yaml string) string {
		t.Helper()
		cfg, ps, err := Parse([]byte("server: {state: "+state+"}\n"+yaml), "fleet.yaml")
		if err != nil {
			t.Fatalf("parse: %v %v", err, ps)
		}
		return CheckImages(cfg).Format("fleet.yaml")
	}
	if out := check("images:\n  kiosk: {base: bookworm}\n  kiosk2:\n    base: bookworm\n"); out != "" {
		t.Errorf("kiosk on bookworm, kiosk2 on kiosk on bookworm: %s", out)
	}
	out := check("images:\n  kiosk:\n    base: trixie\nboards:\n  - {name: pi-01, mac: 'dc:a6:32:01:02:03', image: kiosk}\n")
	if !strings.Contains(out, "fleet.yaml:4:11: image kiosk") || strings.Contains(out, "warning") || !strings.Contains(out, "image kiosk is not stacked on trixie: in the state dir it is stacked on bookworm") {
		t.Errorf("kiosk on trixie: %q", out)
	}
	if out := check("images:\n  trixie: {base: bookworm}\n"); !strings.Contains(out, "fleet.yaml:3:18: warning: ") || !strings.Contains(out, "was imported, not made on an image") {
		t.Errorf("trixie on bookworm: %q", out)
	}
	// bookworm imported again (other layers): kiosk was made on the old one
	must(st.Remove("kiosk2", nil))
	must(st.Remove("kiosk", nil))
	bi, _ := st.Info("bookworm")
	must(st.CreateImage("kiosk", "", append(bi.Layers, storeLayer(t, st, "kiosk")), images.ImageMeta{Source: "test"}))
	if out := check("images:\n  kiosk: {base: bookworm}\n"); !strings.Contains(out, "image kiosk is not stacked on bookworm") {
		t.Errorf("kiosk with bookworm's layers but no base: %q", out)
	}
}
