package images

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// Decompression bounds for one layer. A layer may hold a big file of zeros (it costs no disk:
// zeros become holes), but a small blob must not unpack into terabytes of data: past the first
// GiB a layer may be at most maxLayerRatio times its blob. gzip cannot exceed ~1032:1.
const (
	maxLayerFree  = 1 << 30
	maxLayerRatio = 2048
	// maxLayerPath is PATH_MAX: tar's PAX headers allow a megabyte per name.
	maxLayerPath = 4096
	// maxLayerEntries bounds the paths of one layer (each costs memory until the layer is
	// done); a whole Debian desktop has about 200000.
	maxLayerEntries = 1 << 22
	// maxZstdWindow bounds the memory a zstd layer may ask for (levels up to 19 use 8 MiB,
	// --long=27 128 MiB).
	maxZstdWindow = 128 << 20
)

// OCI whiteout spellings inside a layer tar (image-spec layer.md).
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	// xattrOpaque and its value mark an overlayfs opaque dir.
	xattrOpaque               = "trusted.overlay.opaque"
	xattrOverlayPrefix        = "trusted.overlay."
	whiteoutMode       uint32 = typeChr // char 0/0, mode 0, as the kernel makes them
)

// layerStream reads a layer's tar out of its blob: decompressed as the blob's first bytes say
// (which must agree with the media type), the uncompressed size bounded, and, in finish, the
// blob checked against its digest and the tar against the config's diff_id.
type layerStream struct {
	layer   containerLayer
	size    int64 // of the blob
	raw     io.ReadCloser
	blobR   io.Reader // the blob, hashed into blob as it is read
	blob    hash.Hash
	diff    hash.Hash
	zr      *zstd.Decoder
	gz      *gzip.Reader
	tar     io.Reader // the uncompressed tar, hashed into diff
	bounded *boundedReader
}

// openLayer opens layer l of the archive; progress counts blob bytes.
func openLayer(a imageArchive, l containerLayer, prog *progress) (*layerStream, error) {
	raw, size, err := a.open(l.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s is missing from the archive", trimForError(l.Path))
	}
	if err != nil {
		return nil, err
	}
	if l.Size >= 0 && size != l.Size {
		raw.Close()
		return nil, fmt.Errorf("blob %s: %d bytes, the manifest says %d", trimForError(l.Path), size, l.Size)
	}
	ls := &layerStream{layer: l, size: size, raw: raw, blob: sha256.New(), diff: sha256.New()}
	ls.blobR = io.TeeReader(&countingReader{r: io.LimitReader(raw, size), p: prog}, ls.blob)
	br := bufio.NewReaderSize(ls.blobR, 64<<10)
	magic, _ := br.Peek(4)
	kind := ""
	switch {
	case bytes.HasPrefix(magic, []byte{0x1F, 0x8B}):
		kind = kindGzip
	case bytes.HasPrefix(magic, []byte{0x28, 0xB5, 0x2F, 0xFD}):
		kind = kindZstd
	}
	if want, ok := layerMediaTypes[l.MediaType]; ok && want != kind {
		raw.Close()
		return nil, fmt.Errorf("blob %s: media type %s, but the blob is %s", trimForError(l.Path), l.MediaType, orUnknown(kind, "not compressed"))
	}
	var dec io.Reader = br
	switch kind {
	case kindGzip:
		if ls.gz, err = gzip.NewReader(br); err != nil {
			raw.Close()
			return nil, fmt.Errorf("blob %s: gzip: %w", trimForError(l.Path), err)
		}
		dec = ls.gz
	case kindZstd:
		ls.zr, err = zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxZstdWindow),
			zstd.WithDecoderMaxMemory(maxZstdWindow))
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("blob %s: zstd: %w", trimForError(l.Path), err)
		}
		dec = ls.zr
	}
	ls.bounded = newBoundedReader(dec, "blob "+trimForError(l.Path), size)
	ls.tar = io.TeeReader(ls.bounded, ls.diff)
	return ls, nil
}

// finish reads what the tar reader left (end-of-archive blocks, which the diff_id covers, and
// what follows the compressed stream) and checks both digests.
func (ls *layerStream) finish() error {
	if _, err := io.Copy(io.Discard, ls.tar); err != nil {
		return fmt.Errorf("blob %s: %w", trimForError(ls.layer.Path), err)
	}
	if _, err := io.Copy(io.Discard, ls.blobR); err != nil {
		return fmt.Errorf("blob %s: %w", trimForError(ls.layer.Path), err)
	}
	if ls.layer.Digest != "" {
		if got := hex.EncodeToString(ls.blob.Sum(nil)); got != ls.layer.Digest {
			return fmt.Errorf("blob %s: content has sha256 %s, the manifest says sha256:%s: corrupt or tampered archive", trimForError(ls.layer.Path), got, ls.layer.Digest)
		}
	}
	if got := hex.EncodeToString(ls.diff.Sum(nil)); got != ls.layer.DiffID {
		return fmt.Errorf("blob %s: uncompressed tar has sha256 %s, the config's diff_id is sha256:%s: corrupt or tampered archive", trimForError(ls.layer.Path), got, ls.layer.DiffID)
	}
	return nil
}

func (ls *layerStream) close() {
	if ls.zr != nil {
		ls.zr.Close()
	}
	if ls.gz != nil {
		ls.gz.Close()
	}
	ls.raw.Close()
}

// newBoundedReader bounds what a compressed stream of size bytes may unpack to.
func newBoundedReader(r io.Reader, what string, size int64) *boundedReader {
	return &boundedReader{r: r, left: maxLayerFree + maxLayerRatio*size, what: what, size: size}
}

// boundedReader fails once more than left bytes come out of r.
type boundedReader struct {
	r    io.Reader
	left int64
	what string
	size int64
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// one byte more tells a stream that ends here from one that goes on
		var one [1]byte
		if n, _ := b.r.Read(one[:]); n == 0 {
			return 0, io.EOF
		}
		return 0, fmt.Errorf("%s of %d bytes unpacks to more than %d bytes: refusing (decompression bomb?)", b.what, b.size, maxLayerFree+maxLayerRatio*b.size)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

// rootAttrs are the layer root's owner, mode and mtime. A layer tar without a "./" entry
// keeps those of the layer below, so the stack's root looks as tar extraction in order
// leaves it (the kernel shows the topmost layer's root).
type rootAttrs struct {
	Mode     uint32
	UID, GID uint32
	Mtime    time.Time
}

func (r rootAttrs) equal(o rootAttrs) bool {
	return r.Mode == o.Mode && r.UID == o.UID && r.GID == o.GID && r.Mtime.Equal(o.Mtime)
}

// defaultRoot is the root of a bottom layer whose tar does not describe it.
var defaultRoot = rootAttrs{Mode: 0o755, Mtime: time.Unix(0, 0)}

// containerLayerStats counts what writeContainerLayer wrote.
type containerLayerStats struct {
	Files, Bytes int64
	Root         rootAttrs // the layer's root, for the layer above
	records      []record  // the layer's manifest, so the store need not read the tree again
}

// writeContainerLayer lays one layer tar down at dst (an empty dir) in the kernel overlayfs
// format; label ("NAME: layer 2/3 (...)") starts its errors, lowers are the layers below
// (topmost first). `.wh.NAME` becomes a whiteout (char 0/0) of NAME, `.wh..wh..opq` makes its
// dir opaque (trusted.overlay.opaque=y). Everything else goes through the treeWriter, which
// keeps owners, modes, xattrs and hard links and refuses paths out of the root. A parent dir
// the tar does not name is made with the owner, mode, mtime and xattrs the layers below give
// it, as tar extraction over them leaves it. Refused: other `.wh.` names (aufs metadata),
// whiteout names as directories, a path both deleted and added in the same layer, char
// devices 0/0 (they would read as whiteouts) and trusted.overlay.* xattrs (overlayfs' own).
func writeContainerLayer(ctx context.Context, label string, r io.Reader, dst string, root rootAttrs, lowers []string) (containerLayerStats, error) {
	l := &ociLayer{tw: newTreeWriter(label, dst, nil), label: label, lowers: layerView(lowers),
		whiteouts: map[string]bool{}, opaque: map[string]bool{}}
	if err := l.tw.add(ctx, &entry{Path: "", Mode: typeDir | root.Mode&0o7777, UID: root.UID, GID: root.GID, Mtime: root.Mtime}); err != nil {
		return containerLayerStats{}, err
	}
	var entryErr error // the callback's errors carry the label already
	_, err := walkTarEntries(ctx, r, func(e *entry) error {
		entryErr = l.add(ctx, e)
		return entryErr
	})
	if err != nil && entryErr == nil {
		err = fmt.Errorf("image %s: %w", label, err)
	}
	if err != nil {
		return containerLayerStats{}, err
	}
	return finishLayer(l.tw, dst, label, l.opaque)
}

// ociLayer is one layer being written.
type ociLayer struct {
	tw        *treeWriter
	label     string
	lowers    layerView
	whiteouts map[string]bool // paths this layer deletes
	opaque    map[string]bool // dirs this layer makes opaque
}

func (l *ociLayer) fail(p, format string, args ...any) error {
	return fmt.Errorf("image %s: /%s: %s", l.label, p, fmt.Sprintf(format, args...))
}

// add adds one member of a layer tar, turning OCI whiteouts into overlayfs ones.
func (l *ociLayer) add(ctx context.Context, e *entry) error {
	tw := l.tw
	if len(e.Path) > maxLayerPath || len(e.LinkTo) > maxLayerPath {
		return fmt.Errorf("image %s: a path of more than %d bytes: refusing", l.label, maxLayerPath)
	}
	if len(tw.records) >= maxLayerEntries {
		return fmt.Errorf("image %s: more than %d entries: refusing", l.label, maxLayerEntries)
	}
	p, err := cleanPath(e.Path)
	if err != nil {
		return fmt.Errorf("image %s: %w", l.label, err)
	}
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	for _, c := range strings.Split(dir, "/") {
		if strings.HasPrefix(c, whiteoutPrefix) {
			return l.fail(p, "a whiteout name (%s) used as a directory", c)
		}
	}
	if err := l.parents(ctx, p); err != nil {
		return err
	}
	if p != "" && strings.HasPrefix(base, whiteoutPrefix) {
		switch name := base[len(whiteoutPrefix):]; {
		case base == whiteoutOpaque:
			if dir == "" {
				return l.fail(p, "opaque marker on the root: a layer cannot hide the whole image")
			}
			if err := tw.ensureDir(dir); err != nil {
				return err
			}
			l.opaque[dir] = true
			return nil
		case strings.HasPrefix(name, whiteoutPrefix):
			return l.fail(p, "%s is aufs metadata, not an OCI whiteout: refusing", base)
		case name == "" || name == "." || name == "..":
			return l.fail(p, "whiteout of %q", name)
		default:
			target := path.Join(dir, name)
			if _, ok := tw.recIndex[target]; ok {
				return l.fail(target, "both added and deleted in one layer")
			}
			l.whiteouts[target] = true
			return tw.add(ctx, &entry{Path: target, Mode: whiteoutMode, Mtime: e.Mtime})
		}
	}
	if l.whiteouts[p] {
		return l.fail(p, "both deleted and added in one layer")
	}
	if t := e.Mode & typeMask; e.LinkTo == "" && t == typeChr && e.Major == 0 && e.Minor == 0 {
		return l.fail(p, "char device 0/0 is a whiteout in the overlay format; a layer spells a deletion .wh.NAME")
	}
	for k := range e.Xattrs {
		if strings.HasPrefix(k, xattrOverlayPrefix) {
			return l.fail(p, "xattr %s belongs to overlayfs: refusing", trimForError(k))
		}
	}
	if e.LinkTo != "" {
		if t, err := cleanPath(e.LinkTo); err == nil && l.whiteouts[t] {
			return l.fail(p, "hard link to a whiteout")
		}
	}
	e.Path = p
	return tw.add(ctx, e)
}

// parents writes the ancestors of p that this layer has not written yet and the layers
// below have as dirs, with their attributes: the treeWriter would make them root 0755, and
// they would hide the real ones. Ancestors the layers below lack are left to the treeWriter.
func (l *ociLayer) parents(ctx context.Context, p string) error {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		a := p[:i]
		if _, ok := l.tw.dirTimes[a]; ok {
			continue
		}
		if _, ok := l.tw.recIndex[a]; ok || len(l.lowers) == 0 {
			return nil // not a dir here: the treeWriter says so; nothing below: it makes them
		}
		real, st, _, err := l.lowers.find(a)
		if err != nil || st.Mode&typeMask != typeDir {
			return nil
		}
		x, err := readXattrs(real)
		if err != nil {
			return l.fail(a, "%v", err)
		}
		for k := range x {
			if strings.HasPrefix(k, xattrOverlayPrefix) {
				delete(x, k) // opaque below is not opaque here
			}
		}
		if err := l.tw.add(ctx, &entry{Path: a, Mode: st.Mode, UID: st.Uid, GID: st.Gid, Mtime: time.Unix(st.Mtim.Unix()), Xattrs: x}); err != nil {
			return err
		}
	}
	return nil
}

// finishLayer marks the opaque dirs and sets dir times.
func finishLayer(tw *treeWriter, dst, label string, opaque map[string]bool) (containerLayerStats, error) {
	fail := func(p, format string, args ...any) error {
		return fmt.Errorf("image %s: /%s: %s", label, p, fmt.Sprintf(format, args...))
	}
	dirs := make([]string, 0, len(opaque))
	for d := range opaque {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		if _, ok := tw.dirTimes[d]; !ok {
			return containerLayerStats{}, fail(d, "opaque marker in a directory the layer replaced by a file")
		}
		if err := unix.Lsetxattr(tw.host(d), xattrOpaque, []byte("y"), 0); err != nil {
			return containerLayerStats{}, fail(d, "setxattr %s: %v", xattrOpaque, err)
		}
		// the manifest record, as a scan of the tree would make it
		x, err := readXattrs(tw.host(d))
		if err != nil {
			return containerLayerStats{}, fail(d, "%v", err)
		}
		i := tw.recIndex[d]
		tw.records[i].Opaque, tw.records[i].Xattrs = true, xattrDigest(x)
	}
	if err := tw.finish(); err != nil {
		return containerLayerStats{}, err
	}
	var st unix.Stat_t
	if err := unix.Lstat(dst, &st); err != nil {
		return containerLayerStats{}, fmt.Errorf("image %s: %w", label, err)
	}
	return containerLayerStats{
		Files:   int64(len(tw.records)),
		Bytes:   tw.bytes,
		records: canonicalLinks(tw.records),
		Root:    rootAttrs{Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid, Mtime: time.Unix(st.Mtim.Unix())},
	}, nil
}

// canonicalLinks names each hard-link group after the name a scan of the tree meets first
// (depth first, names sorted), as the store's own scan does: the tar's first name is another
// one, and the manifest, hence the layer's digest, must not depend on the tar's order.
func canonicalLinks(recs []record) []record {
	groups := map[string][]int{} // first name -> indexes of its links
	index := map[string]int{}
	for i, r := range recs {
		index[r.Path] = i
		if r.Link != "" {
			groups[r.Link] = append(groups[r.Link], i)
		}
	}
	for first, links := range groups {
		fi, ok := index[first]
		if !ok {
			continue
		}
		canon := first
		for _, i := range links {
			if scanBefore(recs[i].Path, canon) {
				canon = recs[i].Path
			}
		}
		if canon == first {
			continue
		}
		file := recs[fi]
		ci := index[canon]
		file.Path = canon
		recs[ci] = file
		recs[fi] = record{Path: first, Link: canon}
		for _, i := range links {
			if i != ci {
				recs[i].Link = canon
			}
		}
	}
	return recs
}

// scanBefore tells whether a depth-first walk with sorted names meets path a before b.
func scanBefore(a, b string) bool {
	as, bs := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] != bs[i] {
			return as[i] < bs[i]
		}
	}
	return len(as) < len(bs)
}
