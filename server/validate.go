package server

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/pifleet/pifleet/images"
)

// The checks of fleet.yaml against the disk, beyond its syntax. `pifleet serve` (at start
// and on every reload) and `pifleet check` run the same ones, so check passes exactly the
// fleets serve accepts.

// imageLayers returns the lower dirs of an image, topmost first: its path (which must be a
// Pi root tree, with boot/firmware), or its layers in the state dir's store. A nil store
// means the state dir has no image store yet.
func imageLayers(cfg *Config, store *images.Store, name string) ([]string, error) {
	im, ok := cfg.Images[name]
	if !ok {
		return nil, fmt.Errorf("unknown image %q", name)
	}
	if im.Path != "" {
		if _, err := os.Stat(im.Path); err != nil {
			return nil, fmt.Errorf("image %s: path %s: %w", name, im.Path, unwrapPath(err))
		}
		if fi, err := os.Stat(filepath.Join(im.Path, "boot/firmware")); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("image %s: %s has no boot/firmware directory: is it a Pi root tree?", name, im.Path)
		}
		return []string{im.Path}, nil
	}
	hint := fmt.Sprintf("import one with `pifleet image import FILE --name %s`", name)
	if name == "demo" {
		hint = "build the demo image with `make demo` (or `pifleet image demo`)"
	}
	if store == nil || !store.Exists(name) {
		return nil, fmt.Errorf("image %s is not in the state dir %s (%s)", name, cfg.Server.State, hint)
	}
	layers, err := store.Layers(name)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w (%s)", name, err, hint)
	}
	return layers, nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// CheckImages checks every image of cfg the way serve opens it (imageLayers): an image a
// board uses that serve could not open is an error, an unused one a warning, each at the
// image's line in fleet.yaml. It opens the state dir's image store only if it exists.
func CheckImages(cfg *Config) Problems {
	var store *images.Store
	if fi, err := os.Stat(State{Dir: cfg.Server.State}.Images()); err == nil && fi.IsDir() {
		store, _ = images.OpenStore(State{Dir: cfg.Server.State}.Images())
	}
	return checkImages(cfg, store)
}

func checkImages(cfg *Config, store *images.Store) Problems {
	used := map[string]bool{}
	for _, b := range cfg.Boards {
		used[b.Image] = true
	}
	var ps Problems
	for name, im := range cfg.Images {
		if _, err := imageLayers(cfg, store, name); err != nil {
			p := Problem{Line: im.Line, Col: im.Col, Msg: err.Error(), Warning: !used[name]}
			if p.Warning {
				p.Msg += "; no board uses it yet"
			}
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, func(a, b Problem) int { return a.Line - b.Line })
	return ps
}
