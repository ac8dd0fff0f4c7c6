package nfsroot

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Handles and fileids must stay valid across a restart, a rename of the file or any parent,
// a copy-up and any number of other handles issued meanwhile.
func TestHandlesSurviveRestartRenameCopyUp(t *testing.T) {
	f := newFixture(t)
	c, root := f.client("pi-a")
	srv := c.walk(root, "srv")
	deep := c.walk(srv, "deep")
	file := c.walk(deep, "a", "b", "c", "file")
	etc := c.walk(root, "etc")
	host := c.walk(etc, "hostname")
	_, hostAttr := c.getattr(host)
	_, fileAttr := c.getattr(file)

	// Copy-up: writing the lower file moves it to the upper; the old handle follows.
	st, _ := c.write(host, 0, []byte("pi-a\n"), fileSync)
	wantStatus(t, "write lower file", st, 0)
	if _, err := os.Stat(filepath.Join(f.upper("pi-a"), "etc/hostname")); err != nil {
		t.Fatalf("write did not copy up: %v", err)
	}
	st, data := c.readAll(host)
	if st != 0 || data != "pi-a\n" {
		t.Fatalf("read after copy-up: %d %q", st, data)
	}
	if _, a := c.getattr(host); a.Fileid != hostAttr.Fileid {
		t.Fatalf("fileid changed on copy-up: %d -> %d", hostAttr.Fileid, a.Fileid)
	}

	// Rename of a parent directory (a lower one) and of the file itself.
	wantStatus(t, "rename parent dir", c.rename(srv, "deep", root, "moved"), 0)
	bdir := c.walk(root, "moved", "a", "b")
	wantStatus(t, "rename file's dir", c.rename(bdir, "c", root, "c2"), 0)
	c2 := c.walk(root, "c2")
	wantStatus(t, "rename file", c.rename(c2, "file", c2, "renamed"), 0)
	st, data = c.readAll(file)
	if st != 0 || data != "deep\n" {
		t.Fatalf("read through old handle after renames: %d %q", st, data)
	}
	if _, a := c.getattr(file); a.Fileid != fileAttr.Fileid {
		t.Fatalf("fileid changed on rename: %d -> %d", fileAttr.Fileid, a.Fileid)
	}
	if st, _ := c.getattr(deep); st != 0 {
		t.Fatalf("handle of renamed dir: %d", st)
	}

	// Many other handles: 10,001 files created and looked up.
	many := c.walk(root, "tmp")
	st, manyDir, _ := c.mkdir(many, "many", mode(0o755))
	wantStatus(t, "mkdir", st, 0)
	for i := range 10001 {
		st, _, _ := c.create(manyDir, fmt.Sprintf("f%05d", i), 0, mode(0o644))
		if st != 0 {
			t.Fatalf("create %d: %d", i, st)
		}
	}
	if st, ents := c.readdirplus(manyDir); st != 0 || len(ents) != 10001 {
		t.Fatalf("readdirplus: %d, %d entries", st, len(ents))
	}
	st, data = c.readAll(file)
	if st != 0 || data != "deep\n" {
		t.Fatalf("old handle after 10,000 others: %d %q", st, data)
	}

	// Restart: a new server process state (new Server, new overlay.FS) on the same dirs.
	f.restart()
	c = dialFrom(t, addrA, f.nfs) // no MOUNT: the board keeps its handles across the restart
	for name, fh := range map[string][]byte{"root": root, "etc": etc, "hostname": host, "file": file, "deep": deep, "c2": c2} {
		if st, _ := c.getattr(fh); st != 0 {
			t.Fatalf("handle of %s after restart: status %d", name, st)
		}
	}
	st, data = c.readAll(host)
	if st != 0 || data != "pi-a\n" {
		t.Fatalf("read after restart: %d %q", st, data)
	}
	if _, a := c.getattr(file); a.Fileid != fileAttr.Fileid {
		t.Fatalf("fileid changed on restart")
	}

	// Reset of the board: state dir and upper gone, old handles are STALE, not other files.
	f.stop()
	must(t, os.RemoveAll(f.stateDir("pi-a")))
	must(t, os.RemoveAll(f.upper("pi-a")))
	f.start()
	c = dialFrom(t, addrA, f.nfs)
	if st, _ := c.getattr(host); st != 70 {
		t.Fatalf("handle after board reset: status %d, want STALE", st)
	}
	c2c, root2 := f.client("pi-a")
	if st, data := c2c.readAll(c2c.walk(root2, "etc", "hostname")); st != 0 || data != "base\n" {
		t.Fatalf("after reset: %d %q", st, data)
	}
}

func TestHandleTableTornTail(t *testing.T) {
	dir := t.TempDir()
	tbl, inst, err := openTable(dir)
	must(t, err)
	must(t, tbl.sync(tbl.record(opAddLink, 5, link{parent: 1, name: "a"})))
	must(t, tbl.sync(tbl.record(opOnlyLink, 6, link{parent: 5, name: "b"})))
	must(t, tbl.close())
	// A crash mid-append leaves half a record.
	fh, err := os.OpenFile(filepath.Join(dir, tableFile), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = fh.Write([]byte{opAddLink, 0, 0, 0})
	must(t, err)
	must(t, fh.Close())
	tbl, inst2, err := openTable(dir)
	must(t, err)
	if inst != inst2 {
		t.Fatal("instance id changed on reopen")
	}
	if got := tbl.candidates(6, 1); len(got) != 1 || got[0] != "/a/b" {
		t.Fatalf("candidates after torn tail: %q", got)
	}
	must(t, tbl.sync(tbl.record(opAddLink, 7, link{parent: 6, name: "c"})))
	must(t, tbl.close())
	tbl, _, err = openTable(dir)
	must(t, err)
	if got := tbl.candidates(7, 1); len(got) != 1 || got[0] != "/a/b/c" {
		t.Fatalf("record after a torn tail lost: %q", got)
	}
	// A loop in the table (corruption) ends, not hangs.
	tbl.record(opOnlyLink, 5, link{parent: 6, name: "a"})
	if got := tbl.candidates(7, 1); len(got) != 0 {
		t.Fatalf("loop resolved to %q", got)
	}
	must(t, tbl.close())
}
