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

// Store is the images/ directory of the state dir: one subdirectory per imported image.
type Store struct {
	dir string
}

// Info is what image.yaml records about an imported image.
type Info struct {
	// Name is the image's name, its directory under the store.
	Name string `yaml:"name"`
	// Source is the base name of what was imported (file or directory).
	Source string `yaml:"source"`
	// Format is how the source was read: img, img.xz, dir, tar, tar.gz, tar.xz.
	Format string `yaml:"format"`
	// SHA256 is the checksum of the source file; empty for a directory.
	SHA256 string `yaml:"sha256,omitempty"`
	// Files counts every path of the root tree, directories and links included.
	Files int64 `yaml:"files"`
	// Bytes is the sum of regular file sizes (hard links counted once).
	Bytes int64 `yaml:"bytes"`
	// Imported is when the import finished (UTC, whole seconds).
	Imported time.Time `yaml:"imported"`
	// ManifestSHA256 is the checksum of the manifest file, so verify notices an edited manifest.
	ManifestSHA256 string `yaml:"manifest_sha256"`
	// Prepared is true when the NFS-root preparation layer (prep/) was written.
	Prepared bool `yaml:"prepared"`
	// Changes lists what the prep layer changes relative to root, one line each.
	Changes []string `yaml:"changes,omitempty"`
}

// File and directory names inside one image directory.
const (
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
// young one may belong to an import running right now in another process.
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

// RootDir returns the pristine root tree of an image.
func (s *Store) RootDir(name string) string { return filepath.Join(s.dir, name, rootDirName) }

// Exists reports whether an image of that name has been imported.
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

// Layers returns the lower dirs a board running this image stacks, topmost first: the prep
// layer when the image has one, then the pristine root.
func (s *Store) Layers(name string) ([]string, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if !s.Exists(name) {
		return nil, s.notFound(name)
	}
	var layers []string
	if fi, err := os.Stat(filepath.Join(s.imageDir(name), prepDirName)); err == nil && fi.IsDir() {
		layers = append(layers, filepath.Join(s.imageDir(name), prepDirName))
	}
	return append(layers, s.RootDir(name)), nil
}

// Info reads one image's image.yaml.
func (s *Store) Info(name string) (*Info, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(s.imageDir(name), infoFileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, s.notFound(name)
	}
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	info, err := parseInfo(b)
	if err != nil {
		return nil, fmt.Errorf("image %s: %s: %w", name, filepath.Join(s.imageDir(name), infoFileName), err)
	}
	info.Name = name // the directory name wins: an image dir may have been copied and renamed
	return info, nil
}

// maxInfoSize bounds image.yaml: it is small, and a huge one is not ours.
const maxInfoSize = 1 << 20

func parseInfo(b []byte) (*Info, error) {
	if len(b) > maxInfoSize {
		return nil, fmt.Errorf("%d bytes, larger than any image.yaml pifleet writes", len(b))
	}
	var info Info
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&info); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if info.Files < 0 || info.Bytes < 0 {
		return nil, errors.New("negative file count or byte count")
	}
	return &info, nil
}

// List returns every imported image, sorted by name. An image dir with an unreadable
// image.yaml is reported as an error rather than skipped, so it gets noticed.
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

// Remove deletes an image. It refuses while boards use it (usedBy names them, as the caller
// knows from fleet.yaml). The image disappears at once by rename, then its files are deleted.
func (s *Store) Remove(name string, usedBy []string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if len(usedBy) > 0 {
		return fmt.Errorf("image %s is used by board(s) %s: point them at another image in fleet.yaml first", name, strings.Join(usedBy, ", "))
	}
	if !s.Exists(name) {
		return s.notFound(name)
	}
	tmp, err := os.MkdirTemp(s.dir, tmpPrefix+"rm-"+name+"-")
	if err != nil {
		return fmt.Errorf("image %s: remove: %w", name, err)
	}
	gone := filepath.Join(tmp, name)
	if err := os.Rename(s.imageDir(name), gone); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("image %s: remove: %w", name, err)
	}
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("image %s: removed, but deleting its files in %s failed: %w", name, tmp, err)
	}
	return nil
}
