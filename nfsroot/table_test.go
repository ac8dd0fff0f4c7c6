package nfsroot

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestHandleTableFullDisk runs a board's handle table on a 64 KiB tmpfs, fills it, hands
// out handles while writes fail (some of them short), frees the space and restarts: every
// handle a reply carried must still resolve. Records used to be dropped when their write
// failed (while the in-memory table kept them), and a short write left a torn record that
// cut every later record at replay.
func TestHandleTableFullDisk(t *testing.T) {
	f := newFixture(t)
	state := f.stateDir("pi-a")
	must(t, os.MkdirAll(state, 0o700))
	must(t, syscall.Mount("tmpfs", state, "tmpfs", 0, "size=64k,mode=0700"))
	t.Cleanup(func() {
		f.stop()
		_ = syscall.Unmount(state, syscall.MNT_DETACH)
	})
	const files = 600
	for i := range files {
		must(t, os.MkdirAll(filepath.Join(f.lower, "many"), 0o755))
		must(t, os.WriteFile(filepath.Join(f.lower, "many", fmt.Sprintf("file-with-a-longish-name-%04d", i)), nil, 0o644))
	}
	c, root := f.client("pi-a")
	dir := c.walk(root, "many")

	// Fill the file system but for part of the log's last page.
	filler := filepath.Join(state, "filler")
	fill, err := os.Create(filler)
	must(t, err)
	chunk := make([]byte, 1024)
	for {
		if _, err := fill.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	must(t, fill.Close())

	sent := map[string][]byte{} // name -> handle a reply carried
	failed := 0
	lookup := func(i int) {
		name := fmt.Sprintf("file-with-a-longish-name-%04d", i)
		st, fh, _ := c.lookup(dir, name)
		switch st {
		case 0:
			sent[name] = fh
		case 10006: // SERVERFAULT: the handle could not be recorded
			failed++
		default:
			t.Fatalf("lookup %s: status %d", name, st)
		}
	}
	for i := range files / 2 {
		lookup(i)
	}
	if failed == 0 {
		t.Fatal("no lookup failed on a full disk: the test did not fill it")
	}
	t.Logf("full disk: %d handles sent, %d lookups failed", len(sent), failed)
	must(t, os.Remove(filler))
	for i := range files { // again the ones that failed, then new ones
		lookup(i)
	}
	if len(sent) != files {
		t.Fatalf("%d of %d lookups succeeded after space was freed", len(sent), files)
	}

	f.restart()
	c = dialFrom(t, addrA, f.nfs)
	stale := 0
	for name, fh := range sent {
		if st, _ := c.getattr(fh); st != 0 {
			stale++
			if stale < 5 {
				t.Errorf("handle of %s after restart: status %d", name, st)
			}
		}
	}
	if stale > 0 {
		t.Fatalf("%d of %d handles went stale", stale, len(sent))
	}
}

// TestHandleTableTornMiddle damages a record in the middle of the log: replay must skip
// it and keep every good record after it.
func TestHandleTableTornMiddle(t *testing.T) {
	dir := t.TempDir()
	tbl, _, err := openTable(dir)
	must(t, err)
	for i := range uint64(100) {
		must(t, tbl.sync(tbl.record(opAddLink, 100+i, link{parent: 1, name: fmt.Sprint("f", i)})))
	}
	must(t, tbl.close())
	path := filepath.Join(dir, tableFile)
	data, err := os.ReadFile(path)
	must(t, err)
	// Record 10 loses its tail (a short write), record 50 gets a flipped byte.
	r10 := bytes.Index(data, []byte("f10"))
	r11 := bytes.Index(data, []byte("f11"))
	r50 := bytes.Index(data, []byte("f50"))
	data[r50] ^= 0x20
	// The torn record is followed by the next whole one, as after a write that came short
	// and a later one that was appended behind it.
	start11 := r11 - recHeader - recFixed
	torn := append(append([]byte{}, data[:r10]...), data[start11:]...)
	must(t, os.WriteFile(path, torn, 0o600))
	tbl, _, err = openTable(dir)
	must(t, err)
	defer tbl.close()
	for i := range uint64(100) {
		got := tbl.candidates(100+i, 1)
		want := i != 10 && i != 50
		if (len(got) == 1) != want {
			t.Errorf("record %d after replay: %q (want kept: %v)", i, got, want)
		}
	}
	if tbl.skipped != 2 {
		t.Errorf("replay skipped %d damaged records, want 2", tbl.skipped)
	}
}

// TestHandleTableFormat1 reads a log written in format 1 (before framing) and rewrites it.
func TestHandleTableFormat1(t *testing.T) {
	dir := t.TempDir()
	v1 := func(b []byte, op byte, id uint64, l link) []byte {
		b = append(b, op)
		b = append(b, byte(id>>56), byte(id>>48), byte(id>>40), byte(id>>32), byte(id>>24), byte(id>>16), byte(id>>8), byte(id))
		p := l.parent
		b = append(b, byte(p>>56), byte(p>>48), byte(p>>40), byte(p>>32), byte(p>>24), byte(p>>16), byte(p>>8), byte(p))
		b = append(b, byte(len(l.name)))
		return append(b, l.name...)
	}
	log := v1(v1(nil, opAddLink, 5, link{1, "a"}), opOnlyLink, 6, link{5, "b"})
	must(t, os.WriteFile(filepath.Join(dir, tableFile), log, 0o600))
	tbl, _, err := openTable(dir)
	must(t, err)
	must(t, tbl.sync(tbl.record(opAddLink, 7, link{6, "c"})))
	must(t, tbl.close())
	data, err := os.ReadFile(filepath.Join(dir, tableFile))
	must(t, err)
	if !bytes.HasPrefix(data, []byte(tableMagic)) {
		t.Fatalf("format 1 log not rewritten: %q", data[:min(len(data), 16)])
	}
	tbl, _, err = openTable(dir)
	must(t, err)
	defer tbl.close()
	if got := tbl.candidates(7, 1); len(got) != 1 || got[0] != "/a/b/c" {
		t.Fatalf("after migration: %q", got)
	}
}
