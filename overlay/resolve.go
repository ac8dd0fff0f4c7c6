package overlay

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// layerDir is one layer's real directory contributing to a merged directory.
type layerDir struct {
	layer int
	real  string
	// list is what is known of a lower dir's names (lowerlist.go), so lookups of names it
	// lacks cost no lstat; nil for the upper (it changes) and for unreadable dirs.
	list *lowerList
}

func (o *FS) layerDir(layer int, real string) layerDir {
	ld := layerDir{layer: layer, real: real}
	if layer != 0 {
		ld.list = o.lists.list(real)
	}
	return ld
}

// opaque reports whether the layer's dir is opaque.
func (ld layerDir) opaque() bool {
	if ld.list != nil {
		return ld.list.opaque
	}
	return isOpaque(ld.real)
}

// mdir is a resolved merged directory: its canonical path (no symlinks, no dots, "" for
// the root) and the real dirs that make it, topmost first. An opaque dir or a lower
// non-directory ends the list, as in the kernel.
type mdir struct {
	path  string
	parts []layerDir
}

func (d *mdir) hasUpper() bool { return len(d.parts) > 0 && d.parts[0].layer == 0 }

// node is one merged object found by a lookup: the topmost layer that has it.
type node struct {
	parent *mdir // nil for the root
	name   string
	part   int // index in parent.parts of the layer it was found in
	layer  int
	real   string
	st     unix.Stat_t
}

// path is the canonical merged path, built only when needed: lookups are the hot path.
func (n *node) path() string {
	if n.parent == nil {
		return ""
	}
	return joinPath(n.parent.path, n.name)
}

func (n *node) info() *fileInfo {
	fi := &fileInfo{}
	n.fill(fi)
	return fi
}

func (n *node) fill(fi *fileInfo) {
	fi.name = n.name
	if n.parent == nil {
		fi.name = "/"
	}
	fi.st = toStat(fileID(n.layer, n.real, &n.st), &n.st)
}

func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// maxCachedDirs bounds the lookup cache so an idle board stays in the low MB.
const maxCachedDirs = 4096

// dirCache maps a clean merged path to its resolved directory, so the hot path (NFS
// LOOKUP/GETATTR of a name in a known dir) costs one lstat per contributing layer. Keys are
// canonical paths and also clean paths that went through symlinks (lib -> usr/lib); every
// change of the namespace that could alter either clears it.
type dirCache struct {
	mu sync.RWMutex
	m  map[string]*mdir
}

func (c *dirCache) init() { c.m = make(map[string]*mdir) }

func (c *dirCache) get(k string) *mdir {
	c.mu.RLock()
	d := c.m[k]
	c.mu.RUnlock()
	return d
}

func (c *dirCache) put(k string, d *mdir) {
	c.mu.Lock()
	if len(c.m) >= maxCachedDirs {
		c.m = make(map[string]*mdir)
	}
	c.m[k] = d
	c.mu.Unlock()
}

func (c *dirCache) clear() {
	c.mu.Lock()
	if len(c.m) > 0 {
		c.m = make(map[string]*mdir)
	}
	c.mu.Unlock()
}

func (o *FS) rootDir() *mdir {
	if d := o.dirs.get(""); d != nil {
		return d
	}
	d := &mdir{}
	for i, l := range o.layers {
		d.parts = append(d.parts, o.layerDir(i, l))
	}
	o.dirs.put("", d)
	return d
}

func (o *FS) rootNode() (*node, error) {
	n := &node{real: o.upper}
	if err := unix.Lstat(o.upper, &n.st); err != nil {
		return nil, err
	}
	return n, nil
}

// lookupIn finds name in the merged dir d: the topmost layer having it wins, a whiteout
// hides it.
func (o *FS) lookupIn(d *mdir, name string) (*node, error) {
	n := &node{parent: d, name: name}
	h := o.lists.hash(name)
	for i, p := range d.parts {
		if !o.lists.mayHave(p.list, name, h) {
			continue
		}
		real := p.real + "/" + name
		if err := unix.Lstat(real, &n.st); err != nil {
			if err == unix.ENOENT {
				continue
			}
			return nil, err
		}
		if isWhiteout(&n.st) {
			return nil, unix.ENOENT
		}
		n.part, n.layer, n.real = i, p.layer, real
		return n, nil
	}
	return nil, unix.ENOENT
}

// childDir resolves the merged directory n, merging the same name in the layers below
// the one n was found in.
func (o *FS) childDir(n *node) (*mdir, error) {
	if n.parent == nil {
		return o.rootDir(), nil
	}
	if !isDir(&n.st) {
		return nil, unix.ENOTDIR
	}
	p := n.path()
	if d := o.dirs.get(p); d != nil {
		return d, nil
	}
	rest := n.parent.parts[n.part+1:]
	top := layerDir{layer: n.layer, real: n.real}
	if n.layer != 0 {
		if top.list = o.lists.sub(n.parent.parts[n.part].list, n.name, n.real); top.list == nil {
			top = o.layerDir(n.layer, n.real)
			o.lists.remember(n.parent.parts[n.part].list, n.name, top.list)
		}
	}
	d := &mdir{path: p, parts: make([]layerDir, 1, 1+len(rest))}
	d.parts[0] = top
	if len(rest) > 0 && !top.opaque() {
		h := o.lists.hash(n.name)
		for i, l := range rest {
			if !o.lists.mayHave(l.list, n.name, h) {
				continue
			}
			var ld layerDir
			if sl := o.lists.subOf(l.list, n.name); sl != nil { // known as a dir
				ld = layerDir{layer: l.layer, real: sl.real, list: sl}
			} else {
				real := l.real + "/" + n.name
				ld = layerDir{layer: l.layer, real: real, list: o.lists.sub(l.list, n.name, real)}
			}
			if ld.list == nil { // not known as a dir yet
				real := ld.real
				var st unix.Stat_t
				if err := unix.Lstat(real, &st); err != nil {
					if err == unix.ENOENT {
						continue
					}
					return nil, err
				}
				if !isDir(&st) {
					break
				}
				ld = o.layerDir(l.layer, real)
				o.lists.remember(l.list, n.name, ld.list)
			}
			d.parts = append(d.parts, ld)
			if i < len(rest)-1 && ld.opaque() {
				break
			}
		}
	}
	o.dirs.put(p, d)
	return d, nil
}

const xattrOpaque = "trusted.overlay.opaque"

func isOpaque(real string) bool {
	var buf [2]byte
	n, err := unix.Lgetxattr(real, xattrOpaque, buf[:])
	return err == nil && n == 1 && buf[0] == 'y'
}

// cleanRel reports whether p is already a clean relative path (no empty, "." or ".."
// components), the form the fast path and the cache keys need.
func cleanRel(p string) (string, bool) {
	p = strings.TrimLeft(p, "/")
	if p == "" || p == "." {
		return "", true
	}
	start := 0
	for i := 0; i <= len(p); i++ {
		if i < len(p) && p[i] != '/' {
			continue
		}
		if c := p[start:i]; c == "" || c == "." || c == ".." {
			return "", false
		}
		start = i + 1
	}
	return p, true
}

// maxSymlinkHops is the kernel's MAXSYMLINKS.
const maxSymlinkHops = 40

// walk resolves p inside the overlay root: component by component, symlinks (followed
// everywhere but the last component unless follow) re-enter at the root when absolute,
// ".." stops at the root. It returns the parent dir and final name, and the final node or
// nil if only that last name is missing.
func (o *FS) walk(p string, follow bool) (*mdir, string, *node, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return nil, "", nil, unix.EINVAL
	}
	clean, ok := cleanRel(p)
	if ok {
		if clean == "" {
			n, err := o.rootNode()
			return nil, "", n, err
		}
		key, name := "", clean
		if i := strings.LastIndexByte(clean, '/'); i >= 0 {
			key, name = clean[:i], clean[i+1:]
		}
		if d := o.dirs.get(key); d != nil {
			n, err := o.lookupIn(d, name)
			switch {
			case err == unix.ENOENT:
				return d, name, nil, nil
			case err != nil:
				return nil, "", nil, err
			case !follow || !isSymlink(&n.st):
				return d, name, n, nil
			}
		}
	}
	var rawParent *mdir
	d, name, n, err := o.walkSlow(p, follow, &rawParent)
	if err == nil && ok && rawParent != nil && strings.Contains(clean, "/") {
		o.dirs.put(clean[:strings.LastIndexByte(clean, '/')], rawParent)
	}
	return d, name, n, err
}

// walkSlow is walk without the cache. It sets rawParent to the dir the last component of p
// itself (before following it) was looked up in.
func (o *FS) walkSlow(p string, follow bool, rawParent **mdir) (*mdir, string, *node, error) {
	dirs := []*mdir{o.rootDir()}
	queue := strings.Split(p, "/")
	hops := 0
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		last := len(queue) == 0
		if last && *rawParent == nil {
			*rawParent = dirs[len(dirs)-1]
		}
		switch c {
		case "", ".":
			if last {
				return o.dirNode(dirs)
			}
			continue
		case "..":
			if len(dirs) > 1 {
				dirs = dirs[:len(dirs)-1]
			}
			if last {
				return o.dirNode(dirs)
			}
			continue
		}
		if len(c) > 255 {
			return nil, "", nil, unix.ENAMETOOLONG
		}
		d := dirs[len(dirs)-1]
		n, err := o.lookupIn(d, c)
		if err != nil {
			if err == unix.ENOENT && last {
				return d, c, nil, nil
			}
			return nil, "", nil, err
		}
		if isSymlink(&n.st) && (!last || follow) {
			hops++
			if hops > maxSymlinkHops {
				return nil, "", nil, unix.ELOOP
			}
			target, err := os.Readlink(n.real)
			if err != nil {
				return nil, "", nil, underlying(err)
			}
			if target == "" {
				return nil, "", nil, unix.ENOENT
			}
			if target[0] == '/' {
				dirs = dirs[:1]
			}
			queue = append(strings.Split(target, "/"), queue...)
			continue
		}
		if last {
			return d, c, n, nil
		}
		cd, err := o.childDir(n)
		if err != nil {
			return nil, "", nil, err
		}
		dirs = append(dirs, cd)
	}
	return o.dirNode(dirs)
}

// dirNode returns the node of the innermost directory of a walk.
func (o *FS) dirNode(dirs []*mdir) (*mdir, string, *node, error) {
	if len(dirs) == 1 {
		n, err := o.rootNode()
		return nil, "", n, err
	}
	parent, d := dirs[len(dirs)-2], dirs[len(dirs)-1]
	name := d.path[strings.LastIndexByte(d.path, '/')+1:]
	n, err := o.lookupIn(parent, name)
	return parent, name, n, err
}

// resolve finds an existing object.
func (o *FS) resolve(p string, follow bool) (*node, error) {
	_, _, n, err := o.walk(p, follow)
	if err != nil {
		return nil, err
	}
	if n == nil {
		return nil, unix.ENOENT
	}
	return n, nil
}

// underlying digs the errno out of os errors, so every error we return carries it once.
func underlying(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	return err
}

// pathErr wraps err for the caller, keeping an inner PathError (e.g. from copy-up) whole.
func pathErr(op, p string, err error) error {
	if err == nil {
		return nil
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return err
	}
	return &fs.PathError{Op: op, Path: p, Err: underlying(err)}
}
