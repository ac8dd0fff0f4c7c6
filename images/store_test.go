package images

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestImportDirKeepsEverything(t *testing.T) {
	needRoot(t)
	src := t.TempDir()
	fixtureTree(t, src, 3000)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	var prog strings.Builder
	info, err := st.Import(context.Background(), src, "demo", ImportOptions{Progress: &prog})
	if err != nil {
		t.Fatal(err)
	}
	root := st.RootDir("demo")
	compareSnapshots(t, takeSnapshot(t, src, nil), takeSnapshot(t, root, nil))
	compareACLs(t, src, root)
	dirMtimes(t, src, root, nil)

	// hard links stay links
	a, _ := os.Stat(filepath.Join(root, "usr/bin/perl"))
	b, _ := os.Stat(filepath.Join(root, "usr/bin/perl5.36"))
	if !os.SameFile(a, b) {
		t.Error("usr/bin/perl and perl5.36 are no longer one inode")
	}
	// the sparse file stays sparse
	var sst unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "var/swap-like"), &sst); err != nil {
		t.Fatal(err)
	}
	if sst.Size != 5<<20 || sst.Blocks*512 > 1<<20 {
		t.Errorf("var/swap-like: size %d, %d bytes allocated; want 5 MiB mostly holes", sst.Size, sst.Blocks*512)
	}
	if info.Format != "dir" || info.Source != filepath.Base(src) || info.SHA256 != "" {
		t.Errorf("info = %+v", info)
	}
	if info.Files != int64(len(takeSnapshot(t, root, nil))) {
		t.Errorf("info.Files = %d, tree has %d", info.Files, len(takeSnapshot(t, root, nil)))
	}
	if !strings.Contains(prog.String(), "image demo: copy") {
		t.Errorf("progress output %q", prog.String())
	}
	// nothing but the image and its one layer is left in the store
	if got := storeNames(t, st); !slices.Equal(got, []string{"demo", layersDirName}) {
		t.Errorf("store holds %v", got)
	}
	if ls, _ := st.AllLayers(); len(ls) != 1 || ls[0].Dir != root || ls[0].Files != info.Files || ls[0].Bytes != info.Bytes {
		t.Errorf("layers %+v, root %s, info %+v", ls, root, info)
	}
	problems, err := st.Verify(context.Background(), "demo")
	if err != nil || len(problems) > 0 {
		t.Errorf("fresh import does not verify: %v %v", problems, err)
	}
	// an ACL changed after import is a problem Verify reports
	run(t, "setfacl", "-m", "u:99:r--", filepath.Join(root, "srv/shared/notes"))
	problems, err = st.Verify(context.Background(), "demo")
	if err != nil || len(problems) != 1 || !strings.Contains(problems[0], "/srv/shared/notes: xattrs changed") {
		t.Errorf("verify after setfacl: %v %v", problems, err)
	}
}

func TestStoreListLayersRemove(t *testing.T) {
	needRoot(t)
	src := t.TempDir()
	fixtureTree(t, src, 0)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := st.Layers("nope"); err == nil || !strings.Contains(err.Error(), "pifleet image import") {
		t.Errorf("Layers of a missing image: %v", err)
	}
	if _, err := st.Import(ctx, src, "b-image", ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Import(ctx, src, "a-image", ImportOptions{Prepare: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Import(ctx, src, "a-image", ImportOptions{}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second import over a-image: %v", err)
	}
	list, err := st.List()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range list {
		names = append(names, i.Name)
		if i.Files == 0 || i.Bytes == 0 || i.Imported.IsZero() || i.Source == "" {
			t.Errorf("info %+v incomplete", i)
		}
	}
	if !slices.Equal(names, []string{"a-image", "b-image"}) {
		t.Errorf("List names = %v", names)
	}
	// the same tree imported twice is one layer: a-image is b-image's root plus a prep layer
	l, err := st.Layers("b-image")
	bi, _ := st.Info("b-image")
	if err != nil || len(bi.Layers) != 1 || !slices.Equal(l, []string{st.LayerTree(bi.Layers[0])}) {
		t.Errorf("Layers(b-image) = %v, %v", l, err)
	}
	l, err = st.Layers("a-image")
	ai, _ := st.Info("a-image")
	if err != nil || len(ai.Layers) != 2 || ai.Layers[0] != bi.Layers[0] ||
		!slices.Equal(l, []string{st.LayerTree(ai.Layers[1]), st.LayerTree(bi.Layers[0])}) {
		t.Errorf("Layers(a-image) = %v, %v; info %+v", l, err, ai)
	}
	// replace works and keeps one image
	if _, err := st.Import(ctx, src, "b-image", ImportOptions{Replace: true}); err != nil {
		t.Fatal(err)
	}
	if err := st.Remove("a-image", []string{"pi-01", "pi-02"}); err == nil || !strings.Contains(err.Error(), "pi-01, pi-02") {
		t.Errorf("Remove while used: %v", err)
	}
	if !st.Exists("a-image") {
		t.Fatal("refused Remove deleted the image")
	}
	if err := st.Remove("a-image", nil); err != nil {
		t.Fatal(err)
	}
	if st.Exists("a-image") {
		t.Error("a-image still exists")
	}
	if got := storeNames(t, st); !slices.Equal(got, []string{"b-image", layersDirName}) {
		t.Errorf("store holds %v after remove", got)
	}
	// a-image's prep layer went with it; the root layer b-image uses stays
	if ls, _ := st.AllLayers(); len(ls) != 1 || ls[0].Digest != bi.Layers[0] {
		t.Errorf("layers after remove: %+v", ls)
	}
	if err := st.Remove("a-image", nil); err == nil {
		t.Error("removing a missing image succeeded")
	}
}

func TestImportRejectsBadInput(t *testing.T) {
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.img")
	os.WriteFile(text, []byte(strings.Repeat("not a disk image\n", 100)), 0o644)
	empty := filepath.Join(dir, "empty.img.xz")
	os.WriteFile(empty, nil, 0o644)
	cases := map[string]struct{ src, name, want string }{
		"bad name":  {dir, "../evil", "image name"},
		"missing":   {filepath.Join(dir, "nope.img"), "x", "no such file"},
		"text file": {text, "x", "not a disk image"},
		"empty":     {empty, "x", "not a disk image"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := st.Import(context.Background(), c.src, c.name, ImportOptions{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
			assertEmptyStore(t, st)
		})
	}
}

func assertEmptyStore(t testing.TB, st *Store) {
	t.Helper()
	ents, err := os.ReadDir(st.Dir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == lockFileName {
			continue
		}
		if e.Name() == layersDirName {
			if ls, _ := os.ReadDir(filepath.Join(st.Dir(), layersDirName)); len(ls) == 0 {
				continue
			}
		}
		t.Errorf("left behind in the store: %s", e.Name())
	}
}

// storeNames lists the store's entries but the lock file.
func storeNames(t testing.TB, st *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(st.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() != lockFileName {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestImportCancelledLeavesNothing(t *testing.T) {
	needRoot(t)
	src := t.TempDir()
	fixtureTree(t, src, 100)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := st.Import(ctx, src, "x", ImportOptions{}); err == nil {
		t.Fatal("cancelled import succeeded")
	}
	assertEmptyStore(t, st)
}
