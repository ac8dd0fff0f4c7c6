package overlay

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Excludes is a compiled list of path patterns that a new layer leaves out (Export for
// `board commit`, images/shell's Clean for `image shell`).
type Excludes struct {
	pats []excludePattern
}

type excludePattern struct {
	cs    []string // the pattern split into its components
	files bool     // "DIR/": only the non-directories below DIR
}

// ParseExcludes compiles exclude patterns. A pattern is an absolute slash path whose
// components may use path.Match wildcards ("/etc/ssh/ssh_host_*", "/home/*/.cache").
// Without a trailing slash it leaves out the paths it matches and everything below them.
// With one ("/var/log/") it leaves out every non-directory below the dirs it matches, at
// any depth, and keeps the directories (owner, mode, xattrs) as the upper has them, so a
// package's /var/log/NAME made on a board is in the layer, empty. A whiteout is a
// non-directory: a left-out path is neither added nor deleted by the layer, so it shows
// the lowers' version. ".", ".." and empty components are refused.
func ParseExcludes(patterns []string) (*Excludes, error) {
	e := &Excludes{}
	for _, p := range patterns {
		if err := CheckExclude(p); err != nil {
			return nil, err
		}
		dir, files := strings.CutSuffix(p, "/")
		e.pats = append(e.pats, excludePattern{cs: strings.Split(strings.TrimPrefix(dir, "/"), "/"), files: files})
	}
	return e, nil
}

// CheckExclude reports whether p is a valid exclude pattern (see ParseExcludes).
func CheckExclude(p string) error {
	dir, _ := strings.CutSuffix(p, "/")
	if !strings.HasPrefix(dir, "/") || dir == "" {
		return fmt.Errorf("exclude %q: an absolute path below / is needed", p)
	}
	for _, c := range strings.Split(dir[1:], "/") {
		switch c {
		case "", ".", "..":
			return fmt.Errorf("exclude %q: empty, '.' or '..' component", p)
		}
		if _, err := path.Match(c, ""); err != nil {
			return fmt.Errorf("exclude %q: %w", p, err)
		}
	}
	return nil
}

// Match reports whether a layer leaves out the slash path p ("/etc/hostname"), a
// directory when dir: p or one of its parents matches a pattern without a trailing
// slash, or p is not a directory and one of its parents matches a "DIR/" pattern.
// A whiteout is not a directory.
func (e *Excludes) Match(p string, dir bool) bool {
	cs := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for _, pat := range e.pats {
		n := len(pat.cs)
		if pat.files && (dir || len(cs) <= n) {
			continue
		}
		if len(cs) >= n && prefixMatch(pat.cs, cs[:n]) {
			return true
		}
	}
	return false
}

// Below reports whether something under the dir p may be left out: an opaque dir there
// must then become whiteouts for the lower entries it hides, so that what is left out
// shows the lowers' version.
func (e *Excludes) Below(p string) bool {
	cs := strings.Split(strings.TrimPrefix(p, "/"), "/")
	if p == "/" {
		cs = nil
	}
	for _, pat := range e.pats {
		n := min(len(pat.cs), len(cs))
		if (len(pat.cs) > len(cs) || pat.files) && prefixMatch(pat.cs[:n], cs[:n]) {
			return true
		}
	}
	return false
}

func prefixMatch(pat, cs []string) bool {
	for i, c := range cs {
		if ok, _ := path.Match(pat[i], c); !ok {
			return false
		}
	}
	return true
}

// ExportStats says what Export wrote.
type ExportStats struct {
	Entries   int   // objects written (dirs, files, links, ...), whiteouts included
	Whiteouts int   // of which whiteouts
	Bytes     int64 // file data copied (holes not counted)
	Excluded  int   // changes left out because an exclude pattern matched
}

// Export writes the changes an upper makes to its lowers (topmost first), minus the
// excluded paths, into dst, an empty dir, as a new layer in the kernel overlayfs format:
// mounted with the kernel as lowerdir=dst:lowers it shows what the upper over the lowers
// shows, except that an excluded path shows the lowers' version (or nothing where the
// lowers have none). What the upper changes is read with Changes; the upper is only read.
//
// The layer keeps owners, modes (setuid, setgid, sticky), xattrs (ACLs, capabilities),
// mtimes to the nanosecond, symlinks, devices, fifos and sockets, and hard links between
// exported names (of any type but dirs); sparse files stay sparse. File data is copied with copy_file_range
// (a reflink where the file system can), once per inode: the layer must not share inodes
// with the upper, which the board keeps writing, nor carry its trusted.pifleet.* ids.
// Whiteouts are char devices 0/0, and an opaque upper dir stays opaque unless an exclude
// pattern may match below it: then it is written as a plain dir with a whiteout for each
// lower entry it hides, so the excluded paths show the lowers' version. The only
// trusted.overlay.* xattr in the layer is opaque=y. A dir the upper holds only as the
// parent of excluded changes, with the lowers' owner, mode and xattrs, is left out; so is
// a whiteout over a path the lowers do not have (Changes does not list it).
// An excluded path under a dir the upper deleted stays deleted.
//
// The root dir of dst gets the upper root's owner, mode, xattrs and times. The layer is
// synced to disk before Export returns. With a board running on the upper, Export
// copies a moving tree as it finds it (what vanishes meanwhile is skipped).
func Export(upper string, lowers []string, dst string, ex *Excludes) (ExportStats, error) {
	var stats ExportStats
	if ex == nil {
		ex = &Excludes{}
	}
	ents, err := os.ReadDir(dst)
	if err != nil {
		return stats, fmt.Errorf("overlay: export: %w", err)
	}
	if len(ents) > 0 {
		return stats, fmt.Errorf("overlay: export: %s is not empty", dst)
	}
	changes, err := Changes(upper, lowers)
	if err != nil {
		return stats, fmt.Errorf("overlay: export: %w", err)
	}
	x := exporter{upper: upper, dst: dst, lowers: lowers, ex: ex, stats: &stats,
		dirs: map[string]*exportDir{"/": {}}, links: map[uint64]string{}}
	for _, c := range changes {
		if err := x.one(c); err != nil {
			return stats, fmt.Errorf("overlay: export %s: %w", c.Path, err)
		}
	}
	if err := x.finish(); err != nil {
		return stats, fmt.Errorf("overlay: export: %w", err)
	}
	return stats, nil
}

// exporter is one run of Export.
type exporter struct {
	upper, dst string
	lowers     []string
	ex         *Excludes
	stats      *ExportStats
	dirs       map[string]*exportDir // the dirs written, by path ("/" is dst itself)
	order      []string              // dirs in the order written (parents first)
	links      map[uint64]string     // upper inode -> its first exported path
}

// exportDir is a dir written into the layer.
type exportDir struct {
	st      unix.Stat_t // the upper dir's
	changed bool        // Changes reported it C (the lowers have a dir or a non-dir there)
	hides   bool        // it or a parent is opaque in the layer: lowers do not show below
}

func (x *exporter) one(c Change) error {
	if x.ex.Match(c.Path, c.Kind != Deleted && c.Type.IsDir()) {
		x.stats.Excluded++
		return nil
	}
	parent, ok := x.dirs[path.Dir(c.Path)]
	if !ok {
		return nil // under a non-dir (lower entries Changes lists under it) or a vanished dir
	}
	dst := x.dst + c.Path
	if c.Kind == Deleted {
		if parent.hides {
			return nil
		}
		x.stats.Entries++
		x.stats.Whiteouts++
		return unix.Mknod(dst, unix.S_IFCHR, 0)
	}
	src := x.upper + c.Path
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		if err == unix.ENOENT || err == unix.ENOTDIR {
			return nil // removed meanwhile by a running board
		}
		return err
	}
	if isWhiteout(&st) {
		return nil // replaced by a whiteout meanwhile: the lowers' version is still there
	}
	if !isDir(&st) && st.Nlink > 1 {
		if first, ok := x.links[st.Ino]; ok {
			if err := unix.Link(x.dst+first, dst); err == nil {
				x.stats.Entries++
				return nil
			} else if err != unix.ENOENT {
				return err
			}
		}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := unix.Mkdir(dst, 0o700); err != nil {
			return err
		}
		d := &exportDir{st: st, changed: c.Kind == Changed, hides: parent.hides}
		if !d.hides && isOpaque(src) && !x.ex.Below(c.Path) {
			d.hides = true
			if err := unix.Lsetxattr(dst, xattrOpaque, []byte("y"), 0); err != nil {
				return err
			}
		}
		x.dirs[c.Path] = d
		x.order = append(x.order, c.Path)
		x.stats.Entries++
		// meta now, times after the dir is filled (finish)
		return exportMeta(src, &st, dst, false)
	case unix.S_IFREG:
		n, err := copySparse(src, dst)
		if errors.Is(err, unix.ENOENT) {
			return nil // removed meanwhile
		}
		if err != nil {
			return err
		}
		x.stats.Bytes += n
	case unix.S_IFLNK:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := unix.Symlink(target, dst); err != nil {
			return err
		}
	default:
		if err := unix.Mknod(dst, st.Mode&unix.S_IFMT|0o600, int(st.Rdev)); err != nil {
			return err
		}
	}
	if st.Nlink > 1 {
		x.links[st.Ino] = c.Path
	}
	x.stats.Entries++
	return exportMeta(src, &st, dst, true)
}

// finish drops the dirs that hold nothing and differ from the lowers' dir only in times,
// then sets the times of the dirs left (after their entries are in place) and syncs.
func (x *exporter) finish() error {
	for i := len(x.order) - 1; i >= 0; i-- { // children before parents
		p := x.order[i]
		d := x.dirs[p]
		if !d.changed || d.hides {
			continue
		}
		if names, err := readNames(x.dst + p); err != nil || len(names) > 0 {
			continue
		}
		same, err := x.sameAsLower(p, &d.st)
		if err != nil {
			return err
		}
		if same {
			if err := unix.Rmdir(x.dst + p); err != nil {
				return err
			}
			delete(x.dirs, p)
			x.stats.Entries--
		}
	}
	for i := len(x.order) - 1; i >= 0; i-- {
		p := x.order[i]
		if d, ok := x.dirs[p]; ok {
			if err := setTimes(x.dst+p, &d.st); err != nil {
				return err
			}
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(x.upper, &st); err != nil {
		return err
	}
	if err := exportMeta(x.upper, &st, x.dst, true); err != nil {
		return err
	}
	fd, err := unix.Open(x.dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

// sameAsLower reports whether the lowers have a dir at p with the owner, mode and xattrs
// of st, the upper's dir there.
func (x *exporter) sameAsLower(p string, st *unix.Stat_t) (bool, error) {
	dirs := x.lowers
	var lst unix.Stat_t
	var real string
	for _, c := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		var found bool
		var err error
		lst, dirs, found, err = lowerLookup(dirs, c)
		if err != nil || !found || !isDir(&lst) {
			return false, err
		}
		real = dirs[0]
	}
	if lst.Mode != st.Mode || lst.Uid != st.Uid || lst.Gid != st.Gid {
		return false, nil
	}
	a, err := publicXattrs(real)
	if err != nil {
		return false, err
	}
	b, err := publicXattrs(x.upper + p)
	if err != nil {
		return false, err
	}
	return maps.Equal(a, b), nil
}

func publicXattrs(real string) (map[string]string, error) {
	names, err := listXattrs(real)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, n := range names {
		if privateXattr(n) {
			continue
		}
		v, err := getXattr(real, n)
		if err == unix.ENODATA {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[n] = string(v)
	}
	return out, nil
}

// exportMeta gives dst the owner, mode and public xattrs of the upper object st
// describes, and its times when withTimes (dirs get theirs once filled). The order is
// copyMeta's: chown, chmod, xattrs, times.
func exportMeta(src string, st *unix.Stat_t, dst string, withTimes bool) error {
	if err := copyOwnerModeXattrs(src, st, dst); err != nil {
		return err
	}
	if !withTimes {
		return nil
	}
	return setTimes(dst, st)
}

// copySparse copies the regular file src to the new file dst, only the data extents
// (SEEK_DATA/SEEK_HOLE), each with copy_file_range, so holes stay holes and file
// systems that can share extents do. It returns the bytes copied.
func copySparse(src, dst string) (int64, error) {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	var copied int64
	fail := func(err error) (int64, error) {
		out.Close()
		return copied, err
	}
	rfd, wfd := int(in.Fd()), int(out.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(rfd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // only a hole is left
		}
		if err != nil {
			return fail(err)
		}
		hole, err := unix.Seek(rfd, data, unix.SEEK_HOLE)
		if err != nil {
			return fail(err)
		}
		if hole > size {
			hole = size
		}
		n, err := copyRange(rfd, wfd, data, hole-data)
		copied += n
		if err != nil {
			return fail(err)
		}
		if n < hole-data {
			break // the file shrank meanwhile
		}
		off = hole
	}
	if err := out.Truncate(size); err != nil {
		return fail(err)
	}
	return copied, out.Close()
}

// copyRange copies n bytes at off from rfd to the same offset of wfd, with
// copy_file_range, or read/write where the kernel cannot (another file system type).
func copyRange(rfd, wfd int, off, n int64) (int64, error) {
	var done int64
	for done < n {
		roff, woff := off+done, off+done
		c, err := unix.CopyFileRange(rfd, &roff, wfd, &woff, int(min(n-done, 1<<30)), 0)
		if err == unix.EXDEV || err == unix.EINVAL || err == unix.ENOSYS || err == unix.EOPNOTSUPP {
			m, err := copyRangeRW(rfd, wfd, off+done, n-done)
			return done + m, err
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if c == 0 {
			break // end of file
		}
		done += int64(c)
	}
	return done, nil
}

func copyRangeRW(rfd, wfd int, off, n int64) (int64, error) {
	buf := make([]byte, 1<<20)
	var done int64
	for done < n {
		m, err := unix.Pread(rfd, buf[:min(int64(len(buf)), n-done)], off+done)
		if err != nil {
			return done, err
		}
		if m == 0 {
			return done, nil
		}
		for w := 0; w < m; {
			k, err := unix.Pwrite(wfd, buf[w:m], off+done+int64(w))
			if err != nil {
				return done, err
			}
			w += k
		}
		done += int64(m)
	}
	return done, nil
}
