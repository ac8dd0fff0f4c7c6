package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/server"
	"github.com/pifleet/pifleet/test/require"
)

// TestImageLayersCLI: image ls shows the tree of bases and layers with sizes and users,
// image rm refuses while a board or another image uses an image and takes the layers only
// it used, image verify covers the base's layers, and a layout 1 state dir is upgraded by
// the first image command.
func TestImageLayersCLI(t *testing.T) {
	require.Root(t, "imported trees keep their owners (CI runs as root)")
	dir := t.TempDir()
	src := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "os-release"), []byte(strings.Repeat("ID=test\n", 1000)), 0o644)
	state := filepath.Join(dir, "st")
	// the state dir as pifleet before layers left it
	if err := images.ImportLayout1(context.Background(), server.State{Dir: state}.Images(), src, "bookworm", false); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "fleet.yaml")
	fleet := func(boards string) {
		os.WriteFile(cfg, []byte("server: {state: st}\nimages:\n  bookworm: {}\n  kiosk: {base: bookworm}\n"+boards), 0o644)
	}
	fleet("defaults: {image: kiosk}\nboards:\n  - {name: pi-01, serial: '12345678'}\n")
	code, out, errOut := runCLI("image", "ls", "-c", cfg)
	if code != 0 || !strings.Contains(out, "bookworm") || !strings.Contains(errOut, "upgrading the state dir") {
		t.Fatalf("image ls on a layout 1 state dir: exit %d\n%s%s", code, out, errOut)
	}
	if b, _ := os.ReadFile(filepath.Join(state, "layout")); string(b) != "pifleet state layout 2\n" {
		t.Errorf("layout file %q", b)
	}

	// kiosk: a layer on bookworm
	store, err := images.OpenStore(server.State{Dir: state}.Images())
	if err != nil {
		t.Fatal(err)
	}
	ld, _ := store.TempDir("kiosk")
	os.MkdirAll(filepath.Join(ld, "etc"), 0o755)
	os.WriteFile(filepath.Join(ld, "etc", "kiosk"), []byte("kiosk\n"), 0o644)
	l, err := store.AddLayer(ld, "kiosk browser")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.CreateImage("kiosk", "bookworm", []string{l.Digest}, images.ImageMeta{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	bi, _ := store.Info("bookworm")
	code, out, errOut = runCLI("image", "ls", "-c", cfg)
	if code != 0 {
		t.Fatalf("image ls: exit %d\n%s%s", code, out, errOut)
	}
	for _, re := range []string{
		`(?m)^NAME +SIZE +OWN +SHARED +USED BY +FROM$`,
		`(?m)^bookworm +7\.8 KiB +- +7\.8 KiB +- +root$`,
		`(?m)^  layer ` + bi.Layers[0][:12] + ` +7\.8 KiB +- +7\.8 KiB +images bookworm, kiosk +root of root$`,
		`(?m)^  kiosk +7\.8 KiB +6 B +7\.8 KiB +boards pi-01 +test$`,
		`(?m)^    layer ` + l.Digest[:12] + ` +6 B +6 B +- +images kiosk +kiosk browser$`,
		`(?m)^2 image\(s\), 2 layer\(s\): 7\.8 KiB of files on disk \(15\.6 KiB if each image had its own copy\)$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("image ls lacks %s:\n%s", re, out)
		}
	}

	// verify covers the base's layers
	if code, out, _ := runCLI("image", "verify", "-c", cfg, "kiosk"); code != 0 || out != "image kiosk: ok (2 layers)\n" {
		t.Errorf("verify kiosk: exit %d %q", code, out)
	}
	os.WriteFile(filepath.Join(store.LayerTree(bi.Layers[0]), "etc", "os-release"), []byte(strings.Repeat("ID=evil\n", 1000)), 0o644)
	if code, out, _ := runCLI("image", "verify", "-c", cfg, "kiosk"); code != 1 || !strings.Contains(out, "layer "+bi.Layers[0][:12]+": /etc/os-release: content changed") {
		t.Errorf("verify kiosk after a change in bookworm's layer: exit %d %q", code, out)
	}

	// rm: refused while used by a board, or by an image in the store or in fleet.yaml
	for _, c := range []struct{ name, want string }{
		{"kiosk", "image kiosk is used by board(s) pi-01"},
		{"bookworm", "image bookworm is the base of kiosk in " + cfg},
	} {
		if code, _, errOut := runCLI("image", "rm", "-c", cfg, c.name); code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("rm %s: exit %d %q, want %q", c.name, code, errOut, c.want)
		}
	}
	os.WriteFile(cfg, []byte("server: {state: st}\nimages:\n  bookworm: {}\n"), 0o644)
	if code, _, errOut := runCLI("image", "rm", "-c", cfg, "bookworm"); code != 1 || !strings.Contains(errOut, "image bookworm is the base of image(s) kiosk") {
		t.Errorf("rm bookworm under kiosk: exit %d %q", code, errOut)
	}
	if code, out, errOut := runCLI("image", "rm", "-c", cfg, "kiosk"); code != 0 || out != "removed kiosk and 1 layer(s) no other image uses (6 B)\n" {
		t.Errorf("rm kiosk: exit %d %q %q", code, out, errOut)
	}
	if _, err := os.Stat(store.LayerTree(l.Digest)); err == nil {
		t.Error("kiosk's layer is still there")
	}
	if _, err := os.Stat(store.LayerTree(bi.Layers[0])); err != nil {
		t.Errorf("bookworm's layer: %v", err)
	}
	if code, out, errOut := runCLI("image", "rm", "-c", cfg, "bookworm"); code != 0 || out != "removed bookworm and 1 layer(s) no other image uses (7.8 KiB)\n" {
		t.Errorf("rm bookworm: exit %d %q %q", code, out, errOut)
	}
	if all, _ := store.AllLayers(); len(all) != 0 {
		t.Errorf("layers left: %+v", all)
	}
}
