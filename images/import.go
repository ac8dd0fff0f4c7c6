package images

import (
	"bufio"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// ImportOptions tunes Store.Import.
type ImportOptions struct {
	// Progress receives progress lines (bytes, rate, ETA); nil for none. A terminal gets one
	// redrawn line, anything else a plain line every few seconds.
	Progress io.Writer
	// Logger gets structured events; nil means slog.Default().
	Logger *slog.Logger
	// Prepare writes the NFS-root preparation layer (prep/). The CLI should default it to true:
	// a Pi OS image does not boot from NFS without it.
	Prepare bool
	// Replace allows importing over an existing image of the same name.
	Replace bool
	// Source is what `image ls` shows the image was made from; the source file's or
	// directory's base name when empty.
	Source string
	// Ref picks the image of a container image archive that holds several (an OCI ref
	// name annotation or a docker save RepoTag); see oci.go.
	Ref string
}

// source is one way of reading an image: it streams entries, parents before children.
type source struct {
	format string
	sha256 string // of the source file, filled in by walk when it reads the whole file
	walk   func(ctx context.Context, tw *treeWriter) error
	close  func() error
}

// ErrExists is returned by Import when the store already has an image of that name and
// ImportOptions.Replace is not set.
var ErrExists = errors.New("already exists")

// Import reads src (.img, .img.xz, a directory, .tar, .tar.gz, .tar.xz, or a container image
// archive: an OCI image layout or docker save archive, as a directory or a tar) into a new
// image called name. The image is built in a temp dir and renamed into place, so a failed or
// cancelled import leaves nothing behind and readers never see half an image.
func (s *Store) Import(ctx context.Context, src, name string, opts ImportOptions) (*Info, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if s.Exists(name) && !opts.Replace {
		return nil, fmt.Errorf("image %s %w in %s", name, ErrExists, s.dir)
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return nil, fmt.Errorf("image %s: source %s: %w", name, src, err)
	}
	if ok, compression := containerArchive(ctx, abs); ok {
		return s.importContainer(ctx, abs, compression, name, opts, log)
	}
	tmp, err := s.TempDir("import-" + name)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	defer func() {
		if err := os.RemoveAll(tmp); err != nil {
			log.Warn("could not clean up after import", "image", name, "dir", tmp, "err", err)
		}
	}()
	start := time.Now()
	log.Info("importing image", "image", name, "source", abs)
	prog := newProgress(opts.Progress, name)
	info, err := s.build(ctx, abs, name, tmp, opts, prog, log)
	if err != nil {
		prog.fail()
		return nil, err
	}
	prog.end()
	log.Info("imported image", "image", name, "files", info.Files, "bytes", info.Bytes, "layers", len(info.Layers),
		"took", time.Since(start).Round(time.Millisecond))
	return info, nil
}

// build reads the source into tmp/root and prepares tmp/prep, makes them the image's
// layers (root, then prep on top) and the image.
func (s *Store) build(ctx context.Context, abs, name, tmp string, opts ImportOptions, prog *progress, log *slog.Logger) (*Info, error) {
	src, err := openSource(ctx, abs, name, tmp, prog, log)
	if err != nil {
		return nil, err
	}
	defer src.close()
	root := filepath.Join(tmp, rootDirName)
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	tw := newTreeWriter(name, root, prog)
	// A default for the root dir itself; sources that describe it overwrite it.
	if err := tw.add(ctx, &entry{Path: "", Mode: typeDir | 0o755, Mtime: time.Now()}); err != nil {
		return nil, err
	}
	if err := src.walk(ctx, tw); err != nil {
		return nil, err
	}
	if err := tw.finish(); err != nil {
		return nil, err
	}
	source := cmp.Or(opts.Source, filepath.Base(abs))
	meta := ImageMeta{Source: source, Format: src.format, SHA256: src.sha256, Replace: opts.Replace}
	prep := filepath.Join(tmp, prepDirName)
	if opts.Prepare {
		changes, err := prepare(ctx, name, root, prep, log)
		if err != nil {
			return nil, err
		}
		meta.Prepared, meta.Changes = len(changes) > 0, changes
	}
	var prepRecs []record
	if meta.Prepared {
		if prepRecs, err = scanTree(ctx, prep); err != nil {
			return nil, fmt.Errorf("image %s: prep layer: %w", name, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rootLayer, err := s.addLayer(root, tw.records, "root of "+source)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	layers := []string{rootLayer.Digest}
	if meta.Prepared {
		prepLayer, err := s.addLayer(prep, prepRecs, "NFS-root preparation of "+source)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", name, err)
		}
		layers = append(layers, prepLayer.Digest)
	}
	if err := s.CreateImage(name, "", layers, meta); err != nil {
		return nil, err
	}
	return s.Info(name)
}

// openSource decides from the file itself (not its name) how to read it.
func openSource(ctx context.Context, abs, name, tmp string, prog *progress, log *slog.Logger) (*source, error) {
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("image %s: source: %w", name, err)
	}
	if fi.IsDir() {
		return &source{
			format: "dir",
			walk: func(ctx context.Context, tw *treeWriter) error {
				prog.begin("copy", 0)
				if err := walkDir(ctx, abs, func(e *entry) error { return tw.add(ctx, e) }); err != nil {
					return fmt.Errorf("image %s: source %s: %w", name, abs, err)
				}
				return nil
			},
			close: func() error { return nil },
		}, nil
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("image %s: source %s is neither a file nor a directory", name, abs)
	}
	return openFileSource(ctx, abs, name, tmp, fi.Size(), prog, log)
}

// openFileSource opens a file source: a tarball (plain, gzip or xz) is streamed; a disk
// image (plain or compressed) is read through its partitions, a compressed one after being
// decompressed into a sparse temp file inside the import dir.
func openFileSource(ctx context.Context, abs, name, tmp string, size int64, prog *progress, log *slog.Logger) (*source, error) {
	f, err := os.Open(abs)
	if err != nil {
		return nil, fmt.Errorf("image %s: source: %w", name, err)
	}
	hdr := make([]byte, sniffLen)
	n, err := f.ReadAt(hdr, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, fmt.Errorf("image %s: source %s: %w", name, abs, err)
	}
	kind := sniffFormat(hdr[:n])
	src := &source{close: f.Close}
	hash := sha256.New()
	hashed := func() string { return hex.EncodeToString(hash.Sum(nil)) }
	// Streams are hashed as they are read: the source file is read exactly once.
	stream := &countingReader{r: io.TeeReader(f, hash), p: prog}
	switch kind {
	case kindTar:
		src.format = "tar"
		src.walk = func(ctx context.Context, tw *treeWriter) error {
			tw.progress = nil // progress counts source bytes here
			prog.begin("read", size)
			if err := walkTar(ctx, stream, func(e *entry) error { return tw.add(ctx, e) }); err != nil {
				return fmt.Errorf("image %s: source %s: %w", name, abs, err)
			}
			_, _ = io.Copy(io.Discard, stream) // tar padding, so the checksum covers the file
			src.sha256 = hashed()
			return nil
		}
	case kindXZ, kindGzip:
		src.walk = func(ctx context.Context, tw *treeWriter) error {
			return walkCompressed(ctx, kind, stream, abs, name, tmp, size, src, hashed, tw, prog, log)
		}
	case kindMBR:
		src.format = "img"
		src.walk = func(ctx context.Context, tw *treeWriter) error {
			// The checksum is computed beside the walk, which reads the image out of order.
			done := make(chan error, 1)
			go func() {
				_, err := io.Copy(hash, io.NewSectionReader(f, 0, size))
				done <- err
			}()
			if err := walkDisk(ctx, abs, name, tw, prog, log); err != nil {
				return err
			}
			if err := <-done; err != nil {
				return fmt.Errorf("image %s: checksum %s: %w", name, abs, err)
			}
			src.sha256 = hashed()
			return nil
		}
	default:
		f.Close()
		return nil, fmt.Errorf("image %s: %s is not a disk image (.img, .img.xz), a tarball (.tar, .tar.gz, .tar.xz) or a directory", name, abs)
	}
	return src, nil
}

// walkCompressed decompresses a gzip or xz source and reads what it holds.
func walkCompressed(ctx context.Context, kind string, stream io.Reader, abs, name, tmp string, size int64,
	src *source, hashed func() string, tw *treeWriter, prog *progress, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fail := func(err error) error { return fmt.Errorf("image %s: source %s: %w", name, abs, err) }
	dec, err := decompress(ctx, kind, stream)
	if err != nil {
		return fail(err)
	}
	prog.begin("decompress", size)
	br := bufio.NewReaderSize(dec.R, 1<<20)
	inner, err := peekKind(br)
	if err != nil {
		cancel()
		if werr := dec.Wait(); werr != nil {
			return fail(fmt.Errorf("%s: %w", kind, werr))
		}
		return fail(err)
	}
	ext := map[string]string{kindXZ: "xz", kindGzip: "gz"}[kind]
	switch inner {
	case kindTar:
		src.format = "tar." + ext
		tw.progress = nil
		if err := walkTar(ctx, br, func(e *entry) error { return tw.add(ctx, e) }); err != nil {
			cancel()
			if werr := dec.Wait(); werr != nil && ctx.Err() == nil {
				return fail(fmt.Errorf("%s: %w", kind, werr))
			}
			return fail(err)
		}
		_, _ = io.Copy(io.Discard, br)
		if err := dec.Wait(); err != nil {
			return fail(fmt.Errorf("%s: %w", kind, err))
		}
		_, _ = io.Copy(io.Discard, stream)
		src.sha256 = hashed()
		return nil
	case kindMBR:
		src.format = "img." + ext
	default:
		cancel()
		_ = dec.Wait()
		return fail(fmt.Errorf("decompressed data is not a disk image (no MBR partition table) nor a tar archive"))
	}
	diskPath := filepath.Join(tmp, "disk.img")
	df, err := os.OpenFile(diskPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fail(err)
	}
	defer os.Remove(diskPath)
	defer df.Close()
	t0 := time.Now()
	n, err := writeSparse(ctx, df, br)
	if werr := dec.Wait(); werr != nil {
		return fail(fmt.Errorf("%s: %w", kind, werr))
	}
	if err != nil {
		return fail(fmt.Errorf("decompress to %s: %w", diskPath, err))
	}
	_, _ = io.Copy(io.Discard, stream)
	src.sha256 = hashed()
	prog.end()
	log.Debug("decompressed image", "image", name, "bytes", n, "took", time.Since(t0).Round(time.Millisecond))
	return walkDisk(ctx, diskPath, name, tw, prog, log)
}
