package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	"gopkg.in/yaml.v3"
)

// Migration of store layout 1 (layoutv1.go) to layout 2, one image at a time, by renames
// only: a layer's tree is the very directory the image had, so every file keeps its inode,
// and the image's stack keeps its order (root at the bottom, prep above it). A board's
// lowers are thus the same inodes at the same positions, and the NFS handles it holds
// (overlay FileIDs: layer position and st_ino) stay valid.
//
// Steps for image NAME, each one safe to repeat after a crash:
//  1. NAME/.mig-root/ and NAME/.mig-prep/ get the layer's manifest and layer.yaml;
//  2. NAME/.migrate.yaml, the plan (the new image.yaml and the layer digests), is written:
//     from here on the migration only moves forward;
//  3. NAME/root is renamed to NAME/.mig-root/tree, then NAME/.mig-root to layers/<digest>
//     (same for prep);
//  4. NAME/image.yaml is replaced by the new one (rename);
//  5. NAME/manifest, then the plan, are removed.
//
// A migrated layer's manifest carries a note naming the image it came from, so two layout 1
// images with the same tree stay two layers (merging them would change the inodes of one).

const (
	planFileName = ".migrate.yaml"
	migPrefix    = ".mig-"
)

// migrationPlan is NAME/.migrate.yaml.
type migrationPlan struct {
	Info Info   `yaml:"info"`
	Root string `yaml:"root"`
	Prep string `yaml:"prep,omitempty"`
}

func parsePlan(b []byte) (*migrationPlan, error) {
	if len(b) > maxInfoSize {
		return nil, fmt.Errorf("%d bytes, larger than any plan pifleet writes", len(b))
	}
	var p migrationPlan
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if err := CheckDigest(p.Root); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	want := []string{p.Root}
	if p.Prep != "" {
		if err := CheckDigest(p.Prep); err != nil {
			return nil, fmt.Errorf("prep: %w", err)
		}
		want = append(want, p.Prep)
	}
	if len(p.Info.Layers) != len(want) || p.Info.Layers[0] != want[0] || len(want) == 2 && p.Info.Layers[1] != want[1] {
		return nil, errors.New("layers do not match root and prep")
	}
	y, err := yaml.Marshal(&p.Info)
	if err != nil {
		return nil, err
	}
	if _, err := parseInfo(y); err != nil {
		return nil, fmt.Errorf("info: %w", err)
	}
	return &p, nil
}

// isV1Image reports whether dir is an image in layout 1 (root/ and a manifest beside
// image.yaml) or one whose migration has begun.
func isV1Image(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, planFileName)); err == nil {
		return true
	}
	fi, err := os.Stat(filepath.Join(dir, rootDirName))
	if err != nil || !fi.IsDir() {
		return false
	}
	_, err = os.Stat(filepath.Join(dir, manifestName))
	return err == nil
}

// IsLayout1Image reports whether image name of the store dir is in store layout 1 (or half
// migrated): MigrateLayout1 has yet to convert it.
func IsLayout1Image(dir, name string) bool {
	return CheckName(name) == nil && isV1Image(filepath.Join(dir, name))
}

// Layout1Images lists the images of the store dir that are in store layout 1 (or half
// migrated), sorted.
func Layout1Images(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", dir, err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && CheckName(e.Name()) == nil && isV1Image(filepath.Join(dir, e.Name())) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// MigrateLayout1 converts every image of the store dir that is in layout 1 to layout 2 (see
// above), resuming a migration that was interrupted. The caller must hold the state dir
// exclusively: no server may have the images' trees open by path meanwhile.
func MigrateLayout1(dir string, log *slog.Logger) error {
	return migrateLayout1(dir, log, nil)
}

// migrateLayout1 is MigrateLayout1; step, when set, is called after each step and stops
// the migration when it returns an error (the crash tests).
func migrateLayout1(dir string, log *slog.Logger, step func(image, what string) error) error {
	if log == nil {
		log = slog.Default()
	}
	if step == nil {
		step = func(string, string) error { return nil }
	}
	names, err := Layout1Images(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, layersDirName), 0o755); err != nil {
		return fmt.Errorf("image store %s: %w", dir, err)
	}
	for _, name := range names {
		if err := migrateImage(dir, name, log, step); err != nil {
			return fmt.Errorf("migrate image %s to store layout 2: %w", name, err)
		}
	}
	return nil
}

func migrateImage(dir, name string, log *slog.Logger, step func(image, what string) error) error {
	imDir := filepath.Join(dir, name)
	planPath := filepath.Join(imDir, planFileName)
	var plan *migrationPlan
	if b, err := os.ReadFile(planPath); err == nil {
		if plan, err = parsePlan(b); err != nil {
			return fmt.Errorf("%s: %w", planPath, err)
		}
		log.Info("resuming the migration of an image to store layout 2", "image", name)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	} else {
		if plan, err = planImage(dir, name, log); err != nil {
			return err
		}
		if err := step(name, "staged"); err != nil {
			return err
		}
		y, err := yaml.Marshal(plan)
		if err != nil {
			return err
		}
		if err := writeSynced(planPath+".tmp", y); err != nil {
			return err
		}
		if err := os.Rename(planPath+".tmp", planPath); err != nil {
			return err
		}
		syncDir(imDir)
		log.Info("migrating an image to store layout 2 (renames only)", "image", name, "root", short(plan.Root), "prep", short(plan.Prep))
	}
	if err := step(name, "planned"); err != nil {
		return err
	}
	moves := []struct{ src, digest string }{{rootDirName, plan.Root}}
	if plan.Prep != "" {
		moves = append(moves, struct{ src, digest string }{prepDirName, plan.Prep})
	}
	for _, m := range moves {
		stage := filepath.Join(imDir, migPrefix+m.src)
		final := filepath.Join(dir, layersDirName, m.digest)
		if _, err := os.Stat(filepath.Join(imDir, m.src)); err == nil {
			if err := os.Rename(filepath.Join(imDir, m.src), filepath.Join(stage, layerTreeName)); err != nil {
				return err
			}
			syncDir(imDir)
			if err := step(name, "moved "+m.src); err != nil {
				return err
			}
		}
		if _, err := os.Stat(stage); err == nil {
			if err := os.Rename(stage, final); err != nil {
				return fmt.Errorf("layer %s: %w", short(m.digest), err)
			}
			syncDir(filepath.Join(dir, layersDirName))
			if err := step(name, "published "+m.src); err != nil {
				return err
			}
		}
		if _, err := os.Stat(filepath.Join(final, layerInfoName)); err != nil {
			return fmt.Errorf("layer %s of %s: %w", short(m.digest), m.src, err)
		}
	}
	y, err := yaml.Marshal(&plan.Info)
	if err != nil {
		return err
	}
	tmp := filepath.Join(imDir, tmpPrefix+infoFileName)
	if err := writeSynced(tmp, y); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(imDir, infoFileName)); err != nil {
		return err
	}
	syncDir(imDir)
	if err := step(name, "image.yaml"); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(imDir, manifestName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Remove(planPath); err != nil {
		return err
	}
	syncDir(imDir)
	return nil
}

// planImage stages the layer files of a layout 1 image (step 1) and returns the plan.
func planImage(dir, name string, log *slog.Logger) (*migrationPlan, error) {
	imDir := filepath.Join(dir, name)
	b, err := os.ReadFile(filepath.Join(imDir, infoFileName))
	if err != nil {
		return nil, err
	}
	old, err := parseV1Info(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(imDir, infoFileName), err)
	}
	mb, err := os.ReadFile(filepath.Join(imDir, manifestName))
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(mb); old.ManifestSHA256 != "" && hex.EncodeToString(sum[:]) != old.ManifestSHA256 {
		log.Warn("the image's manifest does not match the checksum in its image.yaml (edited?); migrating it as it is: run `pifleet image verify` after",
			"image", name, "manifest", filepath.Join(imDir, manifestName))
	}
	rootRecs, err := parseManifest(bytes.NewReader(mb))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(imDir, manifestName), err)
	}
	note := "migrated from store layout 1, image " + name
	rootDigest, rootMeta, err := stageLayer(filepath.Join(imDir, migPrefix+rootDirName), note+" (root)", rootRecs,
		layerMeta{Created: old.Imported, Comment: "root of " + old.Source})
	if err != nil {
		return nil, err
	}
	plan := &migrationPlan{Root: rootDigest, Info: Info{Name: name, Layers: []string{rootDigest}, Source: old.Source,
		Format: old.Format, SHA256: old.SHA256, Files: rootMeta.Files, Bytes: rootMeta.Bytes, Imported: old.Imported,
		Prepared: old.Prepared, Changes: old.Changes}}
	prep := filepath.Join(imDir, prepDirName)
	if fi, err := os.Stat(prep); err == nil && fi.IsDir() {
		// An image prepared by pifleet before layers: its prep dir is a layer as it is. Not
		// content-checked: it has no manifest, it gets one now.
		recs, err := scanTree(context.Background(), prep)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", prep, err)
		}
		d, m, err := stageLayer(filepath.Join(imDir, migPrefix+prepDirName), note+" (prep)", recs,
			layerMeta{Created: old.Imported, Comment: "NFS-root preparation of " + old.Source})
		if err != nil {
			return nil, err
		}
		plan.Prep = d
		plan.Info.Layers = append(plan.Info.Layers, d)
		plan.Info.Files += m.Files
		plan.Info.Bytes += m.Bytes
	}
	return plan, nil
}

// stageLayer writes a layer's manifest and layer.yaml into stage (created if missing) and
// returns the digest.
func stageLayer(stage, note string, recs []record, meta layerMeta) (string, layerMeta, error) {
	var mf bytes.Buffer
	if err := writeManifestNote(&mf, note, recs); err != nil {
		return "", meta, err
	}
	sum := sha256.Sum256(mf.Bytes())
	for _, r := range recs {
		meta.Files++
		if r.Link == "" && r.Mode&typeMask == typeReg {
			meta.Bytes += r.Size
		}
	}
	if meta.Files == 0 {
		return "", meta, fmt.Errorf("%s: empty manifest", stage)
	}
	y, err := yaml.Marshal(meta)
	if err != nil {
		return "", meta, err
	}
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return "", meta, err
	}
	for n, b := range map[string][]byte{manifestName: mf.Bytes(), layerInfoName: y} {
		if err := writeSynced(filepath.Join(stage, n), b); err != nil {
			return "", meta, err
		}
	}
	return hex.EncodeToString(sum[:]), meta, nil
}
