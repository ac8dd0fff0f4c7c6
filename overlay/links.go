package overlay

import (
	"io/fs"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Lower hard links. When one name of a lower file with several links is copied up, the
// other names are linked to the copy in the same step, so all names stay one inode with
// one FileID and the right nlink (what the kernel does with index=on; without it the
// kernel breaks the link). Finding the other names takes a walk of the lower layer; it is
// done once per layer, on the first such copy-up, because lowers never change.

// linkIndex maps st_ino to the paths (relative to the layer root) of every non-dir with
// more than one link in one lower layer.
type linkIndex map[uint64][]string

func buildLinkIndex(root string) (linkIndex, error) {
	idx := linkIndex{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if st.Nlink > 1 && !isWhiteout(&st) {
			rel := strings.TrimPrefix(p, root+"/")
			idx[st.Ino] = append(idx[st.Ino], rel)
		}
		return nil
	})
	return idx, err
}

// linkSiblings links the other visible names of the lower inode n was copied from to its
// upper copy at upper. Names hidden by the upper, or now showing another object, are left.
func (o *FS) linkSiblings(n *node, upper string) error {
	if o.links == nil {
		o.links = make(map[int]linkIndex)
	}
	idx, ok := o.links[n.layer]
	if !ok {
		var err error
		if idx, err = buildLinkIndex(o.layers[n.layer]); err != nil {
			return err
		}
		o.links[n.layer] = idx
	}
	self := n.path()
	for _, q := range idx[n.st.Ino] {
		if q == self {
			continue
		}
		m, err := o.resolve(q, false)
		if err != nil || m.layer != n.layer || m.st.Ino != n.st.Ino || m.path() != q {
			continue
		}
		dir, err := o.ensureUpperDir(m.parent)
		if err != nil {
			return err
		}
		if err := unix.Link(upper, dir+"/"+m.name); err != nil {
			return err
		}
	}
	return nil
}
