package images

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"

	"github.com/diskfs/go-diskfs/filesystem"
)

// FAT has no owners, modes or links: files land root-owned, 0644 (they are data the
// firmware and TFTP read, nothing runs them), directories 0755, with FAT's mtimes.
const (
	fatFileMode = typeReg | 0o644
	fatDirMode  = typeDir | 0o755
)

// walkFAT streams the boot partition as entries under prefix (boot/firmware): Pi OS mounts
// it there, and a board's kernel upgrades then land where TFTP serves from.
func walkFAT(ctx context.Context, fsys filesystem.FileSystem, prefix string, fn func(*entry) error) error {
	var walk func(fsPath, rel string) error
	walk = func(fsPath, rel string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		des, err := fsys.ReadDir(fsPath)
		if err != nil {
			return fmt.Errorf("FAT /%s: %w", fsPath, err)
		}
		sort.Slice(des, func(i, j int) bool { return des[i].Name() < des[j].Name() })
		for _, de := range des {
			name := de.Name()
			if name == "" || name == "." || name == ".." || !fs.ValidPath(name) {
				continue
			}
			fi, err := de.Info()
			if err != nil {
				return fmt.Errorf("FAT /%s: %w", path.Join(fsPath, name), err)
			}
			child := path.Join(fsPath, name)
			e := &entry{Path: path.Join(rel, name), Mtime: fi.ModTime(), Size: fi.Size()}
			if de.IsDir() {
				e.Mode = fatDirMode
				if err := fn(e); err != nil {
					return err
				}
				if err := walk(child, e.Path); err != nil {
					return err
				}
				continue
			}
			e.Mode = fatFileMode
			e.Open = func() (io.ReadCloser, error) {
				f, err := fsys.OpenFile(child, 0)
				if err != nil {
					return nil, fmt.Errorf("FAT /%s: %w", child, err)
				}
				return f, nil
			}
			if err := fn(e); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(".", prefix)
}
