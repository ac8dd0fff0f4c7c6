package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Store layout 1 is what pifleet wrote before layers: one dir per image,
//
//	images/NAME/root/       the imported tree
//	images/NAME/prep/       the NFS-root preparation, an overlayfs upper above root/ (optional)
//	images/NAME/manifest    root/'s manifest (# pifleet manifest v1)
//	images/NAME/image.yaml  v1Info
//
// and a board stacked [identity, prep, root]. MigrateLayout1 (migrate.go) turns it into
// layout 2 by renames; ImportLayout1 writes it, for the upgrade tests' fixtures.

// v1Info is image.yaml in store layout 1.
type v1Info struct {
	Name           string    `yaml:"name"`
	Source         string    `yaml:"source"`
	Format         string    `yaml:"format"`
	SHA256         string    `yaml:"sha256,omitempty"`
	Files          int64     `yaml:"files"`
	Bytes          int64     `yaml:"bytes"`
	Imported       time.Time `yaml:"imported"`
	ManifestSHA256 string    `yaml:"manifest_sha256"`
	Prepared       bool      `yaml:"prepared"`
	Changes        []string  `yaml:"changes,omitempty"`
}

func parseV1Info(b []byte) (*v1Info, error) {
	if len(b) > maxInfoSize {
		return nil, fmt.Errorf("%d bytes, larger than any image.yaml pifleet writes", len(b))
	}
	var info v1Info
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&info); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if info.Files < 0 || info.Bytes < 0 {
		return nil, fmt.Errorf("negative file count or byte count")
	}
	return &info, nil
}

// ImportLayout1 imports src as image name into the store dir storeDir in store layout 1,
// with the tree writer and preparation Import uses and the manifest and image.yaml
// pifleet wrote before layers. It makes state dirs as an older pifleet left them, for
// upgrade tests; nothing else should call it.
func ImportLayout1(ctx context.Context, storeDir, src, name string, prep bool) error {
	log := slog.New(slog.DiscardHandler)
	abs, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(storeDir, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(storeDir, tmpPrefix+"import-"+name+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	prog := newProgress(nil, name)
	source, err := openSource(ctx, abs, name, tmp, prog, log)
	if err != nil {
		return err
	}
	defer source.close()
	root := filepath.Join(tmp, rootDirName)
	if err := os.Mkdir(root, 0o755); err != nil {
		return err
	}
	tw := newTreeWriter(name, root, prog)
	if err := tw.add(ctx, &entry{Path: "", Mode: typeDir | 0o755, Mtime: time.Now()}); err != nil {
		return err
	}
	if err := source.walk(ctx, tw); err != nil {
		return err
	}
	if err := tw.finish(); err != nil {
		return err
	}
	info := v1Info{Name: name, Source: filepath.Base(abs), Format: source.format, SHA256: source.sha256,
		Files: int64(len(tw.records)), Bytes: tw.bytes, Imported: time.Now().UTC().Truncate(time.Second)}
	if prep {
		changes, err := prepare(ctx, name, root, filepath.Join(tmp, prepDirName), log)
		if err != nil {
			return err
		}
		info.Prepared, info.Changes = len(changes) > 0, changes
	}
	var mf bytes.Buffer
	if err := writeManifest(&mf, tw.records); err != nil {
		return err
	}
	v1 := strings.Replace(mf.String(), manifestHeader, manifestHeaderV1, 1)
	sum := sha256.Sum256([]byte(v1))
	info.ManifestSHA256 = hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(tmp, manifestName), []byte(v1), 0o644); err != nil {
		return err
	}
	y, err := yaml.Marshal(info)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, infoFileName), y, 0o644); err != nil {
		return err
	}
	syncFS(tmp)
	return os.Rename(tmp, filepath.Join(storeDir, name))
}
