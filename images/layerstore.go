package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"
)

// Layer is one immutable, content-addressed layer of the store: a directory tree in the
// kernel overlayfs format (whiteout = char device 0/0, opaque dir = xattr
// trusted.overlay.opaque=y) with the manifest its digest is the sha256 of.
type Layer struct {
	// Digest is the sha256 (hex) of the layer's canonical manifest; the layer's name.
	Digest string
	// Dir is the layer's tree, a lower dir of the overlays that use it.
	Dir string
	// Files counts the paths of the tree (the root, whiteouts and links included).
	Files int64
	// Bytes is the sum of regular file sizes (hard links counted once).
	Bytes int64
	// Created is when the layer was added (UTC, whole seconds).
	Created time.Time
	// Comment says where the layer came from, e.g. "root of 2024-11-19-raspios-bookworm-arm64-lite.img.xz".
	Comment string
}

// Names inside the store and inside one layer's dir.
const (
	layersDirName = "layers"
	layerTreeName = "tree"
	layerInfoName = "layer.yaml"
	lockFileName  = ".lock"
	// orphanGrace is how long a layer no image uses is kept: a process may have added it
	// and not yet made the image that uses it.
	orphanGrace = 24 * time.Hour
	// maxStack bounds an image's layers: the overlay keeps the layer index in 8 bits, and a
	// board adds its upper and identity layer.
	maxStack = 200
)

// opaqueXattr marks an overlayfs opaque dir; its value is "y".
const opaqueXattr = "trusted.overlay.opaque"

var digestRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// CheckDigest returns an error unless d is a layer digest (64 lower-case hex digits).
func CheckDigest(d string) error {
	if !digestRE.MatchString(d) {
		return fmt.Errorf("layer digest %q: want 64 lower-case hex digits", d)
	}
	return nil
}

// layerMeta is what layer.yaml records about a layer. The digest is the dir's name and is
// checked against the manifest by Verify.
type layerMeta struct {
	Files   int64     `yaml:"files"`
	Bytes   int64     `yaml:"bytes"`
	Created time.Time `yaml:"created"`
	Comment string    `yaml:"comment,omitempty"`
}

// maxLayerInfoSize bounds layer.yaml.
const maxLayerInfoSize = 64 << 10

func parseLayerMeta(b []byte) (*layerMeta, error) {
	if len(b) > maxLayerInfoSize {
		return nil, fmt.Errorf("%d bytes, larger than any layer.yaml pifleet writes", len(b))
	}
	m, err := decodeStrict[layerMeta](b)
	if err != nil {
		return nil, err
	}
	if m.Files < 1 || m.Bytes < 0 {
		return nil, errors.New("file count below 1 or negative byte count")
	}
	return m, nil
}

func (s *Store) layersDir() string             { return filepath.Join(s.dir, layersDirName) }
func (s *Store) layerDir(digest string) string { return filepath.Join(s.dir, layersDirName, digest) }

// LayerTree returns the tree dir of a layer (whether or not it exists).
func (s *Store) LayerTree(digest string) string {
	return filepath.Join(s.layerDir(digest), layerTreeName)
}

// Layer reads one layer's layer.yaml.
func (s *Store) Layer(digest string) (Layer, error) {
	if err := CheckDigest(digest); err != nil {
		return Layer{}, err
	}
	p := filepath.Join(s.layerDir(digest), layerInfoName)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return Layer{}, fmt.Errorf("layer %s: not in the store %s", short(digest), s.dir)
	}
	if err != nil {
		return Layer{}, fmt.Errorf("layer %s: %w", short(digest), err)
	}
	m, err := parseLayerMeta(b)
	if err != nil {
		return Layer{}, fmt.Errorf("layer %s: %s: %w", short(digest), p, err)
	}
	return Layer{Digest: digest, Dir: s.LayerTree(digest), Files: m.Files, Bytes: m.Bytes, Created: m.Created, Comment: m.Comment}, nil
}

// short abbreviates a digest for messages.
func short(digest string) string {
	if len(digest) > 12 {
		return digest[:12]
	}
	return digest
}

// TempDir returns a new empty dir (0755) inside the store, on the store's file system, for
// building a layer that AddLayer then takes over by rename. One left behind by a process
// that died is swept by the next OpenStore after a day.
func (s *Store) TempDir(purpose string) (string, error) {
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, purpose)
	if len(clean) > 64 {
		clean = clean[:64]
	}
	d, err := os.MkdirTemp(s.dir, tmpPrefix+clean+"-")
	if err != nil {
		return "", fmt.Errorf("image store %s: temp dir: %w", s.dir, err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		os.Remove(d)
		return "", fmt.Errorf("image store %s: temp dir: %w", s.dir, err)
	}
	return d, nil
}

// AddLayer makes dir, a tree in the overlayfs format on the store's file system (see
// TempDir), an immutable layer: it computes the manifest (reading every file), and renames
// dir into the store. When the store already has a layer with that manifest, that layer is
// returned and dir is removed. dir belongs to the store afterwards, also on error.
func (s *Store) AddLayer(dir, comment string) (Layer, error) {
	recs, err := scanTree(context.Background(), dir)
	if err != nil {
		os.RemoveAll(dir)
		return Layer{}, fmt.Errorf("add layer %s: %w", dir, err)
	}
	return s.addLayer(dir, recs, comment)
}

// addLayer is AddLayer with the manifest records already known (an import computes them
// while it writes the tree).
func (s *Store) addLayer(dir string, recs []record, comment string) (l Layer, err error) {
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if err := s.sameFS(dir); err != nil {
		return Layer{}, err
	}
	var mf bytes.Buffer
	if err := writeManifest(&mf, recs); err != nil {
		return Layer{}, fmt.Errorf("add layer %s: manifest: %w", dir, err)
	}
	sum := sha256.Sum256(mf.Bytes())
	digest := hex.EncodeToString(sum[:])
	if l, err := s.Layer(digest); err == nil {
		s.touchLayer(digest)
		os.RemoveAll(dir)
		return l, nil
	}
	meta := layerMeta{Created: time.Now().UTC().Truncate(time.Second), Comment: comment}
	for _, r := range recs {
		meta.Files++
		if r.Link == "" && r.Mode&typeMask == typeReg {
			meta.Bytes += r.Size
		}
	}
	if err := os.MkdirAll(s.layersDir(), 0o755); err != nil {
		return Layer{}, fmt.Errorf("image store %s: %w", s.dir, err)
	}
	stage, err := os.MkdirTemp(s.dir, tmpPrefix+"layer-")
	if err != nil {
		return Layer{}, fmt.Errorf("image store %s: %w", s.dir, err)
	}
	defer os.RemoveAll(stage) // empty after the final rename
	if err := os.Chmod(stage, 0o755); err != nil {
		return Layer{}, fmt.Errorf("add layer: %w", err)
	}
	if err := os.Rename(dir, filepath.Join(stage, layerTreeName)); err != nil {
		return Layer{}, fmt.Errorf("add layer %s: %w", dir, err)
	}
	y, err := yaml.Marshal(meta)
	if err != nil {
		return Layer{}, fmt.Errorf("add layer: layer.yaml: %w", err)
	}
	if err := os.WriteFile(filepath.Join(stage, manifestName), mf.Bytes(), 0o444); err != nil {
		return Layer{}, fmt.Errorf("add layer: manifest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(stage, layerInfoName), y, 0o444); err != nil {
		return Layer{}, fmt.Errorf("add layer: layer.yaml: %w", err)
	}
	// One syncfs instead of an fsync per file: the rename that publishes the layer must
	// not reach the disk before the files it publishes.
	syncFS(stage)
	if err := os.Rename(stage, s.layerDir(digest)); err != nil {
		if errors.Is(err, os.ErrExist) || errors.Is(err, unix.ENOTEMPTY) {
			// Another process added the same layer meanwhile.
			if l, lerr := s.Layer(digest); lerr == nil {
				return l, nil
			}
		}
		return Layer{}, fmt.Errorf("add layer %s: %w", short(digest), err)
	}
	syncDir(s.layersDir())
	return Layer{Digest: digest, Dir: s.LayerTree(digest), Files: meta.Files, Bytes: meta.Bytes, Created: meta.Created, Comment: comment}, nil
}

// sameFS refuses a dir on another file system than the store: a layer is taken over by
// rename, never copied.
func (s *Store) sameFS(dir string) error {
	var a, b unix.Stat_t
	if err := unix.Lstat(dir, &a); err != nil {
		return fmt.Errorf("add layer %s: %w", dir, err)
	}
	if a.Mode&typeMask != typeDir {
		return fmt.Errorf("add layer %s: not a directory", dir)
	}
	if err := unix.Stat(s.dir, &b); err != nil {
		return fmt.Errorf("image store %s: %w", s.dir, err)
	}
	if a.Dev != b.Dev {
		return fmt.Errorf("add layer %s: not on the image store's file system (%s); build layers in Store.TempDir", dir, s.dir)
	}
	return nil
}

// touchLayer marks a layer as just used, so that the collection of unused layers leaves
// it to the image about to be made with it.
func (s *Store) touchLayer(digest string) {
	now := time.Now()
	_ = os.Chtimes(s.layerDir(digest), now, now)
}

func syncFS(dir string) {
	if fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
		_ = unix.Syncfs(fd)
		unix.Close(fd)
	}
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		_ = f.Sync()
		f.Close()
	}
}

// scanTree walks a tree and returns its manifest records, reading every regular file. A
// trusted.overlay.* xattr other than opaque=y is refused: layers use only the overlayfs
// format package overlay reads, and the kernel would act on others (redirect, origin).
func scanTree(ctx context.Context, root string) ([]record, error) {
	var recs []record
	err := walkDir(ctx, root, func(e *entry) error {
		rec, err := entryRecord(e)
		if err != nil {
			return err
		}
		recs = append(recs, rec)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return recs, nil
}

// entryRecord is the manifest record of a walked entry, its content hashed.
func entryRecord(e *entry) (record, error) {
	if e.LinkTo != "" {
		return record{Path: e.Path, Link: e.LinkTo}, nil
	}
	for name, v := range e.Xattrs {
		if strings.HasPrefix(name, "trusted.overlay.") && !(name == opaqueXattr && string(v) == "y" && e.Mode&typeMask == typeDir) {
			return record{}, fmt.Errorf("/%s: xattr %s=%q is not part of the layer format (only %s=y on dirs)", e.Path, name, v, opaqueXattr)
		}
	}
	rec := record{Path: e.Path, Mode: e.Mode, UID: e.UID, GID: e.GID, Mtime: e.Mtime.UnixNano(),
		Xattrs: xattrDigest(e.Xattrs), Opaque: isOpaque(e)}
	switch e.Mode & typeMask {
	case typeReg:
		f, err := e.Open()
		if err != nil {
			return record{}, err
		}
		h := sha256.New()
		size, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			return record{}, fmt.Errorf("/%s: %w", e.Path, err)
		}
		rec.Size, rec.Data = size, hex.EncodeToString(h.Sum(nil))
	case typeLnk:
		rec.Size, rec.Data = int64(len(e.Target)), e.Target
	case typeChr, typeBlk:
		rec.Data = fmt.Sprintf("%d:%d", e.Major, e.Minor)
	}
	return rec, nil
}

// isOpaque reports whether an entry is an overlayfs opaque dir.
func isOpaque(e *entry) bool {
	return e.Mode&typeMask == typeDir && string(e.Xattrs[opaqueXattr]) == "y"
}

// storeLock is an exclusive flock on <store>/.lock, held while images are created or removed
// and layers collected, so a collection never misses an image being made.
type storeLock struct{ f *os.File }

func (s *Store) lock() (*storeLock, error) {
	f, err := os.OpenFile(filepath.Join(s.dir, lockFileName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("image store %s: lock: %w", s.dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("image store %s: lock: %w", s.dir, err)
	}
	return &storeLock{f: f}, nil
}

func (l *storeLock) release() { l.f.Close() }

// AllLayers lists the store's layers, sorted by digest.
func (s *Store) AllLayers() ([]Layer, error) {
	ents, err := os.ReadDir(s.layersDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", s.dir, err)
	}
	var out []Layer
	var errs []error
	for _, e := range ents {
		if CheckDigest(e.Name()) != nil {
			continue
		}
		l, err := s.Layer(e.Name())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out, errors.Join(errs...)
}

// collect removes the layers no image uses: those in now at once (the caller just dropped
// their last user), others when older than orphanGrace. It keeps everything when an
// image.yaml cannot be read, since its layers are unknown. The store lock must be held.
func (s *Store) collect(now map[string]bool) ([]Layer, error) {
	infos, err := s.List()
	if err != nil {
		return nil, fmt.Errorf("image store %s: not collecting unused layers: %w", s.dir, err)
	}
	used := map[string]bool{}
	for _, im := range infos {
		for _, d := range im.Layers {
			used[d] = true
		}
	}
	ents, err := os.ReadDir(s.layersDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", s.dir, err)
	}
	var gone []Layer
	var errs []error
	for _, e := range ents {
		d := e.Name()
		if CheckDigest(d) != nil || used[d] {
			continue
		}
		if !now[d] {
			fi, err := os.Stat(s.layerDir(d))
			if err != nil || time.Since(fi.ModTime()) < orphanGrace {
				continue
			}
		}
		l, _ := s.Layer(d)
		l.Digest = d
		if err := s.removeDir(s.layerDir(d), "layer-"+short(d)); err != nil {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, l)
	}
	return gone, errors.Join(errs...)
}

// removeDir takes a dir out of view by one rename, then deletes it.
func (s *Store) removeDir(dir, what string) error {
	tmp, err := os.MkdirTemp(s.dir, tmpPrefix+"rm-"+what+"-")
	if err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	if err := os.Rename(dir, filepath.Join(tmp, "x")); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("removed %s, but deleting its files in %s failed: %w", dir, tmp, err)
	}
	return nil
}
