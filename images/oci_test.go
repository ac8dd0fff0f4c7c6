package images

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestContainerLayersMatchTar: the fixture's layers converted one by one, stacked topmost
// first, show through package overlay and through the kernel's overlayfs exactly the tree
// that GNU tar extraction in order (with docker's whiteout rules) leaves.
func TestContainerLayersMatchTar(t *testing.T) {
	needRoot(t)
	layers := ociFixtureLayers()
	want := describeTree(t, hostView(flattenWithTar(t, layers)))
	root := defaultRoot
	var lowers []string
	for i, l := range layers {
		dst := t.TempDir()
		st, err := writeContainerLayer(context.Background(), fmt.Sprintf("layer %d", i+1), bytes.NewReader(layerTar(t, l)), dst, root)
		if err != nil {
			t.Fatal(err)
		}
		root = st.Root
		lowers = append([]string{dst}, lowers...)
	}
	viewStack(t, lowers, want)
	if !isOpaqueDir(filepath.Join(lowers[1], "var/lib/stuff")) {
		t.Error("layer 2's var/lib/stuff is not opaque")
	}
	var a, b unix.Stat_t
	must(t, unix.Lstat(filepath.Join(lowers[2], "usr/bin/perl"), &a))
	must(t, unix.Lstat(filepath.Join(lowers[2], "usr/bin/perl5.36"), &b))
	if a.Ino != b.Ino {
		t.Error("the hard-link pair of layer 1 are two files")
	}
}
