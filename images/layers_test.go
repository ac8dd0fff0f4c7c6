package images

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLayerViewSkipsLayersWithoutTheDir: in a stack of three, a middle layer that lacks a
// directory does not hide the bottom layer's (a board commit's layer holds /usr/local
// only; the prep layer has no /usr at all), while a whiteout does. The first user's
// shell was /bin/sh on such a stack because usr/bin/bash was not found.
func TestLayerViewSkipsLayersWithoutTheDir(t *testing.T) {
	top, mid, bottom := t.TempDir(), t.TempDir(), t.TempDir()
	for _, p := range []string{top + "/usr/local/bin/tool", mid + "/etc/fstab", bottom + "/usr/bin/bash", bottom + "/usr/sbin/gone", bottom + "/usr/lib/x"} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(mid+"/usr", 0o755); err != nil {
		t.Fatal(err)
	}
	os.Rename(mid+"/usr", mid+"/usr-not") // the middle layer has no usr
	if err := unix.Mknod(top+"/usr/sbin", unix.S_IFCHR|0o600, 0); err != nil {
		t.Fatal(err) // whiteout: hides the bottom's usr/sbin
	}
	v := layerView{top, mid, bottom}
	for _, p := range []string{"usr/bin/bash", "usr/local/bin/tool", "etc/fstab", "usr/lib/x"} {
		if !v.exists(p) {
			t.Errorf("%s: not found through the stack", p)
		}
	}
	if v.exists("usr/sbin/gone") || v.exists("usr/sbin") {
		t.Errorf("usr/sbin is whited out in the top layer, yet found")
	}
	names, err := v.readDir("usr")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"bin", "lib", "local"}; !slices.Equal(names, want) {
		t.Errorf("readDir(usr) = %v, want %v", names, want)
	}
}
