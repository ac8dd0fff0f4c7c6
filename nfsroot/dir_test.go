package nfsroot

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// Listings are cached between calls, but a listing after any change shows the change.
func TestReaddirplusSeesChanges(t *testing.T) {
	f := newFixture(t)
	c, root := f.client("pi-a")
	_, d, _ := c.mkdir(c.walk(root, "tmp"), "d", mode(0o755))
	for i := range 300 {
		if st, _, _ := c.create(d, fmt.Sprintf("f%03d", i), 0, mode(0o644)); st != 0 {
			t.Fatalf("create: %d", st)
		}
	}
	modes := func() map[string]uint32 {
		st, ents := c.readdirplus(d)
		wantStatus(t, "readdirplus", st, 0)
		m := map[string]uint32{}
		for _, e := range ents {
			m[e.Name] = e.Attr.Attr.FileMode
		}
		return m
	}
	if m := modes(); len(m) != 300 || m["f007"] != 0o644 {
		t.Fatalf("first listing: %d entries, f007 %o", len(m), m["f007"])
	}
	_, f7, _ := c.lookup(d, "f007")
	wantStatus(t, "chmod", c.setattr(f7, mode(0o600)), 0)
	wantStatus(t, "remove", c.remove(d, "f008"), 0)
	c.create(d, "new", 0, mode(0o644))
	m := modes()
	if m["f007"] != 0o600 {
		t.Fatalf("listing after chmod shows %o", m["f007"])
	}
	if _, ok := m["f008"]; ok || len(m) != 300 {
		t.Fatalf("listing after remove+create: %d entries, f008 listed %v", len(m), ok)
	}
	if _, ok := m["new"]; !ok {
		t.Fatal("new file not listed")
	}
	// Another board's listing of its own tree is untouched by pi-a's changes.
	b, rootB := f.client("pi-b")
	if st, ents := b.readdirplus(b.walk(rootB, "tmp")); st != 0 || len(ents) != 0 {
		t.Fatalf("pi-b's /tmp: %d, %d entries", st, len(ents))
	}
}

// countingFS counts the directory reads of one path.
type countingFS struct {
	FileSystem
	path  string
	reads atomic.Int32
}

func (c *countingFS) ReadDir(name string) ([]fs.FileInfo, error) {
	if name == c.path {
		c.reads.Add(1)
	}
	return c.FileSystem.ReadDir(name)
}

// A listing of a directory that shows the times it had when it was read is reused past
// resolvedTTL (a 10,000-entry directory is not read again every 2 s); a directory whose
// times moved is read again, and so is one after a change through NFS.
func TestListingReusedWhileDirUnchanged(t *testing.T) {
	f := newFixture(t)
	cfs := &countingFS{path: "/usr/bin"}
	exps := append([]Export(nil), f.exps...)
	for i := range exps {
		if exps[i].Board == "pi-a" {
			cfs.FileSystem = exps[i].FS
			exps[i].FS = cfs
		}
	}
	f.srv.SetExports(exps)
	c, root := f.client("pi-a")
	dir := c.walk(root, "usr", "bin")
	list := func() int {
		st, ents := c.readdirplus(dir)
		wantStatus(t, "readdirplus", st, 0)
		return len(ents)
	}
	time.Sleep(dirSettle + 100*time.Millisecond) // the fixture's lower was just made
	n := list()
	if n == 0 || cfs.reads.Load() != 1 {
		t.Fatalf("first listing: %d entries, %d reads", n, cfs.reads.Load())
	}
	time.Sleep(resolvedTTL + 200*time.Millisecond)
	if list() != n || cfs.reads.Load() != 1 {
		t.Fatalf("listing of an unchanged directory after %v: read %d times, want 1", resolvedTTL, cfs.reads.Load())
	}
	// Behind NFS: an entry added to the lower directory moves its times.
	must(t, os.WriteFile(filepath.Join(f.lower, "usr/bin/extra"), nil, 0o755))
	time.Sleep(resolvedTTL + 200*time.Millisecond) // the directory's cached status expires
	if got := list(); got != n+1 || cfs.reads.Load() != 2 {
		t.Fatalf("after a change behind NFS: %d entries (want %d), %d reads (want 2)", got, n+1, cfs.reads.Load())
	}
	// Through NFS: the export's change count moves.
	if st, _, _ := c.create(dir, "made", 0, mode(0o755)); st != 0 {
		t.Fatalf("create: %d", st)
	}
	if got := list(); got != n+2 || cfs.reads.Load() != 3 {
		t.Fatalf("after a create: %d entries (want %d), %d reads (want 3)", got, n+2, cfs.reads.Load())
	}
}

// statCountingFS counts the Lstat calls of one path.
type statCountingFS struct {
	FileSystem
	path  string
	stats atomic.Int32
}

func (c *statCountingFS) Lstat(name string) (fs.FileInfo, error) {
	if name == c.path {
		c.stats.Add(1)
	}
	return c.FileSystem.Lstat(name)
}

// A GETATTR right after the LOOKUP that found a file does not stat it again.
func TestLookupThenGetattrStatsOnce(t *testing.T) {
	f := newFixture(t)
	cfs := &statCountingFS{path: "/etc/hostname"}
	exps := append([]Export(nil), f.exps...)
	for i := range exps {
		if exps[i].Board == "pi-a" {
			cfs.FileSystem = exps[i].FS
			exps[i].FS = cfs
		}
	}
	f.srv.SetExports(exps)
	c, root := f.client("pi-a")
	st, fh, _ := c.lookup(c.walk(root, "etc"), "hostname")
	wantStatus(t, "lookup", st, 0)
	st, attr := c.getattr(fh)
	wantStatus(t, "getattr", st, 0)
	if attr.Filesize != 5 {
		t.Fatalf("getattr: size %d", attr.Filesize)
	}
	if n := cfs.stats.Load(); n != 1 {
		t.Fatalf("LOOKUP+GETATTR stat'ed the file %d times, want 1", n)
	}
}
