package nfsroot

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/willscott/go-nfs"
)

// Export is one board's root as the server wires it from fleet.yaml.
type Export struct {
	Board string // board name, for logs
	Path  string // export path the board mounts, e.g. "/boards/pi-01"
	// FS is the board's merged root: the server passes its *overlay.FS.
	FS FileSystem
	// Allow says whether a client address may use this export (the board's fixed IP, or
	// one learned from its DHCP/TFTP). Nil allows nobody.
	Allow      func(netip.Addr) bool
	RootSquash bool // map uid/gid 0 to nobody (65534)
	// StateDir holds the persistent handle table and instance id; it is deleted together
	// with the upper when the board is reset, which makes the board's old handles STALE.
	StateDir string
}

// export is an Export with its runtime state.
type export struct {
	Export
	id     uint64
	log    *slog.Logger
	policy atomic.Pointer[policy] // changes on reload while requests run

	initMu  sync.Mutex
	ready   bool
	tbl     *handleTable
	inst    [8]byte
	rootID  uint64
	files   openFiles
	dirs    dirCache
	removed atomic.Bool

	// changes counts mutations (twice each: before and after), changing the ones in flight;
	// a cached listing is reused for a new READDIR(PLUS) only if neither moved since it was
	// read, so a listing never shows attributes older than the last change.
	changes  atomic.Uint64
	changing atomic.Int64
	resolved resolvedCache
	acls     aclCache // access ACLs by FileID, for permission checks (acl.go)

	gate callGate // calls running against the export; fenced when it is removed

	mu      sync.Mutex
	mounts  map[netip.Addr]time.Time // MNT without UMNT (and when), for DUMP and Mounted
	lastNFS atomic.Int64             // unix seconds of the last NFS call
}

// policy is the part of an Export a reload may change without resetting the export.
type policy struct {
	allow      func(netip.Addr) bool
	rootSquash bool
}

func (e *export) setPolicy(allow func(netip.Addr) bool, rootSquash bool) {
	e.policy.Store(&policy{allow: allow, rootSquash: rootSquash})
}

func newExport(e Export, log *slog.Logger) *export {
	x := &export{
		Export: e,
		id:     exportID(e.Board, e.Path),
		log:    log.With("board", e.Board, "export", e.Path),
		files:  openFiles{m: make(map[uint64]*openFile)},
		dirs:   dirCache{m: make(map[uint64]*dirList)},
		mounts: make(map[netip.Addr]time.Time),
	}
	x.setPolicy(e.Allow, e.RootSquash)
	return x
}

func (e *export) allowed(a netip.Addr) bool {
	p := e.policy.Load()
	return p.allow != nil && p.allow(a.Unmap())
}

// effective applies root squashing to a caller's credentials.
func (e *export) effective(c cred) cred {
	if !e.policy.Load().rootSquash {
		return c
	}
	if c.uid == 0 {
		c.uid, c.gid = nobody, nobody
	}
	if c.gid == 0 {
		c.gid = nobody
	}
	if len(c.gids) == 0 {
		return c
	}
	gids := make([]uint32, len(c.gids))
	for i, g := range c.gids {
		if g == 0 {
			g = nobody
		}
		gids[i] = g
	}
	c.gids = gids
	return c
}

// init opens the board's handle table on first use, so hundreds of idle boards cost no I/O
// at startup, and a board whose state dir is broken fails alone.
func (e *export) init() error {
	e.initMu.Lock()
	defer e.initMu.Unlock()
	if e.ready {
		return nil
	}
	if e.removed.Load() {
		return fmt.Errorf("board %s: export removed", e.Board)
	}
	fi, err := e.FS.Lstat("/")
	if err != nil {
		return fmt.Errorf("board %s: stat root: %w", e.Board, err)
	}
	st, ok := statOf(fi)
	if !ok {
		return fmt.Errorf("board %s: root has no file status", e.Board)
	}
	tbl, inst, err := openTable(e.StateDir)
	if err != nil {
		return fmt.Errorf("board %s: %w", e.Board, err)
	}
	e.tbl, e.inst, e.rootID, e.ready = tbl, inst, st.fileID, true
	return nil
}

func (e *export) close() {
	e.removed.Store(true)
	e.files.closeAll()
	e.initMu.Lock()
	defer e.initMu.Unlock()
	if e.tbl != nil {
		if err := e.tbl.close(); err != nil {
			e.log.Error("closing handle table", "client", "", "err", err)
		}
	}
}

// flush fsyncs the handle table if the export is open.
func (e *export) flush() error {
	e.initMu.Lock()
	defer e.initMu.Unlock()
	if e.tbl == nil {
		return nil
	}
	return e.tbl.durable()
}

func (e *export) handle(fileID uint64) []byte { return makeHandle(e.id, e.inst, fileID) }

// resolve turns a FileID into its current path and status, or STALE.
func (e *export) resolve(fileID uint64) (string, *fstat, nfs.NFSStatus) {
	before := e.changes.Load()
	quiet := e.changing.Load() == 0
	if quiet {
		if p, st, ok := e.resolved.get(fileID, before); ok {
			return p, &st, nfs.NFSStatusOk
		}
	}
	for _, p := range e.tbl.candidates(fileID, e.rootID) {
		fi, err := e.FS.Lstat(p)
		if err != nil {
			continue
		}
		if st, ok := statOf(fi); ok && st.fileID == fileID {
			e.remember(fileID, p, &st, before, quiet)
			return p, &st, nfs.NFSStatusOk
		}
	}
	return "", nil, nfs.NFSStatusStale
}

// remember caches that fileID is at p with status st, found with the change count at
// before and no change running (quiet), unless a change has run since.
func (e *export) remember(fileID uint64, p string, st *fstat, before uint64, quiet bool) {
	if quiet && e.changing.Load() == 0 && e.changes.Load() == before {
		e.resolved.put(fileID, p, *st, before)
	}
}

// resolvedCache remembers what resolve found, valid only while the export's change count
// stands still: a board that only reads (a boot) resolves each handle once, and any change
// through NFS makes every entry miss, so nothing stale is ever answered. (The overlay is the
// board's alone; should the server change a file behind NFS, say on a fleet reload, the
// reload bumps the count and an entry lives at most resolvedTTL anyway.)
type resolvedCache struct {
	mu sync.Mutex
	m  map[uint64]resolvedEntry
}

type resolvedEntry struct {
	path    string
	st      fstat
	changes uint64
	at      time.Time
}

const (
	maxResolved = 4096 // per export; a full cache starts over
	resolvedTTL = 2 * time.Second
)

func (c *resolvedCache) get(id, changes uint64) (string, fstat, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.m[id]
	if !ok || r.changes != changes || time.Since(r.at) > resolvedTTL {
		return "", fstat{}, false
	}
	return r.path, r.st, true
}

// expire forgets entries past their TTL, so an idle board holds none.
func (c *resolvedCache) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, r := range c.m {
		if time.Since(r.at) > resolvedTTL {
			delete(c.m, id)
		}
	}
}

func (c *resolvedCache) put(id uint64, p string, st fstat, changes uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxResolved {
		c.m = make(map[uint64]resolvedEntry)
	}
	c.m[id] = resolvedEntry{path: p, st: st, changes: changes, at: time.Now()}
}

// learn records that fileID is reachable as name in dir. The returned sequence must be
// synced before a reply carries the handle.
func (e *export) learn(dir uint64, name string, st *fstat) uint64 {
	if name == "." || name == ".." || st.fileID == e.rootID {
		return 0
	}
	op := byte(opAddLink)
	if st.isDir() {
		op = opOnlyLink // directories have one name; a stale one would only cost a retry
	}
	return e.tbl.record(op, st.fileID, link{parent: dir, name: name})
}

func (e *export) forget(dir uint64, name string, fileID uint64) uint64 {
	return e.tbl.record(opRemoveLink, fileID, link{parent: dir, name: name})
}

func (e *export) touch() { e.lastNFS.Store(time.Now().Unix()) }

// mountIdle is how long a board counts as mounted after its last sign of life: a board that
// is powered off never sends UMNT, and the Linux client revalidates a busy root well within it.
const mountIdle = 5 * time.Minute

// mounted reports signs of a live mount: NFS traffic or a MNT (without UMNT) within
// mountIdle. An open connection counts too (Server.Mounted).
func (e *export) mounted() bool {
	if time.Now().Unix()-e.lastNFS.Load() < int64(mountIdle/time.Second) {
		return true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, at := range e.mounts {
		if time.Since(at) < mountIdle {
			return true
		}
	}
	return false
}
