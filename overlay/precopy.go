package overlay

import (
	"os"

	"golang.org/x/sys/unix"
)

// Copying a large lower file can take seconds. Lowers never change, so the copy can be
// made in Work before the write lock is taken: lookups and reads of the board go on
// meanwhile, and only the rename into place is serialized. If the name no longer shows
// that lower file by then, the copy is thrown away.

// precopyMin is the size from which copying outside the lock pays for a second lookup.
const precopyMin = 1 << 20

// precopied is a finished copy in Work of the lower file (layer, ino).
type precopied struct {
	layer int
	ino   uint64
	tmp   string
}

// precopy prepares the copy-up of name if it is a large lower file; nil otherwise.
func (o *FS) precopy(name string, follow bool) *precopied {
	o.mu.RLock()
	n, err := o.resolve(name, follow)
	o.mu.RUnlock()
	if err != nil || n.layer == 0 || n.st.Mode&unix.S_IFMT != unix.S_IFREG || n.st.Size < precopyMin {
		return nil
	}
	tmp := o.tempName()
	if err := o.copyObject(n, tmp, true); err != nil {
		os.Remove(tmp)
		return nil
	}
	return &precopied{layer: n.layer, ino: n.st.Ino, tmp: tmp}
}

// take hands the copy over if it is one of n; the caller then owns the temp file.
func (p *precopied) take(n *node) string {
	if p == nil || p.tmp == "" || p.layer != n.layer || p.ino != n.st.Ino {
		return ""
	}
	tmp := p.tmp
	p.tmp = ""
	return tmp
}

// discard removes a copy nobody took.
func (p *precopied) discard() {
	if p != nil && p.tmp != "" {
		os.Remove(p.tmp)
	}
}
