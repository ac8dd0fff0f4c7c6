package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// layerTree fills dir with a small overlayfs-format layer: a file, a whiteout, an opaque
// dir, all with fixed times so the same call makes the same layer.
func layerTree(t testing.TB, dir, content string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(dir, "etc"), 0o755))
	must(t, os.MkdirAll(filepath.Join(dir, "var/cache"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "etc/motd"), []byte(content), 0o644))
	must(t, unix.Mknod(filepath.Join(dir, "etc/gone"), unix.S_IFCHR, 0))
	must(t, unix.Lsetxattr(filepath.Join(dir, "var/cache"), opaqueXattr, []byte("y"), 0))
	ts := time.Unix(1700000000, 0)
	for _, p := range []string{"etc/motd", "var/cache", "var", "etc", ""} {
		must(t, os.Chtimes(filepath.Join(dir, p), ts, ts))
	}
	must(t, unix.Lutimes(filepath.Join(dir, "etc/gone"), []unix.Timeval{unix.NsecToTimeval(ts.UnixNano()), unix.NsecToTimeval(ts.UnixNano())}))
	must(t, os.Chtimes(filepath.Join(dir, "etc"), ts, ts))
}

func newLayer(t testing.TB, st *Store, content string) Layer {
	t.Helper()
	dir, err := st.TempDir("test layer/" + content)
	must(t, err)
	if !strings.HasPrefix(dir, st.Dir()+"/"+tmpPrefix) {
		t.Fatalf("TempDir %s is not a temp dir of the store", dir)
	}
	layerTree(t, dir, content)
	l, err := st.AddLayer(dir, "test "+content)
	must(t, err)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("AddLayer left %s", dir)
	}
	return l
}

func TestAddLayerContentAddressed(t *testing.T) {
	needRoot(t)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	a := newLayer(t, st, "hello\n")
	mf, err := os.ReadFile(filepath.Join(st.layerDir(a.Digest), manifestName))
	must(t, err)
	sum := sha256.Sum256(mf)
	if hex.EncodeToString(sum[:]) != a.Digest || a.Dir != st.LayerTree(a.Digest) || a.Files != 6 || a.Bytes != 6 || a.Comment != "test hello\n" {
		t.Errorf("layer %+v", a)
	}
	// the manifest records the whiteout and the opaque dir as such
	for _, want := range []string{"\nw\t0\t0\t0\t1700000000000000000\t0\t-\t-\t\"etc/gone\"\n", "\no\t755\t0\t0\t"} {
		if !strings.Contains(string(mf), want) {
			t.Errorf("manifest lacks %q:\n%s", want, mf)
		}
	}
	// the same content again is the same layer; the new dir is dropped
	b := newLayer(t, st, "hello\n")
	if b.Digest != a.Digest {
		t.Errorf("same tree, digests %s and %s", a.Digest, b.Digest)
	}
	c := newLayer(t, st, "other\n")
	if c.Digest == a.Digest {
		t.Error("different trees, one digest")
	}
	if ls, _ := st.AllLayers(); len(ls) != 2 {
		t.Errorf("%d layers, want 2", len(ls))
	}
	if ps, err := st.VerifyLayer(context.Background(), a.Digest); err != nil || len(ps) > 0 {
		t.Errorf("fresh layer: %v %v", ps, err)
	}
	// the opaque flag and the whiteout are checked
	must(t, unix.Lremovexattr(filepath.Join(a.Dir, "var/cache"), opaqueXattr))
	must(t, os.Remove(filepath.Join(a.Dir, "etc/gone")))
	must(t, os.WriteFile(filepath.Join(a.Dir, "etc/gone"), nil, 0))
	ps, err := st.VerifyLayer(context.Background(), a.Digest)
	must(t, err)
	if all := strings.Join(ps, "\n"); !strings.Contains(all, "/var/cache: opaque flag changed") || !strings.Contains(all, "/etc/gone: type changed") {
		t.Errorf("verify after removing opaque flag and whiteout: %v", ps)
	}

	// overlayfs xattrs other than opaque=y are not part of the format
	dir, err := st.TempDir("bad")
	must(t, err)
	must(t, os.Mkdir(filepath.Join(dir, "d"), 0o755))
	must(t, unix.Lsetxattr(filepath.Join(dir, "d"), "trusted.overlay.redirect", []byte("/x"), 0))
	if _, err := st.AddLayer(dir, ""); err == nil || !strings.Contains(err.Error(), "trusted.overlay.redirect") {
		t.Errorf("AddLayer with a redirect xattr: %v", err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("refused AddLayer left its dir")
	}
	// a dir on another file system is refused, not copied
	if other := "/dev/shm"; sameDevice(other, st.Dir()) == false {
		d, err := os.MkdirTemp(other, "pifleet-layer-")
		must(t, err)
		defer os.RemoveAll(d)
		if _, err := st.AddLayer(d, ""); err == nil || !strings.Contains(err.Error(), "file system") {
			t.Errorf("AddLayer across file systems: %v", err)
		}
	}
}

func sameDevice(a, b string) bool {
	var x, y unix.Stat_t
	return unix.Stat(a, &x) != nil || unix.Stat(b, &y) != nil || x.Dev == y.Dev
}

func TestCreateImageStacksAndCollects(t *testing.T) {
	needRoot(t)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	root := newLayer(t, st, "root\n")
	prep := newLayer(t, st, "prep\n")
	kiosk := newLayer(t, st, "kiosk\n")
	must(t, st.CreateImage("bookworm", "", []string{root.Digest, prep.Digest}, ImageMeta{Source: "x.img.xz", Format: "img.xz", Prepared: true}))
	must(t, st.CreateImage("kiosk", "bookworm", []string{kiosk.Digest}, ImageMeta{Source: "board pi-01", Comment: "kiosk"}))
	got, err := st.Layers("kiosk")
	must(t, err)
	if want := []string{kiosk.Dir, prep.Dir, root.Dir}; !slices.Equal(got, want) {
		t.Errorf("Layers(kiosk) = %v, want %v", got, want)
	}
	ki, err := st.Info("kiosk")
	must(t, err)
	if ki.Base != "bookworm" || !slices.Equal(ki.Layers, []string{root.Digest, prep.Digest, kiosk.Digest}) || ki.Files != kiosk.Files || ki.Source != "board pi-01" {
		t.Errorf("kiosk info %+v", ki)
	}
	if st.RootDir("kiosk") != root.Dir {
		t.Errorf("RootDir(kiosk) = %s", st.RootDir("kiosk"))
	}

	// refusals
	if err := st.CreateImage("kiosk", "bookworm", []string{kiosk.Digest}, ImageMeta{}); !errors.Is(err, ErrExists) {
		t.Errorf("create over kiosk: %v", err)
	}
	if err := st.CreateImage("x", "bookworm", []string{root.Digest}, ImageMeta{}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a layer twice in a stack: %v", err)
	}
	if err := st.CreateImage("x", "", []string{strings.Repeat("0", 64)}, ImageMeta{}); err == nil || !strings.Contains(err.Error(), "not in the store") {
		t.Errorf("missing layer: %v", err)
	}
	if err := st.CreateImage("x", "nope", nil, ImageMeta{}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing base: %v", err)
	}
	if err := st.CreateImage("bookworm", "kiosk", nil, ImageMeta{Replace: true}); err == nil {
		t.Error("an image made its own base")
	}
	if err := st.CreateImage("bookworm", "", []string{root.Digest}, ImageMeta{Replace: true}); err == nil || !strings.Contains(err.Error(), "base of kiosk") {
		t.Errorf("replacing a base: %v", err)
	}
	if err := st.Remove("bookworm", nil); err == nil || !strings.Contains(err.Error(), "base of image(s) kiosk") {
		t.Errorf("removing a base: %v", err)
	}

	// verify covers the base's layers
	must(t, os.WriteFile(filepath.Join(root.Dir, "etc/motd"), []byte("ROOT\n"), 0o644))
	ps, err := st.Verify(context.Background(), "kiosk")
	must(t, err)
	if len(ps) != 1 || !strings.Contains(ps[0], "layer "+root.Digest[:12]+": /etc/motd: content changed") {
		t.Errorf("verify kiosk: %v", ps)
	}

	// a removed image takes the layers only it used; shared ones stay
	gone, err := st.RemoveImage("kiosk", nil)
	must(t, err)
	if len(gone) != 1 || gone[0].Digest != kiosk.Digest {
		t.Errorf("removing kiosk removed %+v", gone)
	}
	if _, err := os.Stat(root.Dir); err != nil {
		t.Errorf("bookworm's root layer: %v", err)
	}
	if _, err := st.Layers("bookworm"); err != nil {
		t.Error(err)
	}

	// a layer no image uses is kept for a day (its image may be on the way), then removed
	// with the next image removed; opening the store never removes layers (a running server
	// may stack them)
	orphan := newLayer(t, st, "orphan\n")
	young := newLayer(t, st, "young orphan\n")
	must(t, st.CreateImage("other", "", []string{newLayer(t, st, "other\n").Digest}, ImageMeta{}))
	old := time.Now().Add(-orphanGrace - time.Hour)
	must(t, os.Chtimes(st.layerDir(orphan.Digest), old, old))
	if _, err := OpenStore(st.Dir()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orphan.Dir); err != nil {
		t.Errorf("OpenStore removed an unused layer: %v", err)
	}
	gone, err = st.RemoveImage("other", nil)
	must(t, err)
	if len(gone) != 2 || !slices.ContainsFunc(gone, func(l Layer) bool { return l.Digest == orphan.Digest }) {
		t.Errorf("removing other removed %+v, want its layer and the old orphan", gone)
	}
	if _, err := os.Stat(young.Dir); err != nil {
		t.Errorf("young orphan removed: %v", err)
	}
	must(t, os.Chtimes(st.layerDir(young.Digest), old, old))
	must(t, st.Remove("bookworm", nil))
	assertEmptyStore(t, st)
}

func TestImageSize(t *testing.T) {
	needRoot(t)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	a, b := newLayer(t, st, "aaaa"), newLayer(t, st, "bb")
	must(t, st.CreateImage("base", "", []string{a.Digest}, ImageMeta{}))
	must(t, st.CreateImage("top", "base", []string{b.Digest}, ImageMeta{}))
	info, _ := st.Info("top")
	if n, err := st.Size("top"); err != nil || n != 6 || info.Bytes != 2 {
		t.Errorf("Size(top) = %d, %v; own bytes %d", n, err, info.Bytes)
	}
}
