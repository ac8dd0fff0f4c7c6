// Package images imports base images (Raspberry Pi OS .img/.img.xz, a directory, a tarball)
// into the state dir as read-only root trees that boards share, and prepares them for NFS root.
package images

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Store is the images/ directory of the state dir (layout 2): immutable content-addressed
// layers under layers/<digest>/ and one directory per image holding its image.yaml, which
// names the image's layers. See README.md.
type Store struct {
	dir string
}

// Info is what image.yaml records about an image.
type Info struct {
	// Name is the image's name, its directory under the store.
	Name string `yaml:"name"`
	// Base is the image this one was made on top of ("" for an imported one).
	Base string `yaml:"base,omitempty"`
	// Layers is the image's whole stack, bottom to top, as layer digests: the base's
	// layers (as they were when this image was made) and then the image's own.
	Layers []string `yaml:"layers"`
	// Source is the base name of what was imported (file or directory), or what the image
	// was made from (a board commit, a shell command).
	Source string `yaml:"source"`
	// Format is how the source was read: img, img.xz, dir, tar, tar.gz, tar.xz, oci, ...
	Format string `yaml:"format,omitempty"`
	// SHA256 is the checksum of the source file; empty for a directory.
	SHA256 string `yaml:"sha256,omitempty"`
	// Files counts the paths of the image's own layers (those above its base).
	Files int64 `yaml:"files"`
	// Bytes is the sum of regular file sizes of the image's own layers.
	Bytes int64 `yaml:"bytes"`
	// Imported is when the image was made (UTC, whole seconds).
	Imported time.Time `yaml:"imported"`
	// Prepared is true when the image has an NFS-root preparation layer.
	Prepared bool `yaml:"prepared,omitempty"`
	// Changes lists what the prep layer changes relative to the root, one line each.
	Changes []string `yaml:"changes,omitempty"`
	// Comment is free text: what was done to make the image.
	Comment string `yaml:"comment,omitempty"`
}

// ImageMeta is what CreateImage records besides the layers.
type ImageMeta struct {
	// Source, Format, SHA256, Prepared, Changes and Comment go to Info as they are.
	Source   string
	Format   string
	SHA256   string
	Prepared bool
	Changes  []string
	Comment  string
	// Replace allows replacing an existing image of that name (not one another image is
	// based on). Its layers no other image uses are kept for a day (a board running it may
	// still have them mounted); the next RemoveImage after that removes them.
	Replace bool
}

// File and directory names inside one image directory.
const (
	// rootDirName, prepDirName: the trees of an import while it is built (and of an image in
	// layout 1, see migrate.go).
	rootDirName  = "root"
	prepDirName  = "prep"
	infoFileName = "image.yaml"
	manifestName = "manifest"
	// tmpPrefix marks work in progress (imports, removals); List ignores such entries and
	// OpenStore sweeps leftovers of a crashed run.
	tmpPrefix = ".tmp-"
)

// validName keeps image names usable as directory names, in fleet.yaml and on the command line.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// CheckName returns an error unless name can be an image name.
func CheckName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("image name %q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	if name == layersDirName {
		return fmt.Errorf("image name %q is reserved (the store's layer directory)", name)
	}
	return nil
}

// OpenStore opens (creating if missing) the image store at dir, normally <state>/images.
func OpenStore(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("image store: empty directory name")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("image store %s: %w", abs, err)
	}
	s := &Store{dir: abs}
	s.sweep()
	return s, nil
}

// sweep removes temp dirs older than a day: an import killed mid-way leaves one behind, and a
// young one may belong to an import running right now in another process. Unused layers are
// not swept here: a running server may stack one (a board keeps the stack it mounted), so
// they go only with RemoveImage, which runs with no server.
func (s *Store) sweep() {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), tmpPrefix) {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > 24*time.Hour {
			_ = os.RemoveAll(filepath.Join(s.dir, e.Name()))
		}
	}
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) imageDir(name string) string { return filepath.Join(s.dir, name) }

// RootDir returns the tree of the image's bottom layer (an imported image's pristine root),
// or "" when the image cannot be read.
func (s *Store) RootDir(name string) string {
	info, err := s.Info(name)
	if err != nil || len(info.Layers) == 0 {
		return ""
	}
	return s.LayerTree(info.Layers[0])
}

// Exists reports whether an image of that name is in the store.
func (s *Store) Exists(name string) bool {
	if CheckName(name) != nil {
		return false
	}
	_, err := os.Stat(filepath.Join(s.imageDir(name), infoFileName))
	return err == nil
}

func (s *Store) notFound(name string) error {
	return fmt.Errorf("image %s not found in %s (import it with: pifleet image import FILE --name %s)", name, s.dir, name)
}

// Layers returns the lower dirs a board running this image stacks, topmost first: the
// image's layers top to bottom, then its base's. Every layer must be in the store.
func (s *Store) Layers(name string) ([]string, error) {
	info, err := s.Info(name)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(info.Layers))
	for i := len(info.Layers) - 1; i >= 0; i-- {
		d := info.Layers[i]
		if _, err := os.Stat(filepath.Join(s.layerDir(d), layerInfoName)); err != nil {
			return nil, fmt.Errorf("image %s: layer %s is missing from %s (restore the state dir from a backup, or import the image again)", name, short(d), s.layersDir())
		}
		out = append(out, s.LayerTree(d))
	}
	return out, nil
}

// Size returns the bytes of regular files of an image's whole stack (its base's layers
// included), what a full copy of the image would hold.
func (s *Store) Size(name string) (int64, error) {
	info, err := s.Info(name)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, d := range info.Layers {
		l, err := s.Layer(d)
		if err != nil {
			return 0, fmt.Errorf("image %s: %w", name, err)
		}
		n += l.Bytes
	}
	return n, nil
}

// Info reads one image's image.yaml.
func (s *Store) Info(name string) (*Info, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	p := filepath.Join(s.imageDir(name), infoFileName)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, s.notFound(name)
	}
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	info, err := parseInfo(b)
	if err != nil {
		if isV1Image(s.imageDir(name)) {
			return nil, fmt.Errorf("image %s: %s is in the layout of an older pifleet (root/ and manifest, no layers): "+
				"run `pifleet serve` or any `pifleet image` command of this version once to migrate the state dir", name, s.imageDir(name))
		}
		return nil, fmt.Errorf("image %s: %s: %w", name, p, err)
	}
	info.Name = name // the directory name wins: an image dir may have been copied and renamed
	return info, nil
}

// maxInfoSize bounds image.yaml: it is small, and a huge one is not ours.
const maxInfoSize = 1 << 20

// decodeStrict decodes a YAML file pifleet wrote (image.yaml, layer.yaml): a key it does
// not know means the file is not ours, or is from a newer pifleet.
func decodeStrict[T any](b []byte) (*T, error) {
	var v T
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	return &v, nil
}

func parseInfo(b []byte) (*Info, error) {
	if len(b) > maxInfoSize {
		return nil, fmt.Errorf("%d bytes, larger than any image.yaml pifleet writes", len(b))
	}
	info, err := decodeStrict[Info](b)
	if err != nil {
		return nil, err
	}
	if info.Files < 0 || info.Bytes < 0 {
		return nil, errors.New("negative file count or byte count")
	}
	if len(info.Layers) == 0 {
		return nil, errors.New("no layers")
	}
	if len(info.Layers) > maxStack {
		return nil, fmt.Errorf("%d layers, more than %d", len(info.Layers), maxStack)
	}
	seen := map[string]bool{}
	for _, d := range info.Layers {
		if err := CheckDigest(d); err != nil {
			return nil, err
		}
		if seen[d] {
			return nil, fmt.Errorf("layer %s twice in the stack", short(d))
		}
		seen[d] = true
	}
	if info.Base != "" {
		if err := CheckName(info.Base); err != nil {
			return nil, fmt.Errorf("base: %w", err)
		}
	}
	return info, nil
}

// List returns every image, sorted by name. An image dir with an unreadable image.yaml is
// reported as an error rather than skipped, so it gets noticed.
func (s *Store) List() ([]Info, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", s.dir, err)
	}
	var out []Info
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || CheckName(e.Name()) != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(s.dir, e.Name(), infoFileName)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		info, err := s.Info(e.Name())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, *info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, errors.Join(errs...)
}

// CreateImage makes image name from base's stack (none when base is "") and layers on top
// of it (digests, bottom to top, each already in the store). image.yaml appears at once
// (link or rename of a complete file). An existing name is refused unless meta.Replace.
func (s *Store) CreateImage(name, base string, layers []string, meta ImageMeta) error {
	if err := CheckName(name); err != nil {
		return err
	}
	l, err := s.lock()
	if err != nil {
		return err
	}
	defer l.release()
	info := Info{Name: name, Base: base, Source: meta.Source, Format: meta.Format, SHA256: meta.SHA256,
		Prepared: meta.Prepared, Changes: meta.Changes, Comment: meta.Comment,
		Imported: time.Now().UTC().Truncate(time.Second)}
	if base != "" {
		bi, err := s.Info(base)
		if err != nil {
			return fmt.Errorf("image %s: base: %w", name, err)
		}
		for b, depth := bi, 0; b != nil && depth <= maxStack; depth++ {
			if b.Name == name {
				return fmt.Errorf("image %s: its base %s is (made from) %s itself", name, base, name)
			}
			if b.Base == "" {
				break
			}
			if b, err = s.Info(b.Base); err != nil {
				break
			}
		}
		info.Layers = append(info.Layers, bi.Layers...)
	}
	if len(layers) == 0 && base == "" {
		return fmt.Errorf("image %s: no layers", name)
	}
	for _, d := range layers {
		ly, err := s.Layer(d)
		if err != nil {
			return fmt.Errorf("image %s: %w", name, err)
		}
		info.Files += ly.Files
		info.Bytes += ly.Bytes
	}
	info.Layers = append(info.Layers, layers...)
	if len(info.Layers) > maxStack {
		return fmt.Errorf("image %s: %d layers, more than %d", name, len(info.Layers), maxStack)
	}
	if d := firstDup(info.Layers); d != "" {
		return fmt.Errorf("image %s: layer %s would be twice in the stack", name, short(d))
	}
	var old *Info
	if s.Exists(name) {
		if !meta.Replace {
			return fmt.Errorf("image %s %w in %s", name, ErrExists, s.dir)
		}
		if old, err = s.Info(name); err != nil {
			return fmt.Errorf("image %s: replace: %w", name, err)
		}
		kids, err := s.derived(name)
		if len(kids) > 0 {
			return fmt.Errorf("image %s is the base of %s: make a new image instead of replacing it", name, strings.Join(kids, ", "))
		}
		if err != nil {
			return fmt.Errorf("image %s: replace: %w", name, err)
		}
	}
	y, err := yaml.Marshal(&info)
	if err != nil {
		return fmt.Errorf("image %s: image.yaml: %w", name, err)
	}
	if err := os.MkdirAll(s.imageDir(name), 0o755); err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	final := filepath.Join(s.imageDir(name), infoFileName)
	tmp := filepath.Join(s.imageDir(name), tmpPrefix+infoFileName)
	if err := writeSynced(tmp, y); err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	defer os.Remove(tmp)
	if old != nil {
		err = os.Rename(tmp, final)
	} else if err = os.Link(tmp, final); errors.Is(err, os.ErrExist) {
		return fmt.Errorf("image %s %w in %s", name, ErrExists, s.dir)
	}
	if err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	syncDir(s.imageDir(name))
	if old != nil {
		// A running board may still stack the old layers until it unmounts: they are left
		// to RemoveImage's collection of unused layers, a day from now.
		for _, d := range old.Layers {
			s.touchLayer(d)
		}
	}
	return nil
}

func firstDup(ds []string) string {
	seen := map[string]bool{}
	for _, d := range ds {
		if seen[d] {
			return d
		}
		seen[d] = true
	}
	return ""
}

// writeSynced writes a file and fsyncs it.
func writeSynced(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// derived names the images whose base is name. An unreadable image.yaml is an error: it
// may name name as its base.
func (s *Store) derived(name string) ([]string, error) {
	infos, err := s.List()
	var out []string
	for _, im := range infos {
		if im.Base == name {
			out = append(out, im.Name)
		}
	}
	if err != nil {
		return out, fmt.Errorf("cannot tell which images are made on %s: %w", name, err)
	}
	return out, nil
}

// Remove deletes an image and then the layers no other image uses. It refuses while boards
// use it (usedBy names them, as the caller knows from fleet.yaml) or another image is based
// on it. The image disappears at once by rename, then its files are deleted.
func (s *Store) Remove(name string, usedBy []string) error {
	_, err := s.RemoveImage(name, usedBy)
	return err
}

// RemoveImage is Remove, returning the layers it removed: the image's layers no other
// image uses, and any other layer no image has used for a day (an abandoned AddLayer, the
// layers of a replaced image). No server may run on the state dir meanwhile (`image rm`
// holds its lock): a board may stack layers no image names any more.
func (s *Store) RemoveImage(name string, usedBy []string) ([]Layer, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if len(usedBy) > 0 {
		return nil, fmt.Errorf("image %s is used by board(s) %s: point them at another image in fleet.yaml first", name, strings.Join(usedBy, ", "))
	}
	l, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer l.release()
	info, err := s.Info(name)
	if err != nil {
		return nil, err
	}
	kids, err := s.derived(name)
	if len(kids) > 0 {
		return nil, fmt.Errorf("image %s is the base of image(s) %s: remove them first", name, strings.Join(kids, ", "))
	}
	if err != nil {
		return nil, fmt.Errorf("image %s: not removed: %w", name, err)
	}
	if err := s.removeDir(s.imageDir(name), name); err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	now := map[string]bool{}
	for _, d := range info.Layers {
		now[d] = true
	}
	gone, err := s.collect(now)
	if err != nil {
		return gone, fmt.Errorf("image %s removed; %w", name, err)
	}
	return gone, nil
}
