package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestImportContainerHostile: archives that are corrupt, lie or attack the importer are
// refused with an error that says what is wrong, and leave no image, no layer and no temp
// dir in the store, and nothing outside it.
func TestImportContainerHostile(t *testing.T) {
	needRoot(t)
	needTool(t, "tar")
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	must(t, os.WriteFile(victim, []byte("untouched"), 0o644))
	base := ociFixtureLayers()
	layout := func(spec ociImageSpec, after func(dir string)) string {
		dir := filepath.Join(t.TempDir(), "layout")
		writeOCILayout(t, dir, spec)
		if after != nil {
			after(dir)
		}
		return dir
	}
	// oneLayer is an image of the fixture's base and one more layer made of members.
	oneLayer := func(members ...fx) string {
		return layout(arm64Spec([][]fx{base[0], members}, "gzip", "gzip"), nil)
	}
	layerFile := func(dir string, i int) string {
		b, err := os.ReadFile(filepath.Join(dir, "index.json"))
		must(t, err)
		var idx ociIndex
		must(t, json.Unmarshal(b, &idx))
		sum, _ := parseDigest(idx.Manifests[0].Digest)
		mb, err := os.ReadFile(filepath.Join(dir, blobPath(sum)))
		must(t, err)
		m, err := parseOCIManifest(mb)
		must(t, err)
		ls, _ := parseDigest(m.Layers[i].Digest)
		return filepath.Join(dir, blobPath(ls))
	}
	tamper := arm64Spec(base)
	tamper.layerHook = func(i int, blob *[]byte, d *ociDescriptor) {
		if i == 2 { // the top layer: the two below are already in the store when it fails
			*blob = bytes.Replace(*blob, []byte("fresh\n"), []byte("FRESH\n"), 1)
		}
	}
	badDiff := arm64Spec(base, "gzip", "gzip", "gzip")
	badDiff.configHook = func(c map[string]any) {
		c["rootfs"].(map[string]any)["diff_ids"].([]any)[1] = "sha256:" + strings.Repeat("0", 64)
	}
	lyingMedia := arm64Spec(base)
	lyingMedia.layerHook = func(i int, _ *[]byte, d *ociDescriptor) { d.MediaType = layerMedia["gzip"] }
	badSize := arm64Spec(base, "gzip", "gzip", "gzip")
	badSize.layerHook = func(i int, _ *[]byte, d *ociDescriptor) { d.Size-- }
	sha512 := arm64Spec(base)
	sha512.manifestHook = func(m *ociManifest) { m.Layers[0].Digest = "sha512:" + strings.Repeat("ab", 64) }
	unknownMedia := arm64Spec(base)
	unknownMedia.manifestHook = func(m *ociManifest) { m.Layers[1].MediaType = "application/vnd.example.squashfs" }
	tooMany := arm64Spec(base)
	tooMany.manifestHook = func(m *ociManifest) {
		for len(m.Layers) <= maxImageLayers {
			m.Layers = append(m.Layers, m.Layers[0])
		}
	}
	lyingIndex := arm64Spec(base)
	lyingIndex.configHook = func(c map[string]any) { c["architecture"] = "amd64" }

	cases := []struct {
		name, want string
		src        string
	}{
		{"missing blob", "missing from the archive", layout(arm64Spec(base), func(dir string) { os.Remove(layerFile(dir, 1)) })},
		{"tampered top layer", "corrupt or tampered", layout(tamper, nil)},
		{"diff_id mismatch", "diff_id", layout(badDiff, nil)},
		{"media type says gzip, blob is plain", "but the blob is not compressed", layout(lyingMedia, nil)},
		{"size mismatch", "the manifest says", layout(badSize, nil)},
		{"sha512 digest", "only sha256", layout(sha512, nil)},
		{"unknown layer media type", "not a layer pifleet reads", layout(unknownMedia, nil)},
		{"too many layers", "1 to 128", layout(tooMany, nil)},
		{"index says arm64, config says amd64", "config says linux/amd64", layout(lyingIndex, nil)},
		{"huge index.json", "more than", layout(arm64Spec(base), func(dir string) {
			must(t, os.WriteFile(filepath.Join(dir, "index.json"), bytes.Repeat([]byte(" "), maxArchiveJSON+1), 0o644))
		})},
		{"fifo for index.json", "not a regular file", layout(arm64Spec(base), func(dir string) {
			os.Remove(filepath.Join(dir, "index.json"))
			must(t, unix.Mkfifo(filepath.Join(dir, "index.json"), 0o644))
		})},
		{"blob symlinked out of the layout", "leads out of the archive", layout(arm64Spec(base), func(dir string) {
			f := layerFile(dir, 0)
			os.Rename(f, victim+".blob")
			must(t, os.Symlink(victim+".blob", f))
		})},
		{"absolute symlink member in a layout tar", "leads out of the archive", tarUp(t, layout(arm64Spec(base), func(dir string) {
			f := layerFile(dir, 0)
			os.Remove(f)
			must(t, os.Symlink(victim, f))
		}))},
		{"relative symlink member out of a layout tar", "leads out of the archive", tarUp(t, layout(arm64Spec(base), func(dir string) {
			f := layerFile(dir, 0)
			os.Remove(f)
			must(t, os.Symlink("../../../../../../../../"+victim, f))
		}))},
		{"truncated layout tar", "truncated|unexpected EOF", func() string {
			p := tarUp(t, layout(arm64Spec(base), nil))
			fi, _ := os.Stat(p)
			must(t, os.Truncate(p, fi.Size()/2))
			return p
		}()},
		{"path traversal", "leaves the image root", oneLayer(tfile("../../escape", "x", 0o644, mt2))},
		{"write through a planted symlink", "not a directory", oneLayer(tsym("evil", outside, mt2), tfile("evil/victim", "owned", 0o644, mt2))},
		{"hard link to a later file", "not a file imported before it", oneLayer(thard("etc/a", "etc/b", mt2), tfile("etc/b", "b", 0o644, mt2))},
		{"hard link out of the layer", "leaves the image root", oneLayer(thard("etc/shadow", "../../../etc/shadow", mt2))},
		{"aufs metadata", "aufs metadata", oneLayer(tdir(".wh..wh.plnk/", 0o700, mt2), tfile(".wh..wh.plnk/1.2", "", 0o644, mt2))},
		{"whiteout name as dir", "used as a directory", oneLayer(tfile("etc/.wh.x/y", "", 0o644, mt2))},
		{"whiteout of ..", "whiteout of", oneLayer(twh("etc/.wh..", mt2))},
		{"opaque root", "opaque marker on the root", oneLayer(twh(".wh..wh..opq", mt2))},
		{"deleted and added", "both", oneLayer(twh("etc/.wh.new", mt2), tfile("etc/new", "x", 0o644, mt2))},
		{"char device 0/0", "whiteout in the overlay format", oneLayer(tdev("etc/fake", tar.TypeChar, 0o644, 0, 0, mt2))},
		{"overlay xattr", "belongs to overlayfs", oneLayer(tdir("etc/", 0o755, mt2, xa("trusted.overlay.opaque", "y")))},
		{"path longer than PATH_MAX", "more than 4096 bytes", oneLayer(tfile("etc/"+strings.Repeat("x/", 2100)+"f", "x", 0o644, mt2))},
		{"huge PAX header", "header field too long", func() string {
			spec := arm64Spec([][]fx{base[0], {tfile("paxhdr", strings.Repeat("x", 2<<20), 0o644, mt2)}})
			spec.layerHook = func(i int, blob *[]byte, d *ociDescriptor) {
				if i == 1 { // make the member a 2 MiB PAX header (Go's writer will not write one)
					(*blob)[156] = tar.TypeXHeader
					copy((*blob)[148:156], fmt.Sprintf("%06o\x00 ", tarChecksum((*blob)[:512])))
					*d = writeBlob(t, t.TempDir(), d.MediaType, *blob)
				}
			}
			spec.configHook = func(c map[string]any) {
				c["rootfs"].(map[string]any)["diff_ids"].([]any)[1] = "sha256:" + strings.Repeat("1", 64)
			}
			return layout(spec, nil)
		}()},
		{"docker save layer path out of the archive", "not a file inside the archive", func() string {
			dir := filepath.Join(t.TempDir(), "save")
			writeDockerSave(t, dir, arm64Spec(base))
			b, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
			b = bytes.Replace(b, []byte(`"Layers":["`), []byte(`"Layers":["../../../../etc/passwd","`), 1)
			b = bytes.Replace(b, []byte(`/layer.tar"]`), []byte(`/layer.tar"]`), 1)
			must(t, os.WriteFile(filepath.Join(dir, "manifest.json"), b, 0o644))
			return tarUp(t, dir)
		}()},
		{"docker save config tampered", "corrupt or tampered", func() string {
			dir := filepath.Join(t.TempDir(), "save")
			writeDockerSave(t, dir, arm64Spec(base))
			ents, _ := filepath.Glob(filepath.Join(dir, "*.json"))
			for _, e := range ents {
				if filepath.Base(e) != "manifest.json" {
					b, _ := os.ReadFile(e)
					must(t, os.WriteFile(e, bytes.Replace(b, []byte(`"os":"linux"`), []byte(`"os": "linux"`), 1), 0o644))
				}
			}
			return dir
		}()},
	}
	st := newTestStore(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := st.Import(context.Background(), c.src, "hostile", ImportOptions{Logger: quietLog()})
			if err == nil {
				t.Fatal("imported")
			}
			if !slices.ContainsFunc(strings.Split(c.want, "|"), func(w string) bool { return strings.Contains(err.Error(), w) }) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			t.Log(err)
			if len(err.Error()) > 600 {
				t.Errorf("error of %d bytes", len(err.Error()))
			}
			assertEmptyStore(t, st)
			if b, _ := os.ReadFile(victim); string(b) != "untouched" {
				t.Fatalf("file outside the store changed: %q", b)
			}
			if ents, _ := os.ReadDir(outside); len(ents) > 2 {
				t.Fatalf("files appeared outside the store: %v", ents)
			}
		})
	}
}

// TestLayerDecompressionBound: a zstd layer that unpacks to more than its bound stops with
// an error instead of filling the disk; the bound leaves room for files of zeros.
func TestLayerDecompressionBound(t *testing.T) {
	needRoot(t)
	zeros := layerTar(t, []fx{tfile("big", string(make([]byte, 8<<20)), 0o644, mt1)})
	blob := compressBlob(t, zeros, "zstd")
	if len(blob) > 64<<10 {
		t.Fatalf("zstd blob of %d bytes", len(blob))
	}
	dir := t.TempDir()
	writeBlob(t, dir, layerMedia["zstd"], blob)
	a, err := openDirArchive(dir)
	must(t, err)
	defer a.close()
	d := writeBlob(t, dir, layerMedia["zstd"], blob)
	sum, _ := parseDigest(d.Digest)
	l := containerLayer{Path: blobPath(sum), Digest: sum, Size: d.Size, MediaType: d.MediaType, DiffID: sha256Hex(zeros)}
	ls, err := openLayer(a, l, nil)
	must(t, err)
	defer ls.close()
	if ls.bounded.left != maxLayerFree+maxLayerRatio*int64(len(blob)) {
		t.Errorf("bound %d", ls.bounded.left)
	}
	ls.bounded.left = 1 << 20 // as if the blob asked for more than its bound
	_, err = writeContainerLayer(context.Background(), "bomb", ls.tar, t.TempDir(), defaultRoot, nil)
	if err == nil || !strings.Contains(err.Error(), "decompression bomb") {
		t.Fatalf("got %v", err)
	}
	// within the bound the same layer imports, its 8 MiB of zeros as a hole
	ls2, err := openLayer(a, l, nil)
	must(t, err)
	defer ls2.close()
	out := t.TempDir()
	if _, err := writeContainerLayer(context.Background(), "zeros", ls2.tar, out, defaultRoot, nil); err != nil {
		t.Fatal(err)
	}
	must(t, ls2.finish())
	var st unix.Stat_t
	must(t, unix.Stat(filepath.Join(out, "big"), &st))
	if st.Size != 8<<20 || st.Blocks > 8 {
		t.Errorf("big: size %d, %d blocks", st.Size, st.Blocks)
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// tarChecksum is a tar header's checksum, its checksum field counted as spaces.
func tarChecksum(h []byte) int {
	sum := 0
	for i, b := range h {
		if i >= 148 && i < 156 {
			b = ' '
		}
		sum += int(b)
	}
	return sum
}

// TestFailedContainerImportKeepsOtherLayers: a failed import removes the layers it added and
// no other: an old layer no image names may still be stacked by a running board.
func TestFailedContainerImportKeepsOtherLayers(t *testing.T) {
	needRoot(t)
	st := newTestStore(t)
	dir, err := st.TempDir("orphan")
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "f"), []byte("orphan"), 0o644))
	orphan, err := st.AddLayer(dir, "an old layer no image names")
	must(t, err)
	old := time.Now().Add(-72 * time.Hour)
	must(t, os.Chtimes(filepath.Dir(orphan.Dir), old, old))
	spec := arm64Spec(ociFixtureLayers())
	spec.layerHook = func(i int, blob *[]byte, d *ociDescriptor) {
		if i == 2 {
			*blob = bytes.Replace(*blob, []byte("fresh\n"), []byte("FRESH\n"), 1)
		}
	}
	layout := filepath.Join(t.TempDir(), "layout")
	writeOCILayout(t, layout, spec)
	if _, err := st.Import(context.Background(), layout, "x", ImportOptions{Logger: quietLog()}); err == nil {
		t.Fatal("tampered import succeeded")
	}
	ls, err := st.AllLayers()
	must(t, err)
	if len(ls) != 1 || ls[0].Digest != orphan.Digest {
		t.Errorf("layers after the failed import: %v, want only the old one", ls)
	}
}
