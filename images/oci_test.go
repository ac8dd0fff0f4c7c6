package images

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestContainerLayersMatchTar: the fixture's layers converted one by one, stacked topmost
// first, show through package overlay and through the kernel's overlayfs exactly the tree
// that GNU tar extraction in order (with docker's whiteout rules) leaves.
func TestContainerLayersMatchTar(t *testing.T) {
	needRoot(t)
	layers := ociFixtureLayers()
	want := describeTree(t, hostView(flattenWithTar(t, layers)))
	root := defaultRoot
	var lowers []string
	for i, l := range layers {
		dst := t.TempDir()
		st, err := writeContainerLayer(context.Background(), fmt.Sprintf("layer %d", i+1), bytes.NewReader(layerTar(t, l)), dst, root, lowers)
		if err != nil {
			t.Fatal(err)
		}
		root = st.Root
		lowers = append([]string{dst}, lowers...)
	}
	viewStack(t, lowers, want)
	if !isOpaqueDir(filepath.Join(lowers[1], "var/lib/stuff")) {
		t.Error("layer 2's var/lib/stuff is not opaque")
	}
	var a, b unix.Stat_t
	must(t, unix.Lstat(filepath.Join(lowers[2], "usr/bin/perl"), &a))
	must(t, unix.Lstat(filepath.Join(lowers[2], "usr/bin/perl5.36"), &b))
	if a.Ino != b.Ino {
		t.Error("the hard-link pair of layer 1 are two files")
	}
}

func newTestStore(t testing.TB) *Store {
	t.Helper()
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	return st
}

// TestImportContainerArchives: the 3-layer fixture imported as an OCI layout dir (layers
// gzip, zstd and plain), as an OCI layout tar and as a docker save tar and dir is a stack of
// 3 store layers that shows, through package overlay and the kernel's overlayfs, the tree
// tar extraction in order leaves.
func TestImportContainerArchives(t *testing.T) {
	needRoot(t)
	needTool(t, "tar")
	layers := ociFixtureLayers()
	want := describeTree(t, hostView(flattenWithTar(t, layers)))
	ociDir := filepath.Join(t.TempDir(), "layout")
	writeOCILayout(t, ociDir, arm64Spec(layers, "gzip", "zstd", ""))
	saveDir := filepath.Join(t.TempDir(), "saved")
	spec := arm64Spec(layers)
	spec.ref = "kiosk:v1"
	writeDockerSave(t, saveDir, spec)
	skopeo, crane := filepath.Join(t.TempDir(), "skopeo"), filepath.Join(t.TempDir(), "crane")
	writeFlatDockerArchive(t, skopeo, spec, false)
	writeFlatDockerArchive(t, crane, spec, true)
	st := newTestStore(t)
	var digests []string
	for _, c := range []struct{ name, src, format string }{
		{"oci-dir", ociDir, "oci"},
		{"oci-tar", tarUp(t, ociDir), "oci.tar"},
		{"save-tar", tarUp(t, saveDir), "docker-save.tar"},
		{"save-dir", saveDir, "docker-save"},
		{"oci-tar-gz", compressFile(t, tarUp(t, ociDir), "gzip"), "oci.tar.gz"},
		{"save-tar-xz", compressFile(t, tarUp(t, saveDir), "xz"), "docker-save.tar.xz"},
		{"skopeo-docker-archive", tarUp(t, skopeo), "docker-save.tar"},
		{"crane-tarball", tarUp(t, crane), "docker-save.tar"},
	} {
		t.Run(c.name, func(t *testing.T) {
			info, err := st.Import(context.Background(), c.src, c.name, ImportOptions{Logger: quietLog(), Prepare: true})
			if err != nil {
				t.Fatal(err)
			}
			if info.Format != c.format || len(info.Layers) != 3 || info.Prepared {
				t.Errorf("info: format %s, %d layers, prepared %v", info.Format, len(info.Layers), info.Prepared)
			}
			lowers, err := st.Layers(c.name)
			must(t, err)
			viewStack(t, lowers, want)
			if problems, err := st.Verify(context.Background(), c.name); err != nil || len(problems) > 0 {
				t.Errorf("verify: %v %v", problems, err)
			}
			// the manifests written from the import's records are what a scan of the trees
			// gives (the digests content addressing relies on)
			for _, d := range info.Layers {
				recs, err := scanTree(context.Background(), st.LayerTree(d))
				must(t, err)
				var mf bytes.Buffer
				must(t, writeManifest(&mf, recs))
				if got := sha256Hex(mf.Bytes()); got != d {
					stored, _ := os.ReadFile(filepath.Join(filepath.Dir(st.LayerTree(d)), manifestName))
					t.Errorf("layer %s: a scan gives manifest %s:\n%s\nstored:\n%s", d, got, mf.String(), stored)
				}
			}
			if digests == nil {
				digests = info.Layers
			} else if !slices.Equal(digests, info.Layers) {
				t.Errorf("the same layers from another archive format are other store layers: %v, %v", digests, info.Layers)
			}
		})
	}
	if ls, err := st.AllLayers(); err != nil || len(ls) != 3 {
		t.Errorf("store holds %d layers (%v), want 3 for 8 imports of one image", len(ls), err)
	}
	if ents, _ := filepath.Glob(filepath.Join(st.Dir(), tmpPrefix+"*")); len(ents) > 0 {
		t.Errorf("temp dirs left: %v", ents)
	}
}

// TestImportContainerSharedLayers: two images of one archive sharing their bottom two layers
// are stacks over the same two store layers.
func TestImportContainerSharedLayers(t *testing.T) {
	needRoot(t)
	l := ociFixtureLayers()
	a, b := arm64Spec(l, "gzip", "gzip", "gzip"), arm64Spec([][]fx{l[0], l[1], ociFourthLayer()}, "gzip", "gzip", "gzip")
	a.ref, b.ref = "app:a", "app:b"
	dir := filepath.Join(t.TempDir(), "layout")
	writeOCILayout(t, dir, a, b)
	st := newTestStore(t)
	if _, err := st.Import(context.Background(), dir, "x", ImportOptions{Logger: quietLog()}); err == nil || !strings.Contains(err.Error(), "--ref") {
		t.Fatalf("two arm64 images and no ref: %v", err)
	}
	ia, err := st.Import(context.Background(), dir, "a", ImportOptions{Logger: quietLog(), Ref: "app:a"})
	must(t, err)
	ib, err := st.Import(context.Background(), dir, "b", ImportOptions{Logger: quietLog(), Ref: "app:b"})
	must(t, err)
	if !slices.Equal(ia.Layers[:2], ib.Layers[:2]) || ia.Layers[2] == ib.Layers[2] {
		t.Errorf("layers a %v, b %v: want the bottom two shared", ia.Layers, ib.Layers)
	}
	if ls, _ := st.AllLayers(); len(ls) != 4 {
		t.Errorf("store holds %d layers, want 4", len(ls))
	}
	la, _ := st.Layers("a")
	lb, _ := st.Layers("b")
	if la[1] != lb[1] || la[2] != lb[2] {
		t.Errorf("lower dirs a %v, b %v", la, lb)
	}
	want := describeTree(t, hostView(flattenWithTar(t, [][]fx{l[0], l[1], ociFourthLayer()})))
	viewStack(t, lb, want)
	// the same two images from a docker save archive (shared layer.tar symlinked): the same
	// store layers
	save := filepath.Join(t.TempDir(), "save")
	writeDockerSave(t, save, a, b)
	links := 0
	tars, _ := filepath.Glob(filepath.Join(save, "*", "layer.tar"))
	for _, p := range tars {
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			links++
		}
	}
	if len(tars) != 6 || links != 2 {
		t.Fatalf("%d layer.tar, %d of them links; want 6 and 2", len(tars), links)
	}
	saveTar := tarUp(t, save)
	for _, c := range []struct {
		name, ref string
		want      []string
	}{{"sa", "app:a", ia.Layers}, {"sb", "docker.io/library/app:b", ib.Layers}} {
		for _, src := range []string{save, saveTar} {
			info, err := st.Import(context.Background(), src, c.name, ImportOptions{Logger: quietLog(), Ref: c.ref, Replace: true})
			must(t, err)
			if !slices.Equal(info.Layers, c.want) {
				t.Errorf("%s from %s: layers %v, want %v", c.name, src, info.Layers, c.want)
			}
		}
	}
	if ls, _ := st.AllLayers(); len(ls) != 4 {
		t.Errorf("store holds %d layers, want 4", len(ls))
	}
}

// TestImportContainerPlatform: from a multi-platform index the linux/arm64 image is taken
// (also behind a nested index, and with variant v8); an archive without one is refused
// with an error naming what it has.
func TestImportContainerPlatform(t *testing.T) {
	needRoot(t)
	l := ociFixtureLayers()
	other := [][]fx{{tdir("etc/", 0o755, mt1), tfile("etc/amd64", "x86\n", 0o644, mt1)}}
	amd := ociImageSpec{layers: other, platform: ociPlatform{OS: "linux", Architecture: "amd64"}}
	armv7 := ociImageSpec{layers: other, platform: ociPlatform{OS: "linux", Architecture: "arm", Variant: "v7"}}
	v8 := arm64Spec(l, "gzip", "gzip", "gzip")
	v8.platform.Variant = "v8"
	st := newTestStore(t)

	multi := filepath.Join(t.TempDir(), "multi")
	writeOCILayout(t, multi, amd, v8, armv7)
	info, err := st.Import(context.Background(), multi, "multi", ImportOptions{Logger: quietLog()})
	must(t, err)
	if len(info.Layers) != 3 {
		t.Errorf("picked %d layers", len(info.Layers))
	}

	// index.json -> a docker manifest list -> manifests, as registries and buildx make them
	nested := filepath.Join(t.TempDir(), "nested")
	must(t, os.MkdirAll(nested, 0o755))
	list := mustJSON(t, ociIndex{SchemaVersion: 2, MediaType: mediaDockerList,
		Manifests: []ociDescriptor{writeOCIImage(t, nested, amd), writeOCIImage(t, nested, arm64Spec(l))}})
	ld := writeBlob(t, nested, mediaDockerList, list)
	ld.Annotations = map[string]string{annotationRefName: "latest"}
	must(t, os.WriteFile(filepath.Join(nested, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644))
	must(t, os.WriteFile(filepath.Join(nested, "index.json"), mustJSON(t, ociIndex{SchemaVersion: 2, Manifests: []ociDescriptor{ld}}), 0o644))
	if _, err := st.Import(context.Background(), nested, "nested", ImportOptions{Logger: quietLog(), Ref: "latest"}); err != nil {
		t.Fatal(err)
	}

	none := filepath.Join(t.TempDir(), "none")
	writeOCILayout(t, none, amd, armv7)
	_, err = st.Import(context.Background(), none, "none", ImportOptions{Logger: quietLog()})
	if err == nil || !strings.Contains(err.Error(), "linux/amd64, linux/arm/v7") || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("no arm64 image: %v", err)
	}
	save := filepath.Join(t.TempDir(), "save")
	amd.ref = "x86:latest"
	writeDockerSave(t, save, amd)
	_, err = st.Import(context.Background(), tarUp(t, save), "save", ImportOptions{Logger: quietLog()})
	if err == nil || !strings.Contains(err.Error(), "linux/amd64") {
		t.Errorf("docker save of an amd64 image: %v", err)
	}
	if st.Exists("none") || st.Exists("save") {
		t.Error("refused image exists")
	}
}

// memArchive is an image archive in memory, for the fuzzer.
type memArchive map[string][]byte

func (m memArchive) open(name string) (io.ReadCloser, int64, error) {
	b, ok := m[name]
	if !ok {
		return nil, 0, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
	}
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
}

func (m memArchive) close() error { return nil }

// FuzzContainerManifests feeds arbitrary index.json, manifest, config and docker save
// manifest.json to the archive reader (the manifest and config stored under their real
// digests, so a fuzzed index can reach them): it must never panic, and what it accepts must
// be a linux/arm64 image of 1 to 128 layers with well-formed digests.
func FuzzContainerManifests(f *testing.F) {
	cfg := ociImageConfig(f, ociPlatform{OS: "linux", Architecture: "arm64"}, [][]byte{[]byte("layer")})
	cd := ociDescriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: "sha256:" + sha256Hex(cfg), Size: int64(len(cfg))}
	layer := ociDescriptor{MediaType: layerMedia["gzip"], Digest: "sha256:" + strings.Repeat("ab", 32), Size: 5}
	man := mustJSON(f, ociManifest{SchemaVersion: 2, MediaType: mediaOCIManifest, Config: cd, Layers: []ociDescriptor{layer}})
	md := ociDescriptor{MediaType: mediaOCIManifest, Digest: "sha256:" + sha256Hex(man), Size: int64(len(man)),
		Platform: &ociPlatform{OS: "linux", Architecture: "arm64"}, Annotations: map[string]string{annotationRefName: "latest"}}
	idx := mustJSON(f, ociIndex{SchemaVersion: 2, Manifests: []ociDescriptor{md}})
	save := []byte(`[{"Config":"config.json","RepoTags":["a:b"],"Layers":["l/layer.tar"]}]`)
	f.Add(idx, man, cfg, save)
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:`+sha256Hex(idx)+`","size":1}]}`), man, cfg, save)
	f.Add([]byte(`{}`), []byte(`{"schemaVersion":2}`), []byte(`{"rootfs":{"type":"layers","diff_ids":[]}}`), []byte(`[]`))
	f.Fuzz(func(t *testing.T, index, manifest, config, saveManifest []byte) {
		check := func(img *containerImage, err error) {
			if err != nil {
				return
			}
			if !img.Platform.isArm64() || len(img.Layers) == 0 || len(img.Layers) > maxImageLayers || !isSHA256Hex(img.Config) {
				t.Fatalf("accepted %+v", img)
			}
			for _, l := range img.Layers {
				if !isSHA256Hex(l.DiffID) || (l.Digest != "" && !isSHA256Hex(l.Digest)) || l.Path == "" {
					t.Fatalf("accepted layer %+v", l)
				}
				if _, err := cleanPath(l.Path); err != nil {
					t.Fatalf("layer path %q", l.Path)
				}
			}
		}
		oci := memArchive{
			"oci-layout":                  []byte(`{"imageLayoutVersion":"1.0.0"}`),
			"index.json":                  index,
			blobPath(sha256Hex(manifest)): manifest,
			blobPath(sha256Hex(config)):   config,
			blobPath(sha256Hex(index)):    index, // nested: the index names itself
		}
		check(readContainerImage(oci, ""))
		check(readContainerImage(oci, "latest"))
		saved := memArchive{"manifest.json": saveManifest, "config.json": config, sha256Hex(config) + ".json": config}
		check(readContainerImage(saved, ""))
	})
}

func TestSameRef(t *testing.T) {
	for _, c := range []struct {
		name, ref string
		same      bool
	}{
		{"docker.io/library/debian:latest", "debian", true},
		{"docker.io/library/kiosk:v1", "kiosk:v1", true},
		{"docker.io/me/kiosk:v1", "me/kiosk:v1", true},
		{"ghcr.io/me/kiosk:v1", "me/kiosk:v1", false},
		{"localhost:5000/kiosk", "localhost:5000/kiosk:latest", true},
		{"v1", "v1", true},
		{"kiosk:v1", "kiosk:v2", false},
	} {
		if got := sameRef(c.name, c.ref); got != c.same {
			t.Errorf("sameRef(%q, %q) = %v", c.name, c.ref, got)
		}
	}
}

// compressFile compresses a file with gzip or xz (the commands) next to it.
func compressFile(t testing.TB, p, how string) string {
	t.Helper()
	needTool(t, how)
	run(t, how, "-k", p)
	return p + map[string]string{"gzip": ".gz", "xz": ".xz"}[how]
}

// TestImportContainerEmptyLayer: an empty layer (an ENV or WORKDIR step) is not stacked; the
// image is the other layers. A cancelled import leaves nothing.
func TestImportContainerEmptyLayer(t *testing.T) {
	needRoot(t)
	l := ociFixtureLayers()
	dir := filepath.Join(t.TempDir(), "layout")
	writeOCILayout(t, dir, arm64Spec([][]fx{l[0], {}, l[1], {}, l[2]}, "gzip", "gzip", "gzip", "zstd", "gzip"))
	st := newTestStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := st.Import(ctx, dir, "cancelled", ImportOptions{Logger: quietLog()}); err == nil {
		t.Fatal("cancelled import succeeded")
	}
	assertEmptyStore(t, st)
	info, err := st.Import(context.Background(), dir, "e", ImportOptions{Logger: quietLog()})
	must(t, err)
	if len(info.Layers) != 3 {
		t.Errorf("%d layers, want 3", len(info.Layers))
	}
	lowers, err := st.Layers("e")
	must(t, err)
	viewStack(t, lowers, describeTree(t, hostView(flattenWithTar(t, l))))
}

// TestContainerLayerImplicitParents: a layer tar that names a file but not its parent dirs
// gets the parents the layers below have (owner, mode, mtime, xattrs; never their opaque
// mark), not root 0755 dirs that would hide them.
func TestContainerLayerImplicitParents(t *testing.T) {
	needRoot(t)
	var lowers []string
	root := defaultRoot
	convert := func(members []fx) string {
		dst := t.TempDir()
		st, err := writeContainerLayer(context.Background(), "layer", bytes.NewReader(layerTar(t, members)), dst, root, lowers)
		if err != nil {
			t.Fatal(err)
		}
		root = st.Root
		lowers = append([]string{dst}, lowers...)
		return dst
	}
	for _, l := range ociFixtureLayers() {
		convert(l)
	}
	top := convert([]fx{
		tfile("home/pi/new", "n\n", 0o644, mt4),
		tfile("etc/xdir/f", "f\n", 0o644, mt4),
		tfile("var/lib/stuff/z", "z\n", 0o644, mt4),
		twh("usr/lib/.wh.fresh.txt", mt4),
	})
	for _, c := range []struct {
		path      string
		mode      uint32
		uid       uint32
		mtime     int64
		xattr     string
		notOpaque bool
	}{
		{"home", 0o755, 0, mt3, "", true},
		{"home/pi", 0o750, 1000, mt3, "", true},
		{"etc/xdir", 0o755, 0, mt2, "user.dirnote", true},
		{"var/lib/stuff", 0o700, 1000, mt3, "", true},
		{"usr/lib", 0o755, 0, mt3, "", true},
	} {
		var st unix.Stat_t
		must(t, unix.Lstat(filepath.Join(top, c.path), &st))
		if st.Mode != typeDir|c.mode || st.Uid != c.uid || st.Mtim.Sec != c.mtime {
			t.Errorf("/%s: mode %o uid %d mtime %d, want %o %d %d", c.path, st.Mode, st.Uid, st.Mtim.Sec, typeDir|c.mode, c.uid, c.mtime)
		}
		if c.xattr != "" {
			if _, err := unix.Lgetxattr(filepath.Join(top, c.path), c.xattr, nil); err != nil {
				t.Errorf("/%s: xattr %s not copied: %v", c.path, c.xattr, err)
			}
		}
		if isOpaqueDir(filepath.Join(top, c.path)) {
			t.Errorf("/%s: opaque", c.path)
		}
	}
}

// TestImportContainerPrepared: a container image with /boot/firmware (a root meant to boot a
// Pi) gets the NFS-root preparation layer, computed from the merged stack: the fstab and
// cmdline.txt of the top layer are the ones fixed, and a unit a layer deleted is not masked.
func TestImportContainerPrepared(t *testing.T) {
	needRoot(t)
	l1 := []fx{
		tdir("./", 0o755, mt1),
		tdir("boot/", 0o755, mt1),
		tdir("boot/firmware/", 0o755, mt1),
		tfile("boot/firmware/cmdline.txt", "console=tty1 root=/dev/mmcblk0p2 rootwait\n", 0o644, mt1),
		tdir("etc/", 0o755, mt1),
		tfile("etc/fstab", "# UNCONFIGURED FSTAB\n", 0o644, mt1),
		tdir("etc/NetworkManager/", 0o755, mt1),
		tfile("etc/NetworkManager/NetworkManager.conf", "[main]\nplugins=keyfile\n", 0o644, mt1),
		tdir("lib/", 0o755, mt1),
		tdir("lib/systemd/", 0o755, mt1),
		tdir("lib/systemd/system/", 0o755, mt1),
		tfile("lib/systemd/system/dphys-swapfile.service", "[Service]\n", 0o644, mt1),
		tfile("lib/systemd/system/rpi-eeprom-update.service", "[Service]\n", 0o644, mt1),
	}
	l2 := []fx{
		tdir("boot/", 0o755, mt2),
		tdir("boot/firmware/", 0o755, mt2),
		tfile("boot/firmware/cmdline.txt", "console=tty1 root=PARTUUID=abcd-02 rootfstype=ext4 fsck.repair=yes rootwait\n", 0o644, mt2),
		tdir("etc/", 0o755, mt2),
		tfile("etc/fstab", "proc /proc proc defaults 0 0\nPARTUUID=abcd-01 /boot/firmware vfat defaults 0 2\nPARTUUID=abcd-02 / ext4 defaults,noatime 0 1\n", 0o644, mt2),
		tdir("lib/", 0o755, mt2),
		tdir("lib/systemd/", 0o755, mt2),
		tdir("lib/systemd/system/", 0o755, mt2),
		twh("lib/systemd/system/.wh.dphys-swapfile.service", mt2),
	}
	dir := filepath.Join(t.TempDir(), "layout")
	writeOCILayout(t, dir, arm64Spec([][]fx{l1, l2}, "gzip", "gzip"))
	st := newTestStore(t)
	info, err := st.Import(context.Background(), dir, "pi", ImportOptions{Logger: quietLog(), Prepare: true})
	must(t, err)
	changes := strings.Join(info.Changes, "\n")
	if !info.Prepared || len(info.Layers) != 3 || !strings.Contains(changes, "/etc/fstab: removed 2 SD-card line(s)") ||
		!strings.Contains(changes, "root=PARTUUID=abcd-02") || !strings.Contains(changes, "masked rpi-eeprom-update.service") ||
		strings.Contains(changes, "dphys-swapfile") {
		t.Errorf("prepared %v, %d layers, changes:\n%s", info.Prepared, len(info.Layers), changes)
	}
	lowers, err := st.Layers("pi")
	must(t, err)
	v := layerView(lowers)
	cmdline, _, err := v.readFile("boot/firmware/cmdline.txt")
	must(t, err)
	fstab, _, err := v.readFile("etc/fstab")
	must(t, err)
	if strings.Contains(string(cmdline), "root=") || strings.Count(string(fstab), "# pifleet") != 2 {
		t.Errorf("cmdline.txt %q\nfstab %q", cmdline, fstab)
	}
	if problems, err := st.Verify(context.Background(), "pi"); err != nil || len(problems) > 0 {
		t.Errorf("verify: %v %v", problems, err)
	}
	if ents, _ := filepath.Glob(filepath.Join(st.Dir(), tmpPrefix+"*")); len(ents) > 0 {
		t.Errorf("temp dirs left: %v", ents)
	}
	var fi unix.Stat_t
	must(t, unix.Stat(filepath.Join(lowers[1], "etc/fstab"), &fi))
	if fi.Nlink != 1 {
		t.Errorf("layer file has %d links after the import", fi.Nlink)
	}
	// without Prepare: the layers alone
	info, err = st.Import(context.Background(), dir, "raw", ImportOptions{Logger: quietLog()})
	must(t, err)
	if info.Prepared || len(info.Layers) != 2 {
		t.Errorf("unprepared import: prepared %v, %d layers", info.Prepared, len(info.Layers))
	}
}
