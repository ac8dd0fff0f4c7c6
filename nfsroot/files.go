package nfsroot

import (
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/pifleet/pifleet/overlay"
)

// openFiles keeps recently used files open per export, so READ and WRITE do not open and
// close the file on every call, and so a file removed while open stays readable through
// its handle. Entries are reference counted: eviction never closes a file under a reader.
type openFiles struct {
	mu   sync.Mutex
	m    map[uint64]*openFile
	tick uint64
}

const maxOpenFiles = 32 // per export

type openFile struct {
	f    *overlay.File
	id   uint64
	rw   bool
	refs int
	dead bool // evicted or superseded: close when the last user lets go
	used uint64
	at   time.Time // last use, for closing files of idle boards
}

// get returns an open file for fileID at path, opened read-write when write is set.
// A read-only open never copies a lower file up; a write replaces it with a read-write one.
// loc is where a lookup of path found the file (fstat.loc): a read-only open goes there
// unless the overlay changed since.
func (o *openFiles) get(fsys FileSystem, id uint64, path string, loc overlay.Loc, write bool) (*openFile, error) {
	o.mu.Lock()
	if f := o.m[id]; f != nil && (f.rw || !write) {
		f.refs++
		o.tick++
		f.used, f.at = o.tick, time.Now()
		o.mu.Unlock()
		return f, nil
	}
	o.mu.Unlock()
	var bf *overlay.File
	var err error
	if write {
		bf, err = fsys.OpenFile(path, os.O_RDWR, 0)
	} else {
		bf, err = fsys.OpenLoc(path, loc)
	}
	if err != nil {
		return nil, err
	}
	f := &openFile{f: bf, id: id, rw: write, refs: 1}
	var done [2]*openFile // to close once unlocked, on this goroutine
	o.mu.Lock()
	if old := o.m[id]; old != nil {
		done[0] = o.dropLocked(old)
	}
	o.tick++
	f.used, f.at = o.tick, time.Now()
	o.m[id] = f
	if len(o.m) > maxOpenFiles {
		var victim *openFile
		for _, c := range o.m {
			if c != f && (victim == nil || c.used < victim.used) {
				victim = c
			}
		}
		if victim != nil {
			done[1] = o.dropLocked(victim)
		}
	}
	o.mu.Unlock()
	for _, d := range done {
		if d != nil {
			d.f.Close()
		}
	}
	return f, nil
}

// cached returns the open file for fileID if there is one, whatever its path is now.
func (o *openFiles) cached(id uint64) *openFile {
	o.mu.Lock()
	defer o.mu.Unlock()
	f := o.m[id]
	if f != nil {
		f.refs++
	}
	return f
}

func (o *openFiles) put(f *openFile) {
	o.mu.Lock()
	f.refs--
	closeIt := f.dead && f.refs == 0
	o.mu.Unlock()
	if closeIt {
		f.f.Close()
	}
}

// dropLocked takes f out of the cache; the last user to put it closes it. It returns f if
// nobody holds it: the caller closes it once unlocked (a close may flush to disk).
func (o *openFiles) dropLocked(f *openFile) *openFile {
	if o.m[f.id] == f {
		delete(o.m, f.id)
	}
	if !f.dead {
		f.dead = true
		if f.refs == 0 {
			return f
		}
	}
	return nil
}

// dropLockedAsync is dropLocked for callers that drop many files at once: the closes run
// on their own goroutine, not under the lock.
func (o *openFiles) dropLockedAsync(f *openFile) {
	if c := o.dropLocked(f); c != nil {
		go c.f.Close()
	}
}

// forget drops a read-only cached file after its file may have been copied up, so later
// reads see the upper copy instead of the lower one the old descriptor points to.
func (o *openFiles) forget(id uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if f := o.m[id]; f != nil && !f.rw {
		o.dropLockedAsync(f)
	}
}

// closeIdle closes files unused for longer than idle, so an idle board holds no descriptors.
func (o *openFiles) closeIdle(idle time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, f := range o.m {
		if f.refs == 0 && time.Since(f.at) > idle {
			o.dropLockedAsync(f)
		}
	}
}

func (o *openFiles) closeAll() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, f := range o.m {
		o.dropLockedAsync(f)
	}
}

// dirCache keeps the listing a READDIR(PLUS) sequence is walking, so a 10,000-entry
// directory is read once per listing, not once per reply. The cookie verifier names the
// listing; a client continuing with an old verifier after the cache dropped it gets
// BAD_COOKIE and restarts.
type dirCache struct {
	mu   sync.Mutex
	m    map[uint64]*dirList
	next uint64
}

type dirList struct {
	verf     uint64
	ents     []fs.FileInfo
	at       time.Time
	changes  uint64 // export.changes when read
	reusable bool   // false if a change ran while it was read
	// The directory's mtime and ctime before it was read, and whether they were at least
	// dirSettle older than the read: then a later stat showing the same times says no
	// entry was added, removed or renamed since (see fresh).
	mtime, ctime time.Time
	settled      bool
}

const (
	maxDirLists = 8
	dirListTTL  = 30 * time.Second
	// dirSettle is how long a directory must have been unchanged when it is read for its
	// listing to be checked by its times alone: a change in the same clock tick as the
	// read would leave the times as they were.
	dirSettle = time.Second
)

func (c *dirCache) get(dir, verf uint64) *dirList {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.m[dir]
	if l == nil || l.verf != verf || time.Since(l.at) > dirListTTL {
		return nil
	}
	return l
}

// fresh returns the listing of dir if it was read after the last change in the export and
// still shows the directory as it is now (st, its status now).
func (c *dirCache) fresh(dir, changes uint64, st *fstat) *dirList {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.m[dir]
	if l == nil || !l.reusable || l.changes != changes {
		return nil
	}
	// Every change through NFS moves the export's count; what the count cannot see (a
	// change behind NFS) a new listing trusts for resolvedTTL, like every other cached
	// status, or for as long as a listing may be continued (dirListTTL) if the directory
	// shows the times it had when it was read: an entry added, removed or renamed moves
	// them.
	age := time.Since(l.at)
	if age <= resolvedTTL {
		return l
	}
	if l.settled && age <= dirListTTL && st != nil && st.mtime.Equal(l.mtime) && st.ctime.Equal(l.ctime) {
		return l
	}
	return nil
}

// put keeps the listing ents of dir, read with the export's change count at changes, and
// reusable unless a change ran meanwhile; st is the directory's status taken before the
// read.
func (c *dirCache) put(dir uint64, ents []fs.FileInfo, changes uint64, reusable bool, st *fstat) *dirList {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next++
	now := time.Now()
	l := &dirList{verf: c.next | uint64(now.UnixNano())<<20, ents: ents, at: now, changes: changes, reusable: reusable}
	if st != nil {
		l.mtime, l.ctime = st.mtime, st.ctime
		l.settled = now.Sub(st.mtime) > dirSettle && now.Sub(st.ctime) > dirSettle
	}
	if len(c.m) >= maxDirLists {
		for k, v := range c.m {
			if time.Since(v.at) > dirListTTL || len(c.m) >= maxDirLists {
				delete(c.m, k)
			}
		}
	}
	c.m[dir] = l
	return l
}

// expire drops listings no client can still be walking, so an idle board holds no listing.
func (c *dirCache) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, v := range c.m {
		if time.Since(v.at) > dirListTTL {
			delete(c.m, k)
		}
	}
}
