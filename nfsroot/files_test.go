package nfsroot

import (
	"os"
	"path/filepath"
	"testing"
)

// A READ right after the LOOKUP that found a file opens it where the LOOKUP found it
// (overlay.OpenLoc), unless the overlay changed since: a copy-up through another name
// behind NFS (which moves no NFS change count, so the LOOKUP's cached result still
// stands) must not leave the READ reading the lower file, and neither must a removal.
func TestReadAfterLookupSeesCopyUpBehindNFS(t *testing.T) {
	f := newFixture(t)
	// A second name for the lower file, made before anything looked at the lower dir.
	must(t, os.Link(filepath.Join(f.lower, "etc/hostname"), filepath.Join(f.lower, "etc/hostname2")))
	must(t, os.WriteFile(filepath.Join(f.lower, "etc/motd"), []byte("hello\n"), 0o644))
	var fsys FileSystem
	for _, e := range f.exps {
		if e.Board == "pi-a" {
			fsys = e.FS
		}
	}
	c, root := f.client("pi-a")
	etc := c.walk(root, "etc")
	fh := c.walk(etc, "hostname")
	motd := c.walk(etc, "motd")

	// The server (not the board) changes the file through its other name: copy-up, and
	// the lower name is linked to the copy.
	w, err := fsys.OpenFile("/etc/hostname2", os.O_WRONLY, 0)
	must(t, err)
	_, err = w.WriteAt([]byte("BASE\n"), 0)
	must(t, err)
	must(t, w.Close())
	must(t, fsys.Remove("/etc/motd"))

	st, data := c.readAll(fh)
	wantStatus(t, "read after copy-up", st, 0)
	if data != "BASE\n" {
		t.Fatalf("READ after a copy-up by another name served %q, want the upper copy %q", data, "BASE\n")
	}
	if st, data := c.readAll(motd); st == 0 {
		t.Fatalf("READ of a file removed behind NFS served %q", data)
	}
}
