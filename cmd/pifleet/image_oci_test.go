package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestImageImportOCI: `image import` takes an OCI image layout, and --ref picks the image
// (an unknown one is refused naming what the archive has).
func TestImageImportOCI(t *testing.T) {
	dir := t.TempDir()
	layout := filepath.Join(dir, "layout")
	blob := func(media string, b []byte) map[string]any {
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		if err := os.MkdirAll(filepath.Join(layout, "blobs/sha256"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(layout, "blobs/sha256", h), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return map[string]any{"mediaType": media, "digest": "sha256:" + h, "size": len(b)}
	}
	mustJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644, Size: 6},
		{Name: "boot/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "boot/firmware/", Typeflag: tar.TypeDir, Mode: 0o755},
	} {
		h.Uid, h.Gid, h.ModTime = os.Getuid(), os.Getgid(), time.Unix(1700000000, 0)
		tw.WriteHeader(h)
		if h.Size > 0 {
			tw.Write([]byte("kiosk\n"))
		}
	}
	tw.Close()
	diff := sha256.Sum256(layer.Bytes())
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(layer.Bytes())
	zw.Close()
	ld := blob("application/vnd.oci.image.layer.v1.tar+gzip", gz.Bytes())
	cd := blob("application/vnd.oci.image.config.v1+json", mustJSON(map[string]any{
		"architecture": "arm64", "os": "linux", "rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diff[:])}},
	}))
	md := blob("application/vnd.oci.image.manifest.v1+json", mustJSON(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cd, "layers": []any{ld},
	}))
	md["annotations"] = map[string]string{"org.opencontainers.image.ref.name": "kiosk:v1"}
	os.WriteFile(filepath.Join(layout, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	os.WriteFile(filepath.Join(layout, "index.json"), mustJSON(map[string]any{"schemaVersion": 2, "manifests": []any{md}}), 0o644)
	cfg := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(cfg, []byte("server: {state: st, ports: {http: 1}}\n"), 0o644)

	code, _, errOut := runCLI("image", "import", "-c", cfg, "--name", "k", "--ref", "other", layout)
	if code != 1 || !strings.Contains(errOut, `no image called "other"`) || !strings.Contains(errOut, `"kiosk:v1"`) {
		t.Errorf("unknown ref: exit %d, stderr %q", code, errOut)
	}
	code, out, errOut := runCLI("image", "import", "-c", cfg, "--name", "k", "--ref", "kiosk:v1", layout)
	if code != 0 || !strings.HasPrefix(out, "imported k: ") || strings.Contains(out, "sha256") {
		t.Errorf("import: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
