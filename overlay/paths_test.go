package overlay

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var oddPaths = []string{"", "/", ".", "..", "//", "/../..", "a/", "a//b", "a/./b", "a/../../b", "f/", "f/x",
	"l/x", "loop/x", "\x00", "a\x00b", strings.Repeat("x", 256), strings.Repeat("a/", 300) + "z",
	"d/..", "d/.", "./d/../d/f2", "l", "dl/", "dl/.."}

// callAll invokes every path-taking method; results only must not panic and errors must
// carry an errno.
func callAll(t *testing.T, o *FS, p, q string) {
	check := func(op string, err error) {
		t.Helper()
		if err == nil {
			return
		}
		var pe *fs.PathError
		var le *os.LinkError
		var e unix.Errno
		if !errors.As(err, &pe) && !errors.As(err, &le) || !errors.As(err, &e) {
			t.Errorf("%s(%q, %q): error %v (%T) carries no path and errno", op, p, q, err, err)
		}
	}
	_, err := o.Stat(p)
	check("Stat", err)
	_, err = o.Lstat(p)
	check("Lstat", err)
	_, err = o.ReadDir(p)
	check("ReadDir", err)
	_, err = o.Readlink(p)
	check("Readlink", err)
	if f, err := o.Open(p); err == nil {
		f.Close()
	} else {
		check("Open", err)
	}
	_, err = o.Getxattr(p, "user.x")
	check("Getxattr", err)
	_, err = o.Listxattr(p)
	check("Listxattr", err)
	check("Chmod", o.Chmod(p, 0o755))
	check("Lchown", o.Lchown(p, 0, 0))
	check("Chtimes", o.Chtimes(p, time.Unix(1, 0), time.Unix(1, 0)))
	check("Truncate", o.Truncate(p, 1))
	check("Setxattr", o.Setxattr(p, "user.x", []byte("1"), 0))
	check("Removexattr", o.Removexattr(p, "user.x"))
	check("Link", o.Link(p, q))
	check("Rename", o.Rename(p, q))
	check("Symlink", o.Symlink("t", p))
	check("Mknod", o.Mknod(p, unix.S_IFIFO|0o644, 0))
	check("Mkdir", o.Mkdir(p, 0o755))
	check("MkdirAll", o.MkdirAll(p, 0o755))
	if f, err := o.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644); err == nil {
		f.Close()
	} else {
		check("OpenFile", err)
	}
	check("Remove", o.Remove(p))
	if f, err := o.IOFS(q).Open(strings.TrimLeft(p, "/")); err == nil {
		f.Close()
	}
}

func oddFS(t *testing.T) *FS {
	b := newBed(t, 1)
	put(t, b.lowers[0], "d/f2", "x", 0o644)
	put(t, b.lowers[0], "f", "x", 0o644)
	must(t, os.Symlink("/d", b.lowers[0]+"/dl"))
	must(t, os.Symlink("../../../..", b.lowers[0]+"/l"))
	must(t, os.Symlink("loop", b.lowers[0]+"/loop"))
	return b.open(t)
}

func TestOddPathsNeverPanic(t *testing.T) {
	o := oddFS(t)
	for _, p := range oddPaths {
		for _, q := range []string{"new", "d", "..", "", "dl/x"} {
			callAll(t, o, p, q)
		}
	}
	if _, err := o.Stat("d"); err != nil && !errors.Is(err, unix.ENOENT) {
		t.Fatal(err)
	}
}

func FuzzPaths(f *testing.F) {
	for _, p := range oddPaths {
		f.Add(p, "new")
	}
	f.Fuzz(func(t *testing.T, p, q string) {
		callAll(t, oddFS(t), p, q)
	})
}

func TestIOFSPaging(t *testing.T) {
	b := newBed(t, 1)
	for _, n := range []string{"a", "b", "c"} {
		put(t, b.lowers[0], "boot/firmware/"+n, n, 0o644)
	}
	o := b.open(t)
	d, err := o.IOFS("boot").Open("firmware")
	must(t, err)
	defer d.Close()
	rd := d.(fs.ReadDirFile)
	var got []string
	for {
		ents, err := rd.ReadDir(2)
		for _, e := range ents {
			got = append(got, e.Name())
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			break
		}
	}
	if strings.Join(got, ",") != "a,b,c" {
		t.Fatalf("paged ReadDir = %v", got)
	}
	if _, err := d.Read(make([]byte, 1)); !errors.Is(err, unix.EISDIR) {
		t.Fatalf("read of a dir: %v", err)
	}
}
