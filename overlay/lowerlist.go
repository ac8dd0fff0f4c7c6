package overlay

import (
	"hash/maphash"
	"io"
	"os"
	"sync"
)

// Lookups through many layers. A name missing from a lower dir would cost an lstat of
// that layer on every lookup, and resolving a dir again (the dir cache is cleared by any
// namespace change) a readdir and an xattr read per layer. Lowers never change, so the
// overlay lists each lower dir once and keeps the list until it runs out of room: a Bloom
// filter of its names (4 bytes a name, 3 probes: under 0.1% of the misses still cost an
// lstat), the names themselves for a small dir, whether the dir is opaque, and the lists of
// its subdirs found so far.

// lowerList is what the overlay keeps of one lower dir.
type lowerList struct {
	small  map[string]struct{} // the names of a dir of at most maxListedNames entries
	bloom  []uint64            // a Bloom filter of its names, checked first
	opaque bool                // trusted.overlay.opaque=y
	real   string              // the dir's path
	gen    uint64              // the lowerLists generation it belongs to

	mu   sync.Mutex
	subs map[string]*lowerList // lists of its subdirs known so far, by name
}

// maxListedNames is the size up to which a lower dir's names are kept exactly.
const maxListedNames = 64

// Bounds of the lists one FS keeps; when full they are dropped and listed again.
const (
	maxLowerLists = 16384
	maxListNames  = 1 << 19
)

// lowerLists caches the lists of lower dirs by real path.
type lowerLists struct {
	mu    sync.Mutex
	m     map[string]*lowerList
	names int
	gen   uint64 // bumped when the lists are dropped: older lists get no more subs
	seed  maphash.Seed
}

func (c *lowerLists) init() {
	c.m = make(map[string]*lowerList)
	c.seed = maphash.MakeSeed()
}

// get returns the list of the lower dir real if it is known.
func (c *lowerLists) get(real string) *lowerList {
	c.mu.Lock()
	l := c.m[real]
	c.mu.Unlock()
	return l
}

// list returns the list of the lower dir real, reading the dir if needed; nil when it
// cannot be read (lookups then lstat).
func (c *lowerLists) list(real string) *lowerList {
	if l := c.get(real); l != nil {
		return l
	}
	f, err := os.Open(real)
	if err != nil {
		return nil
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil && err != io.EOF {
		return nil
	}
	l := &lowerList{opaque: isOpaque(real), real: real}
	if len(names) <= maxListedNames {
		l.small = make(map[string]struct{}, len(names))
		for _, n := range names {
			l.small[n] = struct{}{}
		}
	}
	bits := 64
	for bits < 32*len(names) {
		bits *= 2
	}
	l.bloom = make([]uint64, bits/64)
	for _, n := range names {
		l.set(c.hash(n))
	}
	c.mu.Lock()
	if len(c.m) >= maxLowerLists || c.names+len(names) > maxListNames {
		c.m = make(map[string]*lowerList)
		c.names = 0
		c.gen++
	}
	l.gen = c.gen
	c.m[real] = l
	c.names += len(names)
	c.mu.Unlock()
	return l
}

// subOf returns the list of parent's subdir name if parent has it already.
func (c *lowerLists) subOf(parent *lowerList, name string) *lowerList {
	if parent == nil {
		return nil
	}
	parent.mu.Lock()
	l := parent.subs[name]
	parent.mu.Unlock()
	return l
}

// sub returns the list of parent's subdir name (at real) if it is known: from parent's
// own subs without hashing the whole path, else from the cache (then parent remembers it).
func (c *lowerLists) sub(parent *lowerList, name, real string) *lowerList {
	if l := c.subOf(parent, name); l != nil {
		return l
	}
	l := c.get(real)
	if l != nil {
		c.remember(parent, name, l)
	}
	return l
}

// remember records l as the list of parent's subdir name, if both belong to the current
// generation (so the subs of dropped lists stop growing and the bounds hold).
func (c *lowerLists) remember(parent *lowerList, name string, l *lowerList) {
	if parent == nil || l == nil {
		return
	}
	c.mu.Lock()
	cur := c.gen
	c.mu.Unlock()
	if parent.gen != cur || l.gen != cur {
		return
	}
	parent.mu.Lock()
	if parent.subs == nil {
		parent.subs = make(map[string]*lowerList)
	}
	parent.subs[name] = l
	parent.mu.Unlock()
}

// hash is the name's hash for mayHave; one per lookup serves every layer.
func (c *lowerLists) hash(name string) uint64 { return maphash.String(c.seed, name) }

// bloomProbes is the number of bits a name sets in a Bloom filter.
const bloomProbes = 3

// set adds the name whose hash is h to l's filter: probe i is at lo + i*hi (double
// hashing with the two halves of h).
func (l *lowerList) set(h uint64) {
	mask := uint64(len(l.bloom)*64 - 1)
	lo, hi := h, h>>32|1
	for i := range uint64(bloomProbes) {
		b := (lo + i*hi) & mask
		l.bloom[b/64] |= 1 << (b % 64)
	}
}

// mayHave reports whether the dir may have name, whose hash is h: false means it
// certainly has not.
func (c *lowerLists) mayHave(l *lowerList, name string, h uint64) bool {
	if l == nil {
		return true
	}
	mask := uint64(len(l.bloom)*64 - 1)
	lo, hi := h, h>>32|1
	for i := range uint64(bloomProbes) {
		b := (lo + i*hi) & mask
		if l.bloom[b/64]&(1<<(b%64)) == 0 {
			return false
		}
	}
	if l.small != nil {
		_, ok := l.small[name]
		return ok
	}
	return true
}
