package overlay

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLookupThroughBigLowerDirs: lower dirs too big for an exact name list are skipped by
// their Bloom filters; every name must still be found in the right layer, whiteouts and
// opaque dirs in them honoured, and missing names missing.
func TestLookupThroughBigLowerDirs(t *testing.T) {
	b := newBed(t, 3)
	for l, root := range b.lowers {
		for i := range 300 {
			put(t, root, "lib/n"+strconv.Itoa(l)+"-"+strconv.Itoa(i), "layer"+strconv.Itoa(l), 0o644)
		}
		put(t, root, "lib/shared", "layer"+strconv.Itoa(l), 0o644)
		put(t, root, "lib/sub/f"+strconv.Itoa(l), "x", 0o644)
	}
	must(t, unix.Mknod(filepath.Join(b.lowers[0], "lib/n1-7"), unix.S_IFCHR, 0)) // whiteout over layer 1's
	must(t, unix.Setxattr(filepath.Join(b.lowers[1], "lib/sub"), xattrOpaque, []byte("y"), 0))
	o := b.open(t)
	for l := range b.lowers {
		for i := range 300 {
			name := "lib/n" + strconv.Itoa(l) + "-" + strconv.Itoa(i)
			_, err := o.Lstat(name)
			if l == 1 && i == 7 {
				wantErrno(t, err, unix.ENOENT)
				continue
			}
			must(t, err)
		}
	}
	for i := range 2000 {
		if _, err := o.Lstat("lib/missing" + strconv.Itoa(i)); !os.IsNotExist(err) {
			t.Fatalf("lib/missing%d: %v", i, err)
		}
	}
	if got := readAll(t, o, "lib/shared"); got != "layer0" {
		t.Errorf("lib/shared from %s", got)
	}
	if got := names(t, o, "lib/sub"); got != "f0,f1" {
		t.Errorf("lib/sub: %s (layer 1's copy is opaque)", got)
	}
	o.dirs.clear() // resolved again from the lists kept
	if got := names(t, o, "lib/sub"); got != "f0,f1" {
		t.Errorf("lib/sub after the dir cache was cleared: %s", got)
	}
	if _, err := o.Lstat("lib/n2-299"); err != nil {
		t.Error(err)
	}
}
