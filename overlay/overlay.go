// Package overlay is the union file system under every board's root: one writable upper
// directory over ordered read-only lowers, stored in the Linux overlayfs on-disk format.
package overlay

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Options names the directories of one overlay.
type Options struct {
	Upper  string   // writable upper dir (created if missing)
	Work   string   // scratch dir on the same file system as Upper, for crash-safe copy-up temp files; ours alone, never shared with a kernel mount
	Lowers []string // read-only lower dirs, topmost first (like lowerdir=a:b:c); they must not change while the FS is in use
}

// maxLowers keeps the layer index inside the 8 bits the FileID scheme reserves for it.
const maxLowers = 255

// FS is the merged view of one upper over its lowers. It is safe for concurrent use:
// namespace and metadata changes are serialized, lookups and reads run in parallel.
type FS struct {
	upper  string   // absolute upper dir
	work   string   // absolute work dir
	layers []string // layers[0] is the upper, then the lowers topmost first

	// mu serializes every change to the upper layer, so a lookup never sees a copy-up or a
	// whiteout half made, and O_EXCL creation is atomic.
	mu sync.RWMutex
	// gen counts the sections that held mu exclusively (lock): while it stands still, every
	// name resolves to the real object it resolved to before, so a Loc made under it is
	// still where that name lives. Guarded by mu.
	gen   uint64
	dirs  dirCache
	lists lowerLists // lower dirs' names, never stale (lowers do not change)
	tmpID atomic.Uint64
	links map[int]linkIndex // lower hard links by layer, built on first need; guarded by mu

	// midCopy, if set (by tests only), is called halfway through a copy-up's file data with
	// the temp file's path: a failpoint where a crash test kills the process.
	midCopy func(tmp string)
}

// New opens the overlay described by opts, creating Upper and Work if needed. Temp files a
// crash left in Work are removed: they were never renamed into the upper, so nothing
// visible refers to them.
func New(opts Options) (*FS, error) {
	if opts.Upper == "" || opts.Work == "" {
		return nil, errors.New("overlay: Upper and Work must be set")
	}
	if len(opts.Lowers) > maxLowers {
		return nil, fmt.Errorf("overlay: %d lowers, at most %d supported", len(opts.Lowers), maxLowers)
	}
	upper, err := filepath.Abs(opts.Upper)
	if err != nil {
		return nil, fmt.Errorf("overlay: upper %s: %w", opts.Upper, err)
	}
	work, err := filepath.Abs(opts.Work)
	if err != nil {
		return nil, fmt.Errorf("overlay: work %s: %w", opts.Work, err)
	}
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("overlay: %w", err)
		}
	}
	var ust, wst unix.Stat_t
	if err := unix.Stat(upper, &ust); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: upper, Err: err}
	}
	if err := unix.Stat(work, &wst); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: work, Err: err}
	}
	if ust.Dev != wst.Dev {
		return nil, fmt.Errorf("overlay: work %s is not on the file system of upper %s: copy-up needs rename between them", work, upper)
	}
	o := &FS{upper: upper, work: work, layers: []string{upper}}
	for _, l := range opts.Lowers {
		abs, err := filepath.Abs(l)
		if err != nil {
			return nil, fmt.Errorf("overlay: lower %s: %w", l, err)
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("overlay: lower: %w", err)
		}
		if !fi.IsDir() {
			return nil, &fs.PathError{Op: "lower", Path: abs, Err: unix.ENOTDIR}
		}
		o.layers = append(o.layers, abs)
	}
	if err := o.cleanWork(); err != nil {
		return nil, err
	}
	o.dirs.init()
	o.lists.init()
	return o, nil
}

// lock takes mu for a change of the upper and moves gen, so no Loc made before the change
// is trusted after it (OpenLoc). Every change of the upper goes through lock.
func (o *FS) lock() {
	o.mu.Lock()
	o.gen++
}

// cleanWork removes what an interrupted copy-up, rename or removal left in Work.
func (o *FS) cleanWork() error {
	ents, err := os.ReadDir(o.work)
	if err != nil {
		return fmt.Errorf("overlay: clean work: %w", err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(o.work, e.Name())); err != nil {
			return fmt.Errorf("overlay: clean work: %w", err)
		}
	}
	return nil
}

// tempName returns a fresh name in Work; the caller creates it with an exclusive call.
func (o *FS) tempName() string {
	n := o.tmpID.Add(1)
	return filepath.Join(o.work, "tmp-"+strconv.FormatInt(time.Now().UnixNano(), 36)+"-"+strconv.FormatUint(n, 36))
}

// upperPath is where the merged path p lives in the upper layer.
func (o *FS) upperPath(p string) string {
	if p == "" {
		return o.upper
	}
	return o.upper + "/" + p
}
