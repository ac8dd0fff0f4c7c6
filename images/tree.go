package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// entry is one file system object as a source (directory, tarball, ext4 or FAT partition)
// presents it: every source is turned into a stream of entries and one treeWriter lays them
// down, so fidelity rules live in one place.
type entry struct {
	// Path is slash-separated and relative to the image root; "" is the root itself.
	Path   string
	Mode   uint32 // st_mode: type bits | permission bits incl. setuid/setgid/sticky
	UID    uint32
	GID    uint32
	Mtime  time.Time
	Size   int64
	Major  uint32 // char/block devices
	Minor  uint32
	Target string // symlink target
	// LinkTo names an earlier entry this one is a hard link of; all other fields are ignored.
	LinkTo string
	Xattrs map[string][]byte
	// ACLText holds text ACLs (xattr name -> acl(5) text, as tar's SCHILY.acl.* records
	// carry them) for ACLs that Xattrs lacks.
	ACLText map[string]string
	// Open returns the content of a regular file, holes read as zeros.
	Open func() (io.ReadCloser, error)
}

// Type bits of st_mode; spelled out because unix.S_IF* are untyped per platform.
const (
	typeMask = unix.S_IFMT
	typeDir  = unix.S_IFDIR
	typeReg  = unix.S_IFREG
	typeLnk  = unix.S_IFLNK
	typeChr  = unix.S_IFCHR
	typeBlk  = unix.S_IFBLK
	typeFifo = unix.S_IFIFO
	typeSock = unix.S_IFSOCK
)

// sparseBlock is the granularity at which all-zero data becomes a hole in the imported
// file: a Pi OS root has a few large mostly-empty files and holes keep the store small.
const sparseBlock = 4096

// treeWriter lays entries down under root with owners, modes, times, xattrs, devices and hard
// links, and records each one for the manifest.
type treeWriter struct {
	image    string // image name, for error messages
	root     string
	buf      []byte
	zero     []byte
	dirs     []string // in creation order, each once
	dirTimes map[string]time.Time
	records  []record
	recIndex map[string]int
	bytes    int64
	progress *progress
	// pendingACLs are text ACLs naming users or groups, resolved against the image's own
	// /etc/passwd and /etc/group once the whole tree is written.
	pendingACLs []pendingACL
	// defaultACL holds the dirs written with a default ACL: what is created in them inherits
	// it, and must lose what the source does not have.
	defaultACL map[string]bool
}

// pendingACL is a text ACL waiting for the image's name database.
type pendingACL struct {
	path   string
	mode   uint32
	xattrs map[string][]byte // the entry's other xattrs, for the manifest digest
	text   map[string]string
}

func newTreeWriter(image, root string, p *progress) *treeWriter {
	return &treeWriter{
		image:      image,
		root:       root,
		buf:        make([]byte, 1<<20),
		zero:       make([]byte, sparseBlock),
		progress:   p,
		dirTimes:   map[string]time.Time{},
		recIndex:   map[string]int{},
		defaultACL: map[string]bool{},
	}
}

// record keeps one manifest record per path; a later entry for the same path (a tarball
// naming a directory after its children) replaces the earlier one.
func (w *treeWriter) record(r record) {
	if i, ok := w.recIndex[r.Path]; ok {
		w.records[i] = r
		return
	}
	w.recIndex[r.Path] = len(w.records)
	w.records = append(w.records, r)
}

func (w *treeWriter) dirTime(p string, t time.Time) {
	if _, ok := w.dirTimes[p]; !ok {
		w.dirs = append(w.dirs, p)
	}
	w.dirTimes[p] = t
}

// cleanPath rejects paths that would escape the root: a hostile tarball must not write
// outside the import directory.
func cleanPath(p string) (string, error) {
	p = strings.TrimPrefix(p, "./")
	p = strings.Trim(p, "/")
	if p == "" || p == "." {
		return "", nil
	}
	c := path.Clean(p)
	if c == ".." || strings.HasPrefix(c, "../") || strings.Contains(c, "\x00") {
		return "", fmt.Errorf("path %q leaves the image root", p)
	}
	return c, nil
}

func (w *treeWriter) host(p string) string {
	if p == "" {
		return w.root
	}
	return filepath.Join(w.root, filepath.FromSlash(p))
}

// add writes one entry. Parent directories missing from the stream (tarballs may omit them)
// are created root-owned 0755, as tar does.
func (w *treeWriter) add(ctx context.Context, e *entry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := cleanPath(e.Path)
	if err != nil {
		return fmt.Errorf("image %s: %w", w.image, err)
	}
	e.Path = p
	dst := w.host(p)
	if p != "" {
		if err := w.ensureParent(p); err != nil {
			return err
		}
	}
	if e.LinkTo != "" {
		return w.addLink(e, dst)
	}
	pending, err := w.acls(e)
	if err != nil {
		return fmt.Errorf("image %s: /%s: %w", w.image, p, err)
	}
	rec := record{Path: p, Mode: e.Mode, UID: e.UID, GID: e.GID, Mtime: e.Mtime.UnixNano(), Xattrs: xattrDigest(e.Xattrs), Opaque: isOpaque(e)}
	switch e.Mode & typeMask {
	case typeDir:
		if _, ok := w.dirTimes[p]; !ok && p != "" {
			if err := w.replaceable(p); err != nil {
				return err
			}
			if err := os.Mkdir(dst, 0o700); err != nil {
				return fmt.Errorf("image %s: mkdir /%s: %w", w.image, p, err)
			}
		}
		w.dirTime(p, e.Mtime)
	case typeReg:
		if err := w.replaceable(p); err != nil {
			return err
		}
		n, sum, err := w.writeFile(e, dst)
		if err != nil {
			return fmt.Errorf("image %s: /%s: %w", w.image, p, err)
		}
		rec.Size, rec.Data = n, sum
		w.bytes += n
	case typeLnk:
		if err := w.replaceable(p); err != nil {
			return err
		}
		if err := os.Symlink(e.Target, dst); err != nil {
			return fmt.Errorf("image %s: symlink /%s: %w", w.image, p, err)
		}
		rec.Data = e.Target
		rec.Size = int64(len(e.Target))
	case typeChr, typeBlk, typeFifo, typeSock:
		if err := w.replaceable(p); err != nil {
			return err
		}
		dev := unix.Mkdev(e.Major, e.Minor)
		if err := unix.Mknod(dst, e.Mode&(typeMask|0o7777), int(dev)); err != nil {
			return fmt.Errorf("image %s: mknod /%s: %w", w.image, p, err)
		}
		if t := e.Mode & typeMask; t == typeChr || t == typeBlk {
			rec.Data = fmt.Sprintf("%d:%d", e.Major, e.Minor)
		}
	default:
		return fmt.Errorf("image %s: /%s: unsupported file type %#o", w.image, p, e.Mode&typeMask)
	}
	if err := w.setAttrs(dst, e); err != nil {
		return fmt.Errorf("image %s: /%s: %w", w.image, p, err)
	}
	if e.Mode&typeMask == typeDir {
		_, w.defaultACL[p] = e.Xattrs[xattrACLDefault]
	}
	w.record(rec)
	if pending != nil {
		w.pendingACLs = append(w.pendingACLs, *pending)
	}
	return nil
}

// acls puts e's ACLs into the canonical xattr form (see acl.go). Text ACLs that name users
// or groups are returned as pending: the image's /etc/passwd may come later in the stream.
func (w *treeWriter) acls(e *entry) (*pendingACL, error) {
	var later map[string]string
	for name, text := range e.ACLText {
		if _, ok := e.Xattrs[name]; ok {
			continue // the raw xattr is exact; the text is only its readable twin
		}
		acl, err := parseTextACL(text, nil)
		if errors.Is(err, errACLName) {
			if later == nil {
				later = map[string]string{}
			}
			later[name] = text
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if e.Xattrs == nil {
			e.Xattrs = map[string][]byte{}
		}
		e.Xattrs[name] = encodeXattrACL(acl)
	}
	if err := canonicalACLs(e); err != nil {
		return nil, err
	}
	if later == nil {
		return nil, nil
	}
	if t := e.Mode & typeMask; t == typeLnk || (later[xattrACLDefault] != "" && t != typeDir) {
		return nil, errors.New("ACL on a symlink, or default ACL on a non-directory")
	}
	x := map[string][]byte{}
	for k, v := range e.Xattrs {
		x[k] = v
	}
	return &pendingACL{path: e.Path, mode: e.Mode, xattrs: x, text: later}, nil
}

// resolveACLs applies the pending text ACLs with the image's own user and group names.
func (w *treeWriter) resolveACLs() error {
	if len(w.pendingACLs) == 0 {
		return nil
	}
	db := &nameDB{}
	for _, f := range []struct {
		rel string
		m   *map[string]uint32
	}{{"etc/passwd", &db.users}, {"etc/group", &db.groups}} {
		b, _, err := readInRoot(w.root, f.rel)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("image %s: /%s (for the names in ACLs): %w", w.image, f.rel, err)
		}
		*f.m = parseNameDB(b)
	}
	for _, pa := range w.pendingACLs {
		if i, ok := w.recIndex[pa.path]; !ok || w.records[i].Link != "" || w.records[i].Mode&typeMask != pa.mode&typeMask {
			continue // replaced by a later entry of the stream
		}
		e := &entry{Path: pa.path, Mode: pa.mode, Xattrs: pa.xattrs}
		if e.Xattrs == nil {
			e.Xattrs = map[string][]byte{}
		}
		for name, text := range pa.text {
			acl, err := parseTextACL(text, db)
			if err != nil {
				return fmt.Errorf("image %s: /%s: %s: %w", w.image, pa.path, name, err)
			}
			e.Xattrs[name] = encodeXattrACL(acl)
		}
		if err := canonicalACLs(e); err != nil {
			return fmt.Errorf("image %s: /%s: %w", w.image, pa.path, err)
		}
		dst := w.host(pa.path)
		for name := range pa.text {
			v, ok := e.Xattrs[name]
			if !ok {
				continue // only repeats the mode: the mode says it
			}
			if err := unix.Lsetxattr(dst, name, v, 0); err != nil {
				return fmt.Errorf("image %s: /%s: setxattr %s: %w", w.image, pa.path, name, err)
			}
		}
		if e.Mode != pa.mode {
			if err := unix.Chmod(dst, e.Mode&0o7777); err != nil {
				return fmt.Errorf("image %s: /%s: chmod: %w", w.image, pa.path, err)
			}
		}
		i := w.recIndex[pa.path]
		w.records[i].Mode, w.records[i].Xattrs = e.Mode, xattrDigest(e.Xattrs)
	}
	return nil
}

func isDir(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
}

func (w *treeWriter) ensureParent(p string) error {
	parent := path.Dir(p)
	if parent == "." {
		return nil
	}
	// Our own record, not the file system, says what is a directory: a hostile tarball
	// ("a" -> /etc, then "a/passwd") must not write through a symlink onto the host.
	if _, ok := w.dirTimes[parent]; ok {
		return nil
	}
	if _, ok := w.recIndex[parent]; ok {
		return fmt.Errorf("image %s: /%s: parent /%s is not a directory", w.image, p, parent)
	}
	if err := w.ensureParent(parent); err != nil {
		return err
	}
	if err := os.Mkdir(w.host(parent), 0o755); err != nil {
		return fmt.Errorf("image %s: mkdir /%s: %w", w.image, parent, err)
	}
	w.record(record{Path: parent, Mode: typeDir | 0o755})
	w.dirTime(parent, time.Unix(0, 0))
	return nil
}

func (w *treeWriter) addLink(e *entry, dst string) error {
	first, err := cleanPath(e.LinkTo)
	if err != nil {
		return fmt.Errorf("image %s: hard link /%s: %w", w.image, e.Path, err)
	}
	if r, ok := w.recIndex[first]; !ok || w.records[r].Mode&typeMask == typeDir || w.records[r].Link != "" {
		return fmt.Errorf("image %s: hard link /%s -> /%s: target is not a file imported before it", w.image, e.Path, first)
	}
	if err := w.replaceable(e.Path); err != nil {
		return err
	}
	if err := os.Link(w.host(first), dst); err != nil {
		return fmt.Errorf("image %s: hard link /%s -> /%s: %w", w.image, e.Path, first, err)
	}
	w.record(record{Path: e.Path, Link: first})
	return nil
}

// replaceable clears the way for a new object at p: a tarball may carry a path twice, and
// the last one wins, as with tar -x. Only what this import created is ever removed, and a
// directory only when empty.
func (w *treeWriter) replaceable(p string) error {
	if p == "" {
		return fmt.Errorf("image %s: the root must be a directory", w.image)
	}
	if _, ok := w.recIndex[p]; !ok {
		return nil
	}
	if err := os.Remove(w.host(p)); err != nil {
		return fmt.Errorf("image %s: replace /%s: %w", w.image, p, err)
	}
	delete(w.dirTimes, p)
	return nil
}

// writeFile copies the content, turning all-zero blocks into holes, and hashes it on the way.
func (w *treeWriter) writeFile(e *entry, dst string) (int64, string, error) {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	var n int64
	if e.Open != nil {
		r, err := e.Open()
		if err != nil {
			return 0, "", err
		}
		n, err = w.copySparse(f, r, h)
		r.Close()
		if err != nil {
			return 0, "", err
		}
	}
	if e.Size >= 0 && n != e.Size && e.Open != nil {
		return 0, "", fmt.Errorf("content is %d bytes, size says %d", n, e.Size)
	}
	if err := f.Truncate(n); err != nil {
		return 0, "", err
	}
	if err := f.Close(); err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

func (w *treeWriter) copySparse(f *os.File, r io.Reader, h hash.Hash) (int64, error) {
	var off int64
	for {
		m, err := fill(r, w.buf)
		if m > 0 {
			chunk := w.buf[:m]
			h.Write(chunk)
			for i := 0; i < m; i += sparseBlock {
				end := min(i+sparseBlock, m)
				if bytes.Equal(chunk[i:end], w.zero[:end-i]) {
					continue
				}
				if _, err := f.WriteAt(chunk[i:end], off+int64(i)); err != nil {
					return off, err
				}
			}
			off += int64(m)
			w.progress.add(int64(m))
		}
		if err == io.EOF {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

// setAttrs applies owner, then mode (chown clears setuid/setgid), then xattrs (chown also
// drops security.capability), then times.
func (w *treeWriter) setAttrs(dst string, e *entry) error {
	if err := os.Lchown(dst, int(e.UID), int(e.GID)); err != nil {
		return err
	}
	if e.Mode&typeMask != typeLnk {
		if err := w.dropInherited(dst, e); err != nil {
			return err
		}
		if err := unix.Chmod(dst, e.Mode&0o7777); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	names := make([]string, 0, len(e.Xattrs))
	for k := range e.Xattrs {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if err := unix.Lsetxattr(dst, k, e.Xattrs[k], 0); err != nil {
			return fmt.Errorf("setxattr %s: %w", k, err)
		}
	}
	if e.Mode&typeMask != typeDir {
		return setMtime(dst, e.Mtime)
	}
	return nil
}

// dropInherited removes the ACLs an object got from its parent's default ACL at creation
// but does not have in the source.
func (w *treeWriter) dropInherited(dst string, e *entry) error {
	parent := path.Dir(e.Path)
	if parent == "." {
		parent = ""
	}
	if e.Path == "" || !w.defaultACL[parent] {
		return nil
	}
	for _, name := range []string{xattrACLAccess, xattrACLDefault} {
		if _, keep := e.Xattrs[name]; keep {
			continue
		}
		if err := unix.Lremovexattr(dst, name); err != nil && !errors.Is(err, unix.ENODATA) {
			return fmt.Errorf("remove inherited %s: %w", name, err)
		}
	}
	return nil
}

func setMtime(dst string, t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, dst, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// finish applies the ACLs that waited for the image's names, then sets directory times,
// deepest first, because creating children bumps them.
func (w *treeWriter) finish() error {
	if err := w.resolveACLs(); err != nil {
		return err
	}
	for i := len(w.dirs) - 1; i >= 0; i-- {
		d := w.dirs[i]
		if _, ok := w.dirTimes[d]; !ok {
			continue // replaced by a non-directory
		}
		if err := setMtime(w.host(d), w.dirTimes[d]); err != nil {
			return fmt.Errorf("image %s: /%s: %w", w.image, d, err)
		}
	}
	return nil
}

// xattrDigest condenses a file's xattrs for the manifest: names and values, order-free.
func xattrDigest(x map[string][]byte) string {
	if len(x) == 0 {
		return ""
	}
	names := make([]string, 0, len(x))
	for k := range x {
		names = append(names, k)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, k := range names {
		fmt.Fprintf(h, "%s\x00%d\x00", k, len(x[k]))
		h.Write(x[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ensureDir makes sure p exists as a directory (the mount point of a second partition),
// recording it like a tarball's implicit parent when the source did not have it.
func (w *treeWriter) ensureDir(p string) error {
	if _, ok := w.dirTimes[p]; ok {
		return nil
	}
	return w.ensureParent(p + "/x")
}
