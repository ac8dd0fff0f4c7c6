package overlay

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/pifleet/pifleet/test/require"
	"golang.org/x/sys/unix"
)

// needRoot skips tests that need CAP_MKNOD (whiteouts), CAP_SYS_ADMIN (trusted.* xattrs)
// and CAP_CHOWN, as the server itself does.
func needRoot(t testing.TB) {
	t.Helper()
	require.Root(t, "overlay tests: whiteouts are device nodes and opaque dirs use trusted.* xattrs (CI runs as root)")
}

type testbed struct {
	dir    string
	lowers []string
	upper  string
	work   string
}

// newBed makes n lower dirs plus upper and work under a temp dir.
func newBed(t testing.TB, n int) *testbed {
	t.Helper()
	needRoot(t)
	b := &testbed{dir: t.TempDir()}
	for i := range n {
		l := filepath.Join(b.dir, "lower"+string(rune('0'+i)))
		must(t, os.MkdirAll(l, 0o755))
		b.lowers = append(b.lowers, l)
	}
	b.upper = filepath.Join(b.dir, "upper")
	b.work = filepath.Join(b.dir, "work")
	return b
}

func (b *testbed) open(t testing.TB) *FS {
	t.Helper()
	o, err := New(Options{Upper: b.upper, Work: b.work, Lowers: b.lowers})
	must(t, err)
	return o
}

// put writes a file into a layer directory directly (test setup only).
func put(t testing.TB, root, name, data string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(root, name)
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, []byte(data), mode))
	must(t, os.Chmod(p, mode))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErrno(t testing.TB, err error, want unix.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}

func sysStat(t testing.TB, fi os.FileInfo) *Stat {
	t.Helper()
	st, ok := fi.Sys().(*Stat)
	if !ok {
		t.Fatalf("%s: Sys() is %T, want *Stat", fi.Name(), fi.Sys())
	}
	return st
}

func readAll(t testing.TB, o *FS, name string) string {
	t.Helper()
	f, err := o.Open(name)
	must(t, err)
	defer f.Close()
	fi, err := f.Stat()
	must(t, err)
	buf := make([]byte, fi.Size())
	if _, err := f.ReadAt(buf, 0); err != nil && len(buf) > 0 {
		t.Fatal(err)
	}
	return string(buf)
}

func lstatRaw(t testing.TB, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	return &st
}
