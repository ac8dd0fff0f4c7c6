package overlay

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func names(t *testing.T, o *FS, dir string) string {
	t.Helper()
	infos, err := o.ReadDir(dir)
	must(t, err)
	var s []string
	for _, fi := range infos {
		s = append(s, fi.Name())
	}
	return strings.Join(s, ",")
}

func TestLookupOrderAndMerge(t *testing.T) {
	b := newBed(t, 2)
	put(t, b.lowers[0], "a", "top", 0o644)
	put(t, b.lowers[1], "a", "bottom", 0o644)
	put(t, b.lowers[1], "b", "b", 0o644)
	put(t, b.lowers[0], "d/x", "x", 0o644)
	put(t, b.lowers[1], "d/y", "y", 0o644)
	// A lower file over a lower dir ends the merge for that name.
	put(t, b.lowers[0], "f", "file", 0o644)
	put(t, b.lowers[1], "f/z", "z", 0o644)
	o := b.open(t)
	if got := readAll(t, o, "a"); got != "top" {
		t.Fatalf("a = %q, want the topmost lower's", got)
	}
	if got := names(t, o, "/"); got != "a,b,d,f" {
		t.Fatalf("root = %s", got)
	}
	if got := names(t, o, "d"); got != "x,y" {
		t.Fatalf("d = %s", got)
	}
	if _, err := o.Stat("f/z"); !errors.Is(err, unix.ENOTDIR) {
		t.Fatalf("f/z: %v, want ENOTDIR", err)
	}
	for _, root := range []string{"", "/", "."} {
		fi, err := o.Stat(root)
		must(t, err)
		if !fi.IsDir() {
			t.Fatalf("root %q is not a dir", root)
		}
	}
}

func TestRemoveLeavesWhiteoutAndHides(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "etc/hosts", "h", 0o644)
	put(t, b.lowers[0], "etc/keep", "k", 0o644)
	o := b.open(t)
	must(t, o.Remove("etc/hosts"))
	if _, err := o.Lstat("etc/hosts"); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("removed file still visible: %v", err)
	}
	if got := names(t, o, "etc"); got != "keep" {
		t.Fatalf("etc = %s", got)
	}
	st := lstatRaw(t, filepath.Join(b.upper, "etc/hosts"))
	if !isWhiteout(st) {
		t.Fatalf("upper etc/hosts mode %o rdev %d, want a 0/0 char device", st.Mode, st.Rdev)
	}
	if _, err := os.Stat(filepath.Join(b.lowers[0], "etc/hosts")); err != nil {
		t.Fatalf("lower touched: %v", err)
	}
	// Creating the name again replaces the whiteout.
	f, err := o.Create("etc/hosts")
	must(t, err)
	f.Write([]byte("new"))
	f.Close()
	if got := readAll(t, o, "etc/hosts"); got != "new" {
		t.Fatalf("recreated = %q", got)
	}
	// An upper-only file goes away without a whiteout.
	must(t, o.Remove("etc/hosts"))
	must(t, o.Remove("etc/keep"))
	f, err = o.Create("etc/fresh")
	must(t, err)
	f.Close()
	must(t, o.Remove("etc/fresh"))
	if _, err := os.Lstat(filepath.Join(b.upper, "etc/fresh")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("upper-only file left %v", err)
	}
}

func TestRmdirOnlyWhenMergedEmpty(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "d/x", "x", 0o644)
	o := b.open(t)
	wantErrno(t, o.Remove("d"), unix.ENOTEMPTY)
	must(t, o.Remove("d/x"))
	must(t, o.Remove("d"))
	if _, err := o.Stat("d"); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("d still there: %v", err)
	}
	wantErrno(t, o.Remove("/"), unix.EBUSY)
}

func TestMkdirOverWhiteoutIsOpaque(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "d/old", "x", 0o644)
	o := b.open(t)
	must(t, o.Remove("d/old"))
	must(t, o.Remove("d"))
	must(t, o.Mkdir("d", 0o750))
	if got := names(t, o, "d"); got != "" {
		t.Fatalf("new dir shows %q from the lower", got)
	}
	if !isOpaque(filepath.Join(b.upper, "d")) {
		t.Fatal("dir made over a whiteout is not opaque")
	}
	fi, err := o.Stat("d")
	must(t, err)
	if fi.Mode().Perm() != 0o750 {
		t.Fatalf("mode %v", fi.Mode())
	}
	wantErrno(t, o.Mkdir("d", 0o755), unix.EEXIST)
	must(t, o.MkdirAll("d/e/f", 0o755))
	must(t, o.MkdirAll("d/e/f", 0o755))
}

func TestCopyUpKeepsEverything(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "usr/bin/ping", "ELF", 0o755)
	p := filepath.Join(b.lowers[0], "usr/bin/ping")
	must(t, os.Chown(p, 1000, 2000))
	must(t, unix.Chmod(p, 0o4755|unix.S_ISGID))
	cap := []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	must(t, unix.Setxattr(p, "security.capability", cap, 0))
	must(t, unix.Setxattr(p, "user.note", []byte("n"), 0))
	old := time.Date(2020, 1, 2, 3, 4, 5, 600, time.UTC)
	must(t, os.Chtimes(p, old, old))
	must(t, os.Symlink("ping", filepath.Join(b.lowers[0], "usr/bin/ping4")))
	must(t, os.Lchown(filepath.Join(b.lowers[0], "usr/bin/ping4"), 7, 8))
	o := b.open(t)
	before, err := o.Lstat("usr/bin/ping")
	must(t, err)

	must(t, o.Setxattr("usr/bin/ping", "user.extra", []byte("e"), 0))
	after, err := o.Lstat("usr/bin/ping")
	must(t, err)
	sb, sa := sysStat(t, before), sysStat(t, after)
	if sa.FileID != sb.FileID {
		t.Fatalf("FileID changed by copy-up: %x -> %x", sb.FileID, sa.FileID)
	}
	if sa.Mode != sb.Mode || sa.Uid != 1000 || sa.Gid != 2000 || !sa.Mtime.Equal(old) {
		t.Fatalf("copy-up lost metadata: before %+v after %+v", sb, sa)
	}
	if after.Mode()&os.ModeSetuid == 0 || after.Mode()&os.ModeSetgid == 0 {
		t.Fatalf("special bits lost: %v", after.Mode())
	}
	got, err := unix.Getxattr(filepath.Join(b.upper, "usr/bin/ping"), "security.capability", make([]byte, 64))
	must(t, err)
	if got != len(cap) {
		t.Fatalf("security.capability not copied (len %d)", got)
	}
	v, err := o.Getxattr("usr/bin/ping", "user.note")
	must(t, err)
	if string(v) != "n" {
		t.Fatalf("user.note = %q", v)
	}
	if readAll(t, o, "usr/bin/ping") != "ELF" {
		t.Fatal("data lost")
	}
	list, err := o.Listxattr("usr/bin/ping")
	must(t, err)
	for _, a := range list {
		if privateXattr(a) {
			t.Fatalf("private xattr %s leaked", a)
		}
	}
	wantErrno(t, o.Setxattr("usr/bin/ping", "trusted.overlay.opaque", []byte("y"), 0), unix.EPERM)

	must(t, o.Lchown("usr/bin/ping4", 9, 10))
	target, err := o.Readlink("usr/bin/ping4")
	must(t, err)
	fi, err := o.Lstat("usr/bin/ping4")
	must(t, err)
	if target != "ping" || sysStat(t, fi).Uid != 9 || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("symlink copy-up: target %q stat %+v", target, sysStat(t, fi))
	}
	// Parent dirs were copied up with their metadata too.
	up := lstatRaw(t, filepath.Join(b.upper, "usr/bin"))
	lo := lstatRaw(t, filepath.Join(b.lowers[0], "usr/bin"))
	if up.Mode != lo.Mode || up.Uid != lo.Uid {
		t.Fatal("parent dir metadata not copied")
	}
}

func TestChmodChownOrderKeepsSetuid(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "f", "x", 0o644)
	o := b.open(t)
	must(t, o.Lchown("f", 5, 6))
	must(t, o.Chmod("f", 0o755|os.ModeSetuid|os.ModeSticky))
	fi, err := o.Stat("f")
	must(t, err)
	st := sysStat(t, fi)
	if st.Mode&0o7777 != 0o5755 || st.Uid != 5 || st.Gid != 6 {
		t.Fatalf("mode %o uid %d gid %d", st.Mode, st.Uid, st.Gid)
	}
	mt := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	must(t, o.Chtimes("f", mt, mt))
	fi, _ = o.Stat("f")
	if !fi.ModTime().Equal(mt) {
		t.Fatalf("mtime %v", fi.ModTime())
	}
}

func TestWriteTruncateAppend(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "log", "hello", 0o644)
	put(t, b.lowers[0], "big", "0123456789", 0o600)
	o := b.open(t)
	f, err := o.OpenFile("log", os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.Write([]byte(" world"))
	must(t, err)
	must(t, f.Sync())
	f.Close()
	if got := readAll(t, o, "log"); got != "hello world" {
		t.Fatalf("append: %q", got)
	}
	f, err = o.OpenFile("log", os.O_RDWR, 0)
	must(t, err)
	_, err = f.WriteAt([]byte("J"), 0)
	must(t, err)
	f.Close()
	must(t, o.Truncate("log", 3))
	if got := readAll(t, o, "log"); got != "Jel" {
		t.Fatalf("got %q", got)
	}
	lower, _ := os.ReadFile(filepath.Join(b.lowers[0], "log"))
	if string(lower) != "hello" {
		t.Fatalf("lower written: %q", lower)
	}
	must(t, o.Truncate("big", 0))
	fi, _ := o.Stat("big")
	if fi.Size() != 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("truncate to 0: size %d mode %v", fi.Size(), fi.Mode())
	}
	wantErrno(t, o.Truncate("/", 0), unix.EISDIR)
}

func TestCreateExclAndOpenErrors(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "exists", "x", 0o644)
	o := b.open(t)
	_, err := o.OpenFile("exists", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	wantErrno(t, err, unix.EEXIST)
	f, err := o.OpenFile("new", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o711|os.ModeSetuid)
	must(t, err)
	f.Close()
	fi, err := o.Stat("new")
	must(t, err)
	if fi.Mode() != 0o711|os.ModeSetuid {
		t.Fatalf("create mode %v, want exact perm without umask", fi.Mode())
	}
	_, err = o.OpenFile("new", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	wantErrno(t, err, unix.EEXIST)
	_, err = o.OpenFile("missing/dir/f", os.O_RDWR|os.O_CREATE, 0o644)
	wantErrno(t, err, unix.ENOENT)
	_, err = o.OpenFile("/", os.O_RDWR, 0)
	wantErrno(t, err, unix.EISDIR)
	_, err = o.Open("nope")
	wantErrno(t, err, unix.ENOENT)
	_, err = o.Stat("exists/sub")
	wantErrno(t, err, unix.ENOTDIR)
	_, err = o.Stat("bad\x00name")
	wantErrno(t, err, unix.EINVAL)
	_, err = o.Stat(strings.Repeat("n", 300))
	if err == nil {
		t.Fatal("over-long name accepted")
	}
}

func TestRemovedWhileOpenStaysReadable(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "low", "lower data", 0o644)
	o := b.open(t)
	f, err := o.Create("up")
	must(t, err)
	f.Write([]byte("upper data"))
	r1, err := o.Open("up")
	must(t, err)
	r2, err := o.Open("low")
	must(t, err)
	must(t, o.Remove("up"))
	must(t, o.Remove("low"))
	for _, r := range []io.ReaderAt{r1, r2} {
		buf := make([]byte, 5)
		if _, err := r.ReadAt(buf, 0); err != nil {
			t.Fatalf("read after remove: %v", err)
		}
	}
	f.Close()
	r1.Close()
	r2.Close()
}

func TestLinkKeepsNlinkAndFileID(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "a", "data", 0o644)
	must(t, os.Link(filepath.Join(b.lowers[0], "a"), filepath.Join(b.lowers[0], "a2")))
	o := b.open(t)
	fa, _ := o.Lstat("a")
	fa2, _ := o.Lstat("a2")
	if sysStat(t, fa).FileID != sysStat(t, fa2).FileID || sysStat(t, fa).Nlink != 2 {
		t.Fatal("lower hard links must share one FileID and report nlink 2")
	}
	idA := sysStat(t, fa).FileID
	// Copying up "a" links its lower sibling "a2" to the copy: one inode, three names.
	must(t, o.Link("a", "b"))
	for _, n := range []string{"a", "a2", "b"} {
		fi, err := o.Lstat(n)
		must(t, err)
		if st := sysStat(t, fi); st.Nlink != 3 || st.FileID != idA {
			t.Fatalf("%s: nlink %d FileID %x, want 3 and %x", n, st.Nlink, st.FileID, idA)
		}
	}
	f, err := o.OpenFile("b", os.O_WRONLY|os.O_TRUNC, 0)
	must(t, err)
	f.Write([]byte("new"))
	f.Close()
	if readAll(t, o, "a2") != "new" {
		t.Fatal("write through one link not seen through the lower sibling")
	}
	err = o.Link("a", "b")
	wantErrno(t, err, unix.EEXIST)
	var le *os.LinkError
	if !errors.As(err, &le) {
		t.Fatalf("Link error %T, want *os.LinkError", err)
	}
	wantErrno(t, o.Link("/", "rootlink"), unix.EPERM)
}

// OpenLoc opens where a lookup found a file only while nothing has changed since: after a
// copy-up through another name (a lower hard link), a whiteout or a rename over the name it
// opens what the name is now, never the lower file it was found as.
func TestOpenLocNeverServesReplacedFile(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "a", "lower", 0o644)
	must(t, os.Link(filepath.Join(b.lowers[0], "a"), filepath.Join(b.lowers[0], "a2")))
	put(t, b.lowers[0], "gone", "lower", 0o644)
	put(t, b.lowers[0], "old", "lower", 0o644)
	put(t, b.lowers[0], "other", "OTHER", 0o644)
	must(t, os.Symlink("a", filepath.Join(b.lowers[0], "sym")))
	o := b.open(t)
	found := func(o *FS, name string) Loc {
		t.Helper()
		fi, err := o.Lstat(name)
		must(t, err)
		loc, ok := LocOf(fi)
		if !ok {
			t.Fatalf("LocOf(Lstat(%s)): no location", name)
		}
		return loc
	}
	read := func(name string, loc Loc) string {
		t.Helper()
		f, err := o.OpenLoc(name, loc)
		if err != nil {
			return errno(err).Error()
		}
		defer f.Close()
		buf := make([]byte, 16)
		n, _ := f.ReadAt(buf, 0)
		return string(buf[:n])
	}
	locA, locGone, locOld := found(o, "a"), found(o, "gone"), found(o, "old")
	if got := read("a", locA); got != "lower" {
		t.Fatalf("OpenLoc unchanged: %q", got)
	}
	// A write through the other name copies the inode up, linking "a" to the copy.
	f, err := o.OpenFile("a2", os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt([]byte("UPPER"), 0)
	must(t, err)
	must(t, f.Close())
	must(t, o.Remove("gone"))
	must(t, o.Rename("other", "old"))
	for _, c := range []struct {
		name string
		loc  Loc
		want string
	}{
		{"a", locA, "UPPER"},
		{"gone", locGone, unix.ENOENT.Error()},
		{"old", locOld, "OTHER"},
		{"sym", found(o, "sym"), "UPPER"}, // Lstat found the link: OpenLoc follows it, as Open
		{"a", Loc{}, "UPPER"},
	} {
		if got := read(c.name, c.loc); got != c.want {
			t.Errorf("OpenLoc(%s) after the changes: %q, want %q", c.name, got, c.want)
		}
	}
	// Nor is a current location found for another name,
	if got := read("old", found(o, "a")); got != "OTHER" {
		t.Errorf("OpenLoc(old) with the location of a: %q", got)
	}
	// nor one from another FS over the same lowers (another board; both unchanged since
	// they were opened, so only the FS tells the locations apart).
	put(t, filepath.Join(b.dir, "upper2"), "a", "UPPER2", 0o644)
	o2, err := New(Options{Upper: filepath.Join(b.dir, "upper2"), Work: filepath.Join(b.dir, "work2"), Lowers: b.lowers})
	must(t, err)
	o3, err := New(Options{Upper: filepath.Join(b.dir, "upper3"), Work: filepath.Join(b.dir, "work3"), Lowers: b.lowers})
	must(t, err)
	o = o2
	if got := read("a", found(o3, "a")); got != "UPPER2" {
		t.Errorf("OpenLoc with another FS's location: %q", got)
	}
}

func TestMknodTypes(t *testing.T) {
	b := newBed(t, 1)
	o := b.open(t)
	cases := []struct {
		name string
		mode uint32
		dev  uint64
		want os.FileMode
	}{
		{"null", unix.S_IFCHR | 0o666, unix.Mkdev(1, 3), os.ModeDevice | os.ModeCharDevice},
		{"sda", unix.S_IFBLK | 0o660, unix.Mkdev(8, 0), os.ModeDevice},
		{"fifo", unix.S_IFIFO | 0o644, 0, os.ModeNamedPipe},
		{"sock", unix.S_IFSOCK | 0o755, 0, os.ModeSocket},
	}
	for _, c := range cases {
		must(t, o.Mknod(c.name, c.mode, c.dev))
		fi, err := o.Lstat(c.name)
		must(t, err)
		st := sysStat(t, fi)
		if fi.Mode().Type() != c.want || st.Mode != c.mode || st.Rdev != c.dev {
			t.Fatalf("%s: mode %o rdev %x", c.name, st.Mode, st.Rdev)
		}
	}
	wantErrno(t, o.Mknod("wh", unix.S_IFCHR, 0), unix.EPERM)
	wantErrno(t, o.Mknod("null", unix.S_IFIFO|0o644, 0), unix.EEXIST)
	if _, err := o.Open("null"); err == nil {
		t.Fatal("opened a device node of the server")
	}
}

func TestRenameFiles(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "a", "A", 0o644)
	put(t, b.lowers[0], "d/b", "B", 0o644)
	o := b.open(t)
	fa, _ := o.Lstat("a")
	must(t, o.Rename("a", "d/a2"))
	if readAll(t, o, "d/a2") != "A" {
		t.Fatal("renamed data")
	}
	fa2, _ := o.Lstat("d/a2")
	if sysStat(t, fa).FileID != sysStat(t, fa2).FileID {
		t.Fatal("FileID changed by rename")
	}
	if _, err := o.Lstat("a"); !errors.Is(err, unix.ENOENT) {
		t.Fatal("old name still visible")
	}
	must(t, o.Rename("d/a2", "d/b")) // replaces a lower file
	if readAll(t, o, "d/b") != "A" || names(t, o, "d") != "b" {
		t.Fatalf("replace: %s", names(t, o, "d"))
	}
	err := o.Rename("nope", "x")
	wantErrno(t, err, unix.ENOENT)
	wantErrno(t, o.Rename("d/b", "d"), unix.ENOTEMPTY) // onto its own ancestor, as Linux answers
	must(t, o.Mkdir("e", 0o755))
	wantErrno(t, o.Rename("d/b", "e"), unix.EISDIR)
	wantErrno(t, o.Rename("e", "d/b"), unix.ENOTDIR)
	wantErrno(t, o.Rename("d", "d/b"), unix.EINVAL)
	wantErrno(t, o.Rename("d", "d/sub"), unix.EINVAL)
}

func TestRenameDirWithLowerParts(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "var/lib/dpkg/status", "pkgs", 0o644)
	put(t, b.lowers[0], "var/lib/dpkg/info/x.list", "x", 0o644)
	must(t, os.Link(filepath.Join(b.lowers[0], "var/lib/dpkg/status"), filepath.Join(b.lowers[0], "var/lib/dpkg/info/status-link")))
	o := b.open(t)
	f, err := o.Create("var/lib/dpkg/new")
	must(t, err)
	f.Write([]byte("upper"))
	f.Close()
	must(t, o.Remove("var/lib/dpkg/info/x.list"))
	before := map[string]uint64{}
	for _, n := range []string{"var/lib/dpkg", "var/lib/dpkg/status", "var/lib/dpkg/new", "var/lib/dpkg/info"} {
		fi, err := o.Lstat(n)
		must(t, err)
		before[strings.Replace(n, "dpkg", "dpkg-old", 1)] = sysStat(t, fi).FileID
	}
	must(t, o.Rename("var/lib/dpkg", "var/lib/dpkg-old"))
	if got := names(t, o, "var/lib/dpkg-old"); got != "info,new,status" {
		t.Fatalf("moved dir = %s", got)
	}
	if got := names(t, o, "var/lib/dpkg-old/info"); got != "status-link" {
		t.Fatalf("whiteout lost in move: info = %s", got)
	}
	if _, err := o.Stat("var/lib/dpkg"); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("old dir visible: %v", err)
	}
	for n, id := range before {
		fi, err := o.Lstat(n)
		must(t, err)
		if sysStat(t, fi).FileID != id {
			t.Fatalf("%s: FileID changed by dir rename", n)
		}
	}
	fi, _ := o.Lstat("var/lib/dpkg-old/status")
	if sysStat(t, fi).Nlink != 2 {
		t.Fatalf("hard link inside moved tree broken: nlink %d", sysStat(t, fi).Nlink)
	}
	// The name can be reused, and a moved dir can move back over the whiteout.
	must(t, o.Mkdir("var/lib/dpkg", 0o755))
	if names(t, o, "var/lib/dpkg") != "" {
		t.Fatal("new dir shows old contents")
	}
	// An upper-only dir over a lower name moves by a plain rename that leaves a whiteout.
	must(t, o.Rename("var/lib/dpkg", "var/lib/dpkg-new"))
	if _, err := o.Stat("var/lib/dpkg"); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("lower dpkg reappeared after moving the dir over it away: %v", err)
	}
	if names(t, o, "var/lib/dpkg-new") != "" {
		t.Fatal("moved opaque dir shows lower contents")
	}
	must(t, o.Remove("var/lib/dpkg-new"))
	must(t, o.Rename("var/lib/dpkg-old", "var/lib/dpkg"))
	if readAll(t, o, "var/lib/dpkg/new") != "upper" || readAll(t, o, "var/lib/dpkg/status") != "pkgs" {
		t.Fatal("contents after moving back")
	}
	// Work holds nothing after the operations.
	ents, _ := os.ReadDir(b.work)
	if len(ents) != 0 {
		t.Fatalf("work not clean: %v", ents)
	}
}

func TestFileIDStableAndUnique(t *testing.T) {
	b := newBed(t, 2)
	put(t, b.lowers[0], "a", "1", 0o644)
	put(t, b.lowers[1], "b", "2", 0o644)
	put(t, b.lowers[1], "d/c", "3", 0o644)
	o := b.open(t)
	f, _ := o.Create("u")
	f.Close()
	ids := map[uint64]string{}
	collect := func(o *FS) map[string]uint64 {
		m := map[string]uint64{}
		for _, n := range []string{"/", "a", "b", "d", "d/c", "u"} {
			fi, err := o.Lstat(n)
			must(t, err)
			m[n] = sysStat(t, fi).FileID
		}
		return m
	}
	first := collect(o)
	for n, id := range first {
		if other, dup := ids[id]; dup {
			t.Fatalf("FileID %x shared by %s and %s", id, n, other)
		}
		ids[id] = n
	}
	must(t, o.Chmod("d/c", 0o600))
	must(t, o.Chmod("b", 0o600))
	o2 := b.open(t)
	again := collect(o2)
	for n := range first {
		if first[n] != again[n] {
			t.Fatalf("%s: FileID %x -> %x after copy-up and restart", n, first[n], again[n])
		}
	}
	infos, err := o2.ReadDir("d")
	must(t, err)
	if sysStat(t, infos[0]).FileID != first["d/c"] {
		t.Fatal("ReadDir FileID differs from Lstat")
	}
	of, err := o2.Open("d/c")
	must(t, err)
	fi, err := of.Stat()
	must(t, err)
	of.Close()
	if sysStat(t, fi).FileID != first["d/c"] {
		t.Fatal("File.Stat FileID differs from Lstat")
	}
}

func TestNewCleansWorkLeftovers(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "f", "data", 0o644)
	o := b.open(t)
	_ = o
	put(t, b.work, "tmp-crashed", "half", 0o600)
	put(t, b.work, "tmp-dir/x", "half", 0o600)
	o = b.open(t)
	ents, _ := os.ReadDir(b.work)
	if len(ents) != 0 {
		t.Fatalf("leftovers not cleaned: %v", ents)
	}
	if readAll(t, o, "f") != "data" {
		t.Fatal("view changed")
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	if _, err := New(Options{Upper: dir}); err == nil {
		t.Fatal("missing Work accepted")
	}
	if _, err := New(Options{Upper: dir + "/u", Work: dir + "/w", Lowers: []string{dir + "/missing"}}); err == nil {
		t.Fatal("missing lower accepted")
	}
	if _, err := New(Options{Upper: dir + "/u", Work: "/dev/shm/pifleet-overlay-test-work", Lowers: nil}); err == nil {
		os.RemoveAll("/dev/shm/pifleet-overlay-test-work")
		if fsOf(t, dir) != fsOf(t, "/dev/shm") {
			t.Fatal("work on another file system accepted")
		}
	}
	os.RemoveAll("/dev/shm/pifleet-overlay-test-work")
}

func fsOf(t *testing.T, p string) uint64 {
	var st unix.Stat_t
	must(t, unix.Stat(p, &st))
	return st.Dev
}

func TestPathsStayInsideRoot(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "etc/passwd", "inside", 0o644)
	put(t, b.lowers[0], "boot/firmware/config.txt", "cfg", 0o644)
	// The real /etc/passwd of the server must never be reachable.
	links := map[string]string{
		"abs":                   "/etc",
		"up":                    "../../../../../../../etc",
		"loop":                  "loop",
		"boot/firmware/esc":     "/etc/passwd",
		"boot/firmware/escrel":  "../../etc/passwd",
		"boot/firmware/ok":      "/boot/firmware/config.txt",
		"boot/firmware/selfdir": ".",
	}
	for l, target := range links {
		must(t, os.Symlink(target, filepath.Join(b.lowers[0], l)))
	}
	o := b.open(t)
	for _, p := range []string{"abs/passwd", "up/passwd", "../etc/passwd", "/../../etc/passwd", "abs/../../etc/passwd", "boot/firmware/esc"} {
		if got := readAll(t, o, p); got != "inside" {
			t.Fatalf("%s read %q, want the overlay's own etc/passwd", p, got)
		}
	}
	_, err := o.Stat("loop")
	wantErrno(t, err, unix.ELOOP)
	// A symlink named in the middle of a path resolves in the root as well when writing.
	f, err := o.Create("abs/shadow")
	must(t, err)
	f.Close()
	if _, err := os.Stat(filepath.Join(b.upper, "etc/shadow")); err != nil {
		t.Fatalf("write through absolute symlink did not land in the overlay: %v", err)
	}

	fsys := o.IOFS("boot/firmware")
	data, err := fs.ReadFile(fsys, "config.txt")
	must(t, err)
	if string(data) != "cfg" {
		t.Fatalf("config.txt = %q", data)
	}
	if data, err := fs.ReadFile(fsys, "ok"); err != nil || string(data) != "cfg" {
		t.Fatalf("in-tree absolute link: %q %v", data, err)
	}
	if data, err := fs.ReadFile(fsys, "selfdir/config.txt"); err != nil || string(data) != "cfg" {
		t.Fatalf("selfdir: %q %v", data, err)
	}
	for _, p := range []string{"esc", "escrel", "../../etc/passwd", "/etc/passwd", "selfdir/../../../etc/passwd"} {
		if data, err := fs.ReadFile(fsys, p); err == nil {
			t.Fatalf("IOFS %s escaped: %q", p, data)
		}
	}
	f2, err := fsys.Open("config.txt")
	must(t, err)
	defer f2.Close()
	if _, ok := f2.(io.ReaderAt); !ok {
		t.Fatal("IOFS file is not an io.ReaderAt")
	}
	if _, ok := f2.(io.Seeker); !ok {
		t.Fatal("IOFS file is not an io.Seeker")
	}
	fi, _ := f2.Stat()
	if fi.Size() != 3 {
		t.Fatalf("size %d", fi.Size())
	}
	var walked []string
	must(t, fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		walked = append(walked, p)
		return err
	}))
	if strings.Join(walked, ",") != ".,config.txt,esc,escrel,ok,selfdir" {
		t.Fatalf("walk = %v", walked)
	}
}

func TestChangesNeverTouchLowerFiles(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "f", "lower", 0o644)
	o := b.open(t)
	before := lstatRaw(t, filepath.Join(b.lowers[0], "f"))
	must(t, o.Chmod("f", 0o600))
	must(t, o.Lchown("f", 1, 1))
	must(t, o.Setxattr("f", "user.x", []byte("y"), 0))
	after := lstatRaw(t, filepath.Join(b.lowers[0], "f"))
	if before.Mode != after.Mode || before.Uid != after.Uid || before.Ctim != after.Ctim {
		t.Fatal("lower file changed")
	}
	got, _ := os.ReadFile(filepath.Join(b.lowers[0], "f"))
	if !bytes.Equal(got, []byte("lower")) {
		t.Fatal("lower data changed")
	}
}

// Large files are copied before the write lock is taken; the result must be the same.
func TestLargeCopyUpKeepsEverything(t *testing.T) {
	b := newBed(t, 1)
	data := bytes.Repeat([]byte("pifleet!"), precopyMin/8+1000)
	for _, n := range []string{"chmod", "write", "trunc"} {
		put(t, b.lowers[0], "big/"+n, string(data), 0o755)
		p := filepath.Join(b.lowers[0], "big", n)
		must(t, os.Chown(p, 1000, 1000))
		must(t, unix.Chmod(p, 0o4755))
		must(t, unix.Setxattr(p, "user.k", []byte("v"), 0))
		must(t, os.Chtimes(p, time.Unix(1e9, 0), time.Unix(1e9, 0)))
	}
	o := b.open(t)
	ids := map[string]uint64{}
	for _, n := range []string{"chmod", "write", "trunc"} {
		fi, err := o.Lstat("big/" + n)
		must(t, err)
		ids[n] = sysStat(t, fi).FileID
	}
	must(t, o.Chmod("big/chmod", 0o750|os.ModeSetuid))
	f, err := o.OpenFile("big/write", os.O_RDWR, 0)
	must(t, err)
	_, err = f.WriteAt([]byte("X"), 3)
	must(t, err)
	f.Close()
	must(t, o.Truncate("big/trunc", int64(len(data)-1)))
	for n, want := range map[string]string{"chmod": string(data), "write": "pifX" + string(data[4:]), "trunc": string(data[:len(data)-1])} {
		if got := readAll(t, o, "big/"+n); got != want {
			t.Fatalf("%s: data differs after copy-up (len %d, want %d)", n, len(got), len(want))
		}
		fi, err := o.Lstat("big/" + n)
		must(t, err)
		st := sysStat(t, fi)
		if st.FileID != ids[n] || st.Uid != 1000 || st.Mode&unix.S_ISUID == 0 {
			t.Fatalf("%s: metadata lost: %+v", n, st)
		}
		if n == "chmod" && !fi.ModTime().Equal(time.Unix(1e9, 0)) {
			t.Fatalf("mtime lost: %v", fi.ModTime())
		}
		v, err := o.Getxattr("big/"+n, "user.k")
		must(t, err)
		if string(v) != "v" {
			t.Fatalf("%s: xattr lost", n)
		}
		if _, err := os.Stat(filepath.Join(b.upper, "big", n)); err != nil {
			t.Fatalf("%s not in the upper: %v", n, err)
		}
	}
	if ents, _ := os.ReadDir(b.work); len(ents) != 0 {
		t.Fatalf("copies left in Work: %v", ents)
	}
	// A copy whose name changed before the lock was taken is not used, and is removed.
	put(t, b.lowers[0], "big/other", string(data), 0o644)
	pre := o.precopy("big/chmod", true)
	if pre != nil {
		t.Fatal("precopy of an upper file")
	}
	o2 := b.open(t)
	pre = o2.precopy("big/other", true)
	if pre == nil {
		t.Fatal("no precopy of a large lower file")
	}
	n, err := o2.resolve("big/write", true)
	must(t, err)
	if pre.take(n) != "" {
		t.Fatal("copy of big/other handed out for big/write")
	}
	pre.discard()
	if ents, _ := os.ReadDir(b.work); len(ents) != 0 {
		t.Fatalf("unused copy left in Work: %v", ents)
	}
}
