package images

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// importContainer imports the linux/arm64 image of a container image archive: each layer
// becomes a store layer (identical layers, also of other images, are stored once), and the
// image is their stack. An image with /boot/firmware (a root meant to boot a Pi) gets the
// NFS-root preparation layer on top when opts.Prepare, as a Pi OS image does; one without
// cannot boot a Pi and gets a warning. A failed import leaves no image and none of the
// layers it added.
func (s *Store) importContainer(ctx context.Context, abs, compression, name string, opts ImportOptions, log *slog.Logger) (*Info, error) {
	if s.Exists(name) && !opts.Replace {
		return nil, fmt.Errorf("image %s %w in %s", name, ErrExists, s.dir)
	}
	fail := func(err error) error { return fmt.Errorf("image %s: source %s: %w", name, abs, err) }
	prog := newProgress(opts.Progress, name)
	archive, suffix := abs, ""
	if compression != "" {
		// Blobs are read out of order: a compressed archive is unpacked to a temp file first.
		tmp, err := s.TempDir("import-" + name)
		if err != nil {
			return nil, fail(err)
		}
		defer os.RemoveAll(tmp)
		archive = filepath.Join(tmp, "archive.tar")
		if err := unpackArchive(ctx, abs, compression, archive, prog); err != nil {
			prog.fail()
			return nil, fail(err)
		}
		suffix = map[string]string{kindGzip: ".gz", kindXZ: ".xz"}[compression]
	}
	a, format, err := openImageArchive(archive)
	if err != nil {
		return nil, fail(err)
	}
	defer a.close()
	img, err := readContainerImage(a, opts.Ref)
	if err != nil {
		return nil, fail(err)
	}
	format = img.Format + format + suffix
	ref := trimForError(img.Ref) // for logs and comments: the archive chose it
	start := time.Now()
	log.Info("importing container image", "image", name, "source", abs, "format", format, "ref", ref,
		"platform", img.Platform.String(), "layers", len(img.Layers))
	before, err := s.AllLayers()
	if err != nil {
		return nil, fail(err)
	}
	had := map[string]bool{}
	for _, l := range before {
		had[l.Digest] = true
	}
	var added []string // layers this import created, removed again if it fails
	ok := false
	defer func() {
		if !ok && len(added) > 0 {
			if err := s.dropLayers(added); err != nil {
				log.Warn("could not remove the layers of a failed import", "image", name, "err", err)
			}
		}
	}()
	var stack []string
	var dirs []string
	root := defaultRoot
	for i, l := range img.Layers {
		label := fmt.Sprintf("%s: layer %d/%d (sha256:%s)", name, i+1, len(img.Layers), short(l.DiffID))
		st, dir, err := s.convertLayer(ctx, a, l, label, root, dirs, prog)
		if err != nil {
			prog.fail()
			return nil, err
		}
		if st.Files == 1 && st.Root.equal(root) && len(stack) > 0 {
			// an empty layer (ENV, WORKDIR of an existing dir...): nothing to stack
			os.RemoveAll(dir)
			continue
		}
		root = st.Root
		layer, err := s.addLayer(dir, st.records, fmt.Sprintf("layer %d/%d of %s (%s, diff_id sha256:%s)",
			i+1, len(img.Layers), cmp.Or(ref, filepath.Base(abs)), format, l.DiffID))
		if err != nil {
			prog.fail()
			return nil, fail(err)
		}
		if !had[layer.Digest] {
			added = append(added, layer.Digest)
			had[layer.Digest] = true
		}
		stack = append(stack, layer.Digest)
		dirs = append([]string{layer.Dir}, dirs...)
	}
	prog.end()
	meta := ImageMeta{
		Source:  cmp.Or(opts.Source, filepath.Base(abs)),
		Format:  format,
		Comment: fmt.Sprintf("%s %s, config sha256:%s", cmp.Or(ref, "(unnamed)"), img.Platform, img.Config),
		Replace: opts.Replace,
	}
	switch {
	case !layerView(dirs).exists("boot/firmware"):
		log.Warn("the image has no /boot/firmware: a Raspberry Pi cannot boot it (install the firmware and kernel in the image, e.g. Debian's raspi-firmware and linux-image-arm64)",
			"image", name)
	case opts.Prepare:
		// a root meant to boot a Pi: the same NFS-root preparation as a Pi OS image gets
		tmp, err := s.TempDir("prep-" + name)
		if err != nil {
			return nil, fail(err)
		}
		defer os.RemoveAll(tmp)
		prep, changes, err := s.prepareStack(ctx, name, dirs, tmp, log)
		if err != nil {
			return nil, err
		}
		if len(changes) > 0 {
			layer, err := s.AddLayer(prep, "NFS-root preparation of "+meta.Source)
			if err != nil {
				return nil, fail(err)
			}
			if !had[layer.Digest] {
				added = append(added, layer.Digest)
			}
			stack = append(stack, layer.Digest)
			meta.Prepared, meta.Changes = true, changes
		}
	}
	if err := s.CreateImage(name, "", stack, meta); err != nil {
		return nil, err
	}
	ok = true
	info, err := s.Info(name)
	if err != nil {
		return nil, err
	}
	log.Info("imported container image", "image", name, "layers", len(stack), "new layers", len(added),
		"files", info.Files, "bytes", info.Bytes, "took", time.Since(start).Round(time.Millisecond))
	return info, nil
}

// openImageArchive opens a layout dir or an archive tar; the format suffix is ".tar" for a tar.
func openImageArchive(abs string) (imageArchive, string, error) {
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, "", err
	}
	if fi.IsDir() {
		a, err := openDirArchive(abs)
		return a, "", err
	}
	f, err := os.Open(abs)
	if err != nil {
		return nil, "", err
	}
	a, err := openTarArchive(f)
	if err != nil {
		f.Close()
		return nil, "", err
	}
	return a, ".tar", nil
}

// convertLayer writes one layer over lowers (its layers below, topmost first) into a new temp
// dir of the store, checking its digests; on error the dir is gone.
func (s *Store) convertLayer(ctx context.Context, a imageArchive, l containerLayer, label string, root rootAttrs, lowers []string, prog *progress) (containerLayerStats, string, error) {
	dir, err := s.TempDir("oci-layer")
	if err != nil {
		return containerLayerStats{}, "", err
	}
	st, err := func() (containerLayerStats, error) {
		ls, err := openLayer(a, l, prog)
		if err != nil {
			return containerLayerStats{}, fmt.Errorf("image %s: %w", label, err)
		}
		defer ls.close()
		prog.begin(label, ls.size)
		st, err := writeContainerLayer(ctx, label, ls.tar, dir, root, lowers)
		if err != nil {
			return containerLayerStats{}, err
		}
		if err := ls.finish(); err != nil {
			return containerLayerStats{}, fmt.Errorf("image %s: %w", label, err)
		}
		return st, nil
	}()
	if err != nil {
		os.RemoveAll(dir)
		return containerLayerStats{}, "", err
	}
	return st, dir, nil
}

// dropLayers removes the layers a failed import added, unless an image uses them meanwhile.
// Only those: other unused layers may be stacked by a running board and go with image rm.
func (s *Store) dropLayers(digests []string) error {
	l, err := s.lock()
	if err != nil {
		return err
	}
	defer l.release()
	infos, err := s.List()
	if err != nil {
		return err
	}
	used := map[string]bool{}
	for _, im := range infos {
		for _, d := range im.Layers {
			used[d] = true
		}
	}
	var errs []error
	for _, d := range digests {
		if !used[d] {
			errs = append(errs, s.removeDir(s.layerDir(d), "layer-"+short(d)))
		}
	}
	return errors.Join(errs...)
}

// unpackArchive decompresses a gzip or xz archive tar into dst (a new file), bounded like a
// layer.
func unpackArchive(ctx context.Context, src, kind, dst string, prog *progress) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prog.begin("decompress", fi.Size())
	dec, err := decompress(ctx, kind, &countingReader{r: f, p: prog})
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		cancel()
		_ = dec.Wait()
		return err
	}
	defer out.Close()
	_, err = writeSparse(ctx, out, newBoundedReader(dec.R, "archive "+filepath.Base(src), fi.Size()))
	if err != nil {
		cancel()
	}
	if werr := dec.Wait(); werr != nil && err == nil {
		err = fmt.Errorf("%s: %w", kind, werr)
	}
	if err != nil {
		return err
	}
	prog.end()
	return out.Close()
}

// prepareStack writes the NFS-root preparation layer for an image made of the layer dirs
// lowers (topmost first), as Import does for a Pi OS image: prepare reads one tree, so it
// gets a read-only stand-in of the merged stack in a store temp dir, made of directories
// and hard links to the layers' files (nothing copied; prepare only reads the root and
// writes to prep). It returns the prep dir (in tmp) and the changes, none when nothing
// applies.
func (s *Store) prepareStack(ctx context.Context, name string, lowers []string, tmp string, log *slog.Logger) (string, []string, error) {
	merged := filepath.Join(tmp, "merged")
	if err := linkMerged(ctx, layerView(lowers), merged); err != nil {
		return "", nil, fmt.Errorf("image %s: prepare for NFS root: %w", name, err)
	}
	prep := filepath.Join(tmp, prepDirName)
	changes, err := prepare(ctx, name, merged, prep, log)
	return prep, changes, err
}

// linkMerged builds at dst the tree the layers v show merged (whiteouts and opaque dirs
// honoured): dirs with their owner, mode, mtime and xattrs, symlinks, and regular files as
// hard links to the topmost layer's file. Devices, fifos and sockets are left out.
func linkMerged(ctx context.Context, v layerView, dst string) error {
	var walk func(rel string, dirs []string) error
	walk = func(rel string, dirs []string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		// each name from the topmost dir that has it
		top := map[string]string{}
		var names []string
		for _, d := range dirs {
			ents, err := os.ReadDir(d)
			if err != nil {
				return err
			}
			for _, e := range ents {
				if _, ok := top[e.Name()]; !ok {
					top[e.Name()] = filepath.Join(d, e.Name())
					names = append(names, e.Name())
				}
			}
		}
		for _, n := range names {
			real := top[n]
			out := filepath.Join(dst, rel, n)
			var st unix.Stat_t
			if err := unix.Lstat(real, &st); err != nil {
				return err
			}
			switch st.Mode & typeMask {
			case typeDir:
				sub := []string{real}
				for i := slices.Index(dirs, filepath.Dir(real)) + 1; i < len(dirs) && !isOpaqueDir(sub[len(sub)-1]); i++ {
					var ls unix.Stat_t
					if unix.Lstat(filepath.Join(dirs[i], n), &ls) != nil || ls.Mode&typeMask != typeDir {
						break
					}
					sub = append(sub, filepath.Join(dirs[i], n))
				}
				if err := os.Mkdir(out, 0o700); err != nil {
					return err
				}
				if err := walk(filepath.Join(rel, n), sub); err != nil {
					return err
				}
				if err := copyDirAttrs(real, out, &st); err != nil {
					return err
				}
			case typeReg:
				if err := os.Link(real, out); err != nil {
					return err
				}
			case typeLnk:
				target, err := os.Readlink(real)
				if err != nil {
					return err
				}
				if err := os.Symlink(target, out); err != nil {
					return err
				}
				if err := os.Lchown(out, int(st.Uid), int(st.Gid)); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(v[0], &st); err != nil {
		return err
	}
	if err := walk("", []string(v)); err != nil {
		return err
	}
	return copyDirAttrs(v[0], dst, &st)
}

// copyDirAttrs gives dst the owner, mode, xattrs (not overlayfs' own) and mtime of src.
func copyDirAttrs(src, dst string, st *unix.Stat_t) error {
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
		return err
	}
	x, err := readXattrs(src)
	if err != nil {
		return err
	}
	for k, val := range x {
		if strings.HasPrefix(k, xattrOverlayPrefix) {
			continue
		}
		if err := unix.Lsetxattr(dst, k, val, 0); err != nil {
			return fmt.Errorf("%s: setxattr %s: %w", dst, k, err)
		}
	}
	return setMtime(dst, time.Unix(st.Mtim.Unix()))
}
