package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/pifleet/pifleet/overlay"
	"golang.org/x/sys/unix"
)

// fx is one member of a test layer tar.
type fx struct {
	h    *tar.Header
	data string
}

type fxOpt func(*tar.Header)

func own(uid, gid int) fxOpt { return func(h *tar.Header) { h.Uid, h.Gid = uid, gid } }
func xa(k, v string) fxOpt {
	return func(h *tar.Header) {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+k] = v
	}
}

func mkfx(h *tar.Header, data string, mt int64, opts []fxOpt) fx {
	h.ModTime = time.Unix(mt, 0)
	h.Format = tar.FormatPAX
	for _, o := range opts {
		o(h)
	}
	return fx{h, data}
}

func tdir(name string, mode, mt int64, opts ...fxOpt) fx {
	return mkfx(&tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode}, "", mt, opts)
}

func tfile(name, data string, mode, mt int64, opts ...fxOpt) fx {
	return mkfx(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data))}, data, mt, opts)
}

func tsym(name, target string, mt int64) fx {
	return mkfx(&tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}, "", mt, nil)
}

func thard(name, target string, mt int64) fx {
	return mkfx(&tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}, "", mt, nil)
}

func tdev(name string, typ byte, mode, major, minor, mt int64) fx {
	return mkfx(&tar.Header{Name: name, Typeflag: typ, Mode: mode, Devmajor: major, Devminor: minor}, "", mt, nil)
}

// twh is a whiteout marker as docker and BuildKit write them: an empty file.
func twh(name string, mt int64) fx { return tfile(name, "", 0o644, mt) }

func layerTar(t testing.TB, members []fx) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		if err := tw.WriteHeader(m.h); err != nil {
			t.Fatalf("%s: %v", m.h.Name, err)
		}
		if _, err := io.WriteString(tw, m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Layer mtimes: each layer's own second.
const (
	mt1 = 1700000000
	mt2 = 1700001000
	mt3 = 1700002000
	mt4 = 1700003000
)

// ociFixtureLayers is a 3-layer image as a container build makes one: a base with every kind
// of object; a layer that deletes a file (.wh.old.conf), a whole dir (usr/.wh.lib) and
// replaces a dir's content (opaque var/lib/stuff); a layer that recreates the deleted dir,
// deletes one name of a hard-link pair, turns a file into a dir and a file into a symlink,
// and changes only metadata of a file. Like the tools that make layers, every layer names
// the parent dirs of what it changes.
func ociFixtureLayers() [][]fx {
	l1 := []fx{
		tdir("./", 0o755, mt1),
		tdir("etc/", 0o755, mt1),
		tfile("etc/old.conf", "old\n", 0o644, mt1),
		tfile("etc/keep.conf", "keep\n", 0o640, mt1, own(0, 42)),
		tdir("usr/", 0o755, mt1),
		tdir("usr/bin/", 0o755, mt1),
		tfile("usr/bin/tool", "tool v1\n", 0o4755, mt1),
		thard("usr/bin/tool2", "usr/bin/tool", mt1),
		tfile("usr/bin/perl5.36", "perl\n", 0o755, mt1),
		thard("usr/bin/perl", "usr/bin/perl5.36", mt1),
		tfile("usr/bin/ping", "ping\n", 0o755, mt1, xa("security.capability", string(capability)), xa("user.note", "hello")),
		tdir("usr/lib/", 0o755, mt1),
		tfile("usr/lib/libx.so.1", "libx\n", 0o644, mt1),
		tsym("usr/lib/libx.so", "libx.so.1", mt1),
		tdir("usr/lib/sub/", 0o700, mt1),
		tfile("usr/lib/sub/deep.txt", "deep\n", 0o600, mt1),
		tdir("var/", 0o755, mt1),
		tdir("var/lib/", 0o755, mt1),
		tdir("var/lib/stuff/", 0o750, mt1, own(1000, 1000)),
		tfile("var/lib/stuff/a.txt", "a\n", 0o644, mt1),
		tfile("var/lib/stuff/b.txt", "b\n", 0o644, mt1),
		tdir("var/lib/stuff/sub/", 0o755, mt1),
		tfile("var/lib/stuff/sub/c.txt", "c\n", 0o644, mt1),
		tdir("dev/", 0o755, mt1),
		tdev("dev/null", tar.TypeChar, 0o666, 1, 3, mt1),
		tdev("dev/loop0", tar.TypeBlock, 0o660, 7, 0, mt1),
		tdev("dev/initctl", tar.TypeFifo, 0o600, 0, 0, mt1),
		tdir("home/", 0o755, mt1),
		tdir("home/pi/", 0o750, mt1, own(1000, 1000)),
		tfile("home/pi/.profile", "PATH=/bin\n", 0o644, mt1, own(1000, 1000)),
		tdir("opt/", 0o755, mt1),
		tfile("opt/thing", "a file\n", 0o644, mt1),
		tdir("tmp/", 0o1777, mt1),
	}
	l2 := []fx{
		tdir("etc/", 0o755, mt2),
		twh("etc/.wh.old.conf", mt2),
		tfile("etc/new.conf", "new\n", 0o644, mt2),
		tdir("etc/xdir/", 0o755, mt2, xa("user.dirnote", "d")),
		tdir("usr/", 0o755, mt2),
		twh("usr/.wh.lib", mt2),
		tdir("usr/bin/", 0o755, mt2),
		tfile("usr/bin/tool", "tool v2\n", 0o4755, mt2),
		tdir("var/", 0o755, mt2),
		tdir("var/lib/", 0o755, mt2),
		tdir("var/lib/stuff/", 0o700, mt2, own(1000, 1000)),
		twh("var/lib/stuff/.wh..wh..opq", mt2),
		tfile("var/lib/stuff/new.txt", "new stuff\n", 0o644, mt2),
		tdir("var/lib/stuff/sub/", 0o755, mt2),
		tfile("var/lib/stuff/sub/d.txt", "d\n", 0o644, mt2),
	}
	l3 := []fx{
		tdir("usr/", 0o755, mt3),
		tdir("usr/lib/", 0o755, mt3),
		tfile("usr/lib/fresh.txt", "fresh\n", 0o644, mt3),
		tdir("usr/bin/", 0o755, mt3),
		twh("usr/bin/.wh.tool2", mt3),
		tdir("opt/", 0o755, mt3),
		tdir("opt/thing/", 0o755, mt3),
		tfile("opt/thing/inside.txt", "inside\n", 0o644, mt3),
		tdir("home/", 0o755, mt3),
		tdir("home/pi/", 0o750, mt3, own(1000, 1000)),
		tfile("home/pi/.profile", "PATH=/bin\n", 0o600, mt3, own(1000, 1000), xa("user.x", "y")),
		tdir("etc/", 0o755, mt3),
		tsym("etc/keep.conf", "new.conf", mt3),
		tdir("var/", 0o755, mt3),
		tdir("var/lib/", 0o755, mt3),
		tdir("var/lib/stuff/", 0o700, mt3, own(1000, 1000)),
		twh("var/lib/stuff/.wh.new.txt", mt3),
	}
	return [][]fx{l1, l2, l3}
}

// ociFourthLayer is another top for the fixture's bottom two layers (an image sharing them).
func ociFourthLayer() []fx {
	return []fx{
		tdir("etc/", 0o755, mt4),
		tfile("etc/other.conf", "other\n", 0o644, mt4),
	}
}

// flattenWithTar applies layer tars in order the way docker does, with GNU tar and rm: the
// whiteouts of a layer remove what lower layers have (a name, or an opaque dir's content),
// then the layer is extracted without its whiteout markers.
func flattenWithTar(t testing.TB, layers [][]fx) string {
	t.Helper()
	needTool(t, "tar")
	flat := t.TempDir()
	for i, l := range layers {
		f := filepath.Join(t.TempDir(), fmt.Sprintf("layer%d.tar", i))
		must(t, os.WriteFile(f, layerTar(t, l), 0o644))
		for _, m := range l {
			dir, base := path.Split(strings.TrimPrefix(m.h.Name, "./"))
			switch {
			case base == ".wh..wh..opq":
				run(t, "find", filepath.Join(flat, dir), "-mindepth", "1", "-maxdepth", "1", "-exec", "rm", "-rf", "{}", "+")
			case strings.HasPrefix(base, ".wh."):
				run(t, "rm", "-rf", filepath.Join(flat, dir, strings.TrimPrefix(base, ".wh.")))
			}
		}
		run(t, "tar", "-xpf", f, "--numeric-owner", "--xattrs", "--xattrs-include=*", "--exclude=.wh.*", "-C", flat)
	}
	return flat
}

// treeView is what a tree walk needs; hostView and overlayView read one.
type treeView interface {
	lstat(p string) (*overlay.Stat, error)
	readDir(p string) ([]string, error)
	readFile(p string) ([]byte, error)
	readlink(p string) (string, error)
	xattrs(p string) (map[string][]byte, error)
}

type hostView string

func (h hostView) real(p string) string { return filepath.Join(string(h), p) }
func (h hostView) lstat(p string) (*overlay.Stat, error) {
	var st unix.Stat_t
	if err := unix.Lstat(h.real(p), &st); err != nil {
		return nil, err
	}
	return &overlay.Stat{Mode: st.Mode, Uid: st.Uid, Gid: st.Gid, Rdev: st.Rdev, Size: st.Size, Mtime: time.Unix(st.Mtim.Unix())}, nil
}
func (h hostView) readDir(p string) ([]string, error) {
	ents, err := os.ReadDir(h.real(p))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, err
}
func (h hostView) readFile(p string) ([]byte, error)          { return os.ReadFile(h.real(p)) }
func (h hostView) readlink(p string) (string, error)          { return os.Readlink(h.real(p)) }
func (h hostView) xattrs(p string) (map[string][]byte, error) { return readXattrs(h.real(p)) }

type overlayView struct{ o *overlay.FS }

func (v overlayView) lstat(p string) (*overlay.Stat, error) {
	fi, err := v.o.Lstat(p)
	if err != nil {
		return nil, err
	}
	return fi.Sys().(*overlay.Stat), nil
}
func (v overlayView) readDir(p string) ([]string, error) {
	fis, err := v.o.ReadDir(p)
	var names []string
	for _, fi := range fis {
		names = append(names, fi.Name())
	}
	return names, err
}
func (v overlayView) readFile(p string) ([]byte, error) {
	f, err := v.o.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}
func (v overlayView) readlink(p string) (string, error) { return v.o.Readlink(p) }
func (v overlayView) xattrs(p string) (map[string][]byte, error) {
	names, err := v.o.Listxattr(p)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, n := range names {
		if out[n], err = v.o.Getxattr(p, n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// describeTree walks a tree: every path with its type, mode, owner, mtime, content hash,
// symlink target, device number and xattrs.
func describeTree(t testing.TB, v treeView) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(p string)
	walk = func(p string) {
		st, err := v.lstat(p)
		if err != nil {
			t.Fatalf("lstat /%s: %v", p, err)
		}
		d := fmt.Sprintf("mode=%o uid=%d gid=%d mtime=%d", st.Mode, st.Uid, st.Gid, st.Mtime.Unix())
		switch st.Mode & typeMask {
		case typeReg:
			b, err := v.readFile(p)
			if err != nil {
				t.Fatalf("read /%s: %v", p, err)
			}
			sum := sha256.Sum256(b)
			d += fmt.Sprintf(" size=%d sha=%s", len(b), hex.EncodeToString(sum[:8]))
		case typeLnk:
			target, err := v.readlink(p)
			if err != nil {
				t.Fatalf("readlink /%s: %v", p, err)
			}
			d += " target=" + target
		case typeChr, typeBlk:
			d += fmt.Sprintf(" dev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		x, err := v.xattrs(p)
		if err != nil {
			t.Fatalf("xattrs /%s: %v", p, err)
		}
		for _, k := range sortedKeys(x) {
			d += fmt.Sprintf(" xattr[%s]=%x", k, x[k])
		}
		out["/"+p] = d
		if st.Mode&typeMask == typeDir {
			names, err := v.readDir(p)
			if err != nil {
				t.Fatalf("readdir /%s: %v", p, err)
			}
			sort.Strings(names)
			for _, n := range names {
				walk(path.Join(p, n))
			}
		}
	}
	walk("")
	return out
}

// compareTrees reports every difference between two tree descriptions.
func compareTrees(t testing.TB, what string, want, got map[string]string) {
	t.Helper()
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	bad := 0
	for _, k := range keys {
		if want[k] != got[k] {
			t.Errorf("%s: %s:\n tar: %s\n got: %s", what, k, or(want[k], "(missing)"), or(got[k], "(missing)"))
			if bad++; bad > 20 {
				t.Fatal("too many differences")
			}
		}
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// viewStack compares a stack of layer dirs (topmost first) with the flattened tree, through
// package overlay and through the kernel's overlayfs.
func viewStack(t testing.TB, lowers []string, want map[string]string) {
	t.Helper()
	board := t.TempDir()
	o, err := overlay.New(overlay.Options{Upper: filepath.Join(board, "upper"), Work: filepath.Join(board, "work"), Lowers: lowers})
	must(t, err)
	// The merged root's own attributes are the upper's (a board's, made by overlay.New), as
	// with the kernel's overlayfs; below it everything comes from the layers.
	got, wantBelow := describeTree(t, overlayView{o}), map[string]string{}
	for k, v := range want {
		wantBelow[k] = v
	}
	delete(got, "/")
	delete(wantBelow, "/")
	compareTrees(t, "package overlay", wantBelow, got)
	mnt := t.TempDir()
	opts := "lowerdir=" + strings.Join(lowers, ":")
	if len(lowers) == 1 {
		opts += ":" + t.TempDir() // overlayfs wants two lowers without an upper
	}
	if err := unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, opts); err != nil {
		t.Fatalf("mount -t overlay -o %s: %v", opts, err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	compareTrees(t, "kernel overlayfs", want, describeTree(t, hostView(mnt)))
}

// ociImageSpec describes one image of a test archive.
type ociImageSpec struct {
	layers   [][]fx
	compress []string // per layer: "", "gzip" or "zstd"
	platform ociPlatform
	ref      string
	// hooks change what is written, for the hostile cases: a layer's blob and descriptor,
	// the config, the manifest (digests are computed after them).
	layerHook    func(i int, blob *[]byte, d *ociDescriptor)
	configHook   func(cfg map[string]any)
	manifestHook func(m *ociManifest)
}

func arm64Spec(layers [][]fx, compress ...string) ociImageSpec {
	return ociImageSpec{layers: layers, compress: compress, platform: ociPlatform{OS: "linux", Architecture: "arm64"}}
}

func compressBlob(t testing.TB, b []byte, how string) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch how {
	case "":
		return b
	case "gzip":
		w := gzip.NewWriter(&buf)
		w.Write(b)
		must(t, w.Close())
	case "zstd":
		w, err := zstd.NewWriter(&buf)
		must(t, err)
		w.Write(b)
		must(t, w.Close())
	}
	return buf.Bytes()
}

var layerMedia = map[string]string{
	"":     "application/vnd.oci.image.layer.v1.tar",
	"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
	"zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}

// writeBlob stores b under blobs/sha256 of an OCI layout and returns its descriptor.
func writeBlob(t testing.TB, dir, media string, b []byte) ociDescriptor {
	t.Helper()
	sum := sha256.Sum256(b)
	h := hex.EncodeToString(sum[:])
	must(t, os.MkdirAll(filepath.Join(dir, "blobs/sha256"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "blobs/sha256", h), b, 0o644))
	return ociDescriptor{MediaType: media, Digest: "sha256:" + h, Size: int64(len(b))}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	must(t, err)
	return b
}

// ociImageConfig is the config JSON of an image of the given uncompressed layers.
func ociImageConfig(t testing.TB, p ociPlatform, tars [][]byte) []byte {
	t.Helper()
	var diffs []string
	for _, l := range tars {
		s := sha256.Sum256(l)
		diffs = append(diffs, "sha256:"+hex.EncodeToString(s[:]))
	}
	return mustJSON(t, map[string]any{
		"architecture": p.Architecture, "os": p.OS, "variant": p.Variant,
		"config": map[string]any{"Cmd": []string{"/bin/sh"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffs},
	})
}

// writeOCIImage writes one image's layers, config and manifest into an OCI layout dir and
// returns the manifest's descriptor.
func writeOCIImage(t testing.TB, dir string, s ociImageSpec) ociDescriptor {
	t.Helper()
	var tars [][]byte
	var layers []ociDescriptor
	for i, l := range s.layers {
		b := layerTar(t, l)
		tars = append(tars, b)
		how := ""
		if i < len(s.compress) {
			how = s.compress[i]
		}
		blob := compressBlob(t, b, how)
		d := writeBlob(t, dir, layerMedia[how], blob)
		if s.layerHook != nil {
			s.layerHook(i, &blob, &d)
			sum, err := parseDigest(d.Digest)
			if err == nil {
				must(t, os.WriteFile(filepath.Join(dir, blobPath(sum)), blob, 0o644))
			}
		}
		layers = append(layers, d)
	}
	cj := ociImageConfig(t, s.platform, tars)
	if s.configHook != nil {
		var c map[string]any
		must(t, json.Unmarshal(cj, &c))
		s.configHook(c)
		cj = mustJSON(t, c)
	}
	cfg := writeBlob(t, dir, "application/vnd.oci.image.config.v1+json", cj)
	mf := ociManifest{SchemaVersion: 2, MediaType: mediaOCIManifest, Config: cfg, Layers: layers}
	if s.manifestHook != nil {
		s.manifestHook(&mf)
	}
	m := writeBlob(t, dir, mediaOCIManifest, mustJSON(t, mf))
	p := s.platform
	m.Platform = &p
	if s.ref != "" {
		m.Annotations = map[string]string{annotationRefName: s.ref}
	}
	return m
}

// writeOCILayout writes an OCI image layout holding the images; index.json names them all.
func writeOCILayout(t testing.TB, dir string, specs ...ociImageSpec) {
	t.Helper()
	must(t, os.MkdirAll(dir, 0o755))
	var ms []ociDescriptor
	for _, s := range specs {
		ms = append(ms, writeOCIImage(t, dir, s))
	}
	must(t, os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "index.json"), mustJSON(t, ociIndex{SchemaVersion: 2, MediaType: mediaOCIIndex, Manifests: ms}), 0o644))
}

// writeDockerSave writes a legacy `docker save` archive dir: <id>/layer.tar per layer (equal
// layers linked, as docker does), <config sha>.json, manifest.json and repositories.
func writeDockerSave(t testing.TB, dir string, specs ...ociImageSpec) {
	t.Helper()
	must(t, os.MkdirAll(dir, 0o755))
	type entry struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	var mf []entry
	seen := map[string]string{}
	for n, s := range specs {
		var tars [][]byte
		e := entry{RepoTags: []string{s.ref}}
		for i, l := range s.layers {
			b := layerTar(t, l)
			tars = append(tars, b)
			// docker's legacy layer ids depend on the image: a layer two images share is
			// stored once and linked from the other's dir
			sum := sha256.Sum256(append([]byte(fmt.Sprint(n, i)), b...))
			id := hex.EncodeToString(sum[:])
			must(t, os.MkdirAll(filepath.Join(dir, id), 0o755))
			must(t, os.WriteFile(filepath.Join(dir, id, "VERSION"), []byte("1.0"), 0o644))
			d := sha256.Sum256(b)
			if prev, ok := seen[string(d[:])]; ok && prev != id {
				os.Remove(filepath.Join(dir, id, "layer.tar"))
				must(t, os.Symlink("../"+prev+"/layer.tar", filepath.Join(dir, id, "layer.tar")))
			} else {
				must(t, os.WriteFile(filepath.Join(dir, id, "layer.tar"), b, 0o644))
				seen[string(d[:])] = id
			}
			e.Layers = append(e.Layers, id+"/layer.tar")
		}
		cfg := ociImageConfig(t, s.platform, tars)
		cs := sha256.Sum256(cfg)
		e.Config = hex.EncodeToString(cs[:]) + ".json"
		must(t, os.WriteFile(filepath.Join(dir, e.Config), cfg, 0o644))
		mf = append(mf, e)
	}
	must(t, os.WriteFile(filepath.Join(dir, "manifest.json"), mustJSON(t, mf), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "repositories"), []byte("{}"), 0o644))
}

// tarUp packs dir into a tar file with GNU tar, as `tar -cf x.tar -C layout .` does.
func tarUp(t testing.TB, dir string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(dir)+".tar")
	cmd := exec.Command("tar", "-cf", out, "-C", dir, ".")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, b)
	}
	return out
}

// writeFlatDockerArchive writes a docker archive the way skopeo (docker-archive:) and crane
// (tarball) write one: layers as top-level <hex>.tar or <hex>.tar.gz, the config as
// sha256:<hex>.
func writeFlatDockerArchive(t testing.TB, dir string, s ociImageSpec, gz bool) {
	t.Helper()
	must(t, os.MkdirAll(dir, 0o755))
	var tars [][]byte
	var layers []string
	for _, l := range s.layers {
		b := layerTar(t, l)
		tars = append(tars, b)
		name := sha256Hex(b) + ".tar"
		if gz {
			b = compressBlob(t, b, "gzip")
			name = sha256Hex(b) + ".tar.gz"
		}
		must(t, os.WriteFile(filepath.Join(dir, name), b, 0o644))
		layers = append(layers, name)
	}
	cfg := ociImageConfig(t, s.platform, tars)
	cname := "sha256:" + sha256Hex(cfg)
	must(t, os.WriteFile(filepath.Join(dir, cname), cfg, 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "manifest.json"), mustJSON(t, []map[string]any{
		{"Config": cname, "RepoTags": []string{s.ref}, "Layers": layers}}), 0o644))
}
