package server

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

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
	if im.Base != "" {
		if err := checkBase(store, name, im.Base); err != nil {
			return nil, &baseError{err}
		}
	}
	return layers, nil
}

// baseError is an image whose store stack does not sit on the base fleet.yaml names; it is
// reported at the base: line.
type baseError struct{ error }

func (e *baseError) Unwrap() error { return e.error }

// checkBase returns an error unless store image name is stacked on base: base is in its
// chain of bases and base's current layers are the bottom of its stack.
func checkBase(store *images.Store, name, base string) error {
	info, err := store.Info(name)
	if err != nil {
		return err
	}
	bi, err := store.Info(base)
	if err != nil {
		return fmt.Errorf("image %s: its base %w", name, err)
	}
	chain := []string{}
	for cur := info; cur.Base != "" && len(chain) < 64; {
		chain = append(chain, cur.Base)
		if cur.Base == base {
			break
		}
		next, err := store.Info(cur.Base)
		if err != nil {
			break
		}
		cur = next
	}
	if !slices.Contains(chain, base) {
		made := "was imported, not made on an image"
		if len(chain) > 0 {
			made = "is stacked on " + strings.Join(chain, " <- ")
		}
		return fmt.Errorf("image %s is not stacked on %s: in the state dir it %s (make it from %s, e.g. `pifleet image shell %s --as %s`, or drop base:)",
			name, base, made, base, base, name)
	}
	if len(bi.Layers) > len(info.Layers) || !slices.Equal(bi.Layers, info.Layers[:len(bi.Layers)]) {
		return fmt.Errorf("image %s was made on an earlier %s: %s has other layers now (make %s again from the current %s)", name, base, base, name, base)
	}
	return nil
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
		if store != nil && im.Path == "" && images.IsLayout1Image(store.Dir(), name) {
			// serve upgrades it at start (UpgradeState): as an imported image, on no base
			p := Problem{Line: im.Line, Col: im.Col, Warning: true,
				Msg: fmt.Sprintf("image %s is in the state dir layout of an older pifleet: `pifleet serve` (or any `pifleet image` command) upgrades it by renames", name)}
			if im.Base != "" {
				p = Problem{Line: im.BaseLine, Col: im.BaseCol,
					Msg: fmt.Sprintf("image %s is not stacked on %s: in the state dir it was imported (by an older pifleet), not made on an image", name, im.Base)}
			}
			ps = append(ps, p)
			continue
		}
		if _, err := imageLayers(cfg, store, name); err != nil {
			p := Problem{Line: im.Line, Col: im.Col, Msg: err.Error(), Warning: !used[name]}
			var be *baseError
			if errors.As(err, &be) {
				p.Line, p.Col = im.BaseLine, im.BaseCol
			}
			if p.Warning {
				p.Msg += "; no board uses it yet"
			}
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, func(a, b Problem) int { return a.Line - b.Line })
	return ps
}
