package shell

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/overlay"
	"github.com/pifleet/pifleet/test/require"
	"golang.org/x/sys/unix"
)

// TestClean: overlay bookkeeping xattrs and trusted.pifleet.* go, opaque=y stays,
// hard-linked whiteouts get their own inode; with images.LayerExcludes per-board paths go
// whole, under volatile dirs the files and whiteouts go while the dirs stay (a package's
// new /var/log/foo with its owner and mode), and an opaque dir with a volatile dir below
// becomes whiteouts for what it hid, so the image's logs show.
func TestClean(t *testing.T) {
	require.Root(t, "sets trusted.* xattrs and makes whiteouts (char 0/0)")
	up, low := t.TempDir(), t.TempDir()
	mk := func(rel, content string) {
		p := filepath.Join(up, rel)
		if r, ok := strings.CutPrefix(rel, "lower:"); ok {
			p = filepath.Join(low, r)
		}
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(content), 0o644))
	}
	mk("etc/foo", "x")
	mk("etc/hostname", "builder")
	mk("etc/ssh/ssh_host_ed25519_key", "k")
	mk("etc/ssh/sshd_config", "c")
	mk("var/log/apt/history.log", "l")
	mk("var/cache/apt/archives/foo.deb", "d")
	mk("var/cache/apt/pkgcache.bin", "b")
	mk("root/.bash_history", "h")
	mk("var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease", "r")
	mk("var/lib/apt/extended_states", "e")
	mk("var/lib/NetworkManager/secret_key", "s")
	mk("var/log/foo/foo.log", "l")
	must(t, os.Chmod(filepath.Join(up, "var/log/foo"), 0o750))
	must(t, os.Lchown(filepath.Join(up, "var/log/foo"), 7, 4))
	// /srv made again in the image shell: opaque, but a volatile dir is below it
	mk("lower:srv/old", "o")
	mk("lower:srv/tmp/t", "t")
	mk("lower:opt/old", "o")
	mk("srv/tmp/new", "n")
	mk("opt/new", "n")
	must(t, unix.Lsetxattr(filepath.Join(up, "srv"), xattrOpaque, []byte("y"), 0))
	must(t, unix.Lsetxattr(filepath.Join(up, "opt"), xattrOpaque, []byte("y"), 0))
	must(t, os.MkdirAll(filepath.Join(up, "opq"), 0o755))
	must(t, unix.Mknod(filepath.Join(up, "etc", "gone"), unix.S_IFCHR, 0))
	must(t, os.Link(filepath.Join(up, "etc", "gone"), filepath.Join(up, "var", "log", "gone")))
	must(t, unix.Lsetxattr(up, "trusted.overlay.impure", []byte("y"), 0))
	must(t, unix.Lsetxattr(filepath.Join(up, "etc", "foo"), "trusted.overlay.origin", []byte{0, 1, 2}, 0))
	must(t, unix.Lsetxattr(filepath.Join(up, "etc", "foo"), "trusted.pifleet.fileid", []byte("12345678"), 0))
	must(t, unix.Lsetxattr(filepath.Join(up, "etc", "foo"), "user.keep", []byte("v"), 0))
	must(t, unix.Lsetxattr(filepath.Join(up, "opq"), xattrOpaque, []byte("y"), 0))

	ex, err := overlay.ParseExcludes(append(images.LayerExcludes(), "/srv/tmp/"))
	must(t, err)
	dropped, err := Clean(up, []string{low}, ex)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/etc/hostname", "/etc/ssh/ssh_host_ed25519_key", "/root/.bash_history",
		"/srv/tmp/new", "/var/cache/apt/archives/foo.deb", "/var/cache/apt/pkgcache.bin",
		"/var/lib/NetworkManager", "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
		"/var/log/apt/history.log", "/var/log/foo/foo.log", "/var/log/gone"}
	slices.Sort(dropped)
	if !slices.Equal(dropped, want) {
		t.Errorf("dropped %q, want %q", dropped, want)
	}
	for _, rel := range []string{"etc/foo", "etc/ssh/sshd_config", "var/log/apt", "var/cache/apt/archives", "var/lib/apt/lists", "var/lib/apt/extended_states"} {
		if _, err := os.Lstat(filepath.Join(up, rel)); err != nil {
			t.Errorf("%s: %v", rel, err)
		}
	}
	if st, err := os.Lstat(filepath.Join(up, "var/log/foo")); err != nil || st.Mode() != os.ModeDir|0o750 || st.Sys().(*syscall.Stat_t).Uid != 7 || st.Sys().(*syscall.Stat_t).Gid != 4 {
		t.Errorf("var/log/foo: want the dir, 750 7:4: %v %v", st, err)
	}
	if _, err := getXattr(filepath.Join(up, "srv"), xattrOpaque); err == nil {
		t.Error("srv: still opaque, so the image's /srv/tmp/t would not show")
	}
	if v, err := getXattr(filepath.Join(up, "opt"), xattrOpaque); err != nil || string(v) != "y" {
		t.Errorf("opt: no longer opaque: %q %v", v, err)
	}
	for _, rel := range []string{"srv/tmp/t", "opt/old"} {
		if _, err := os.Lstat(filepath.Join(up, rel)); err == nil {
			t.Errorf("%s: a whiteout for a path left out, or under an opaque dir", rel)
		}
	}
	for _, rel := range []string{"etc/gone", "srv/old"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(up, rel), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 || st.Nlink != 1 {
			t.Errorf("%s: want a whiteout with one link: mode %o nlink %d %v", rel, st.Mode, st.Nlink, err)
		}
	}
	if xs, _ := listXattrs(up); len(xs) != 0 {
		t.Errorf("root keeps %q", xs)
	}
	if xs, _ := listXattrs(filepath.Join(up, "etc", "foo")); !slices.Equal(xs, []string{"user.keep"}) {
		t.Errorf("etc/foo keeps %q, want only user.keep", xs)
	}
	if v, err := getXattr(filepath.Join(up, "opq"), xattrOpaque); err != nil || string(v) != "y" {
		t.Errorf("opaque dir lost its mark: %q %v", v, err)
	}
}

// TestCleanRefusesRedirect: a redirect (or any overlay xattr a layer cannot hold) is an
// error naming the path, not silently dropped.
func TestCleanRefusesRedirect(t *testing.T) {
	require.Root(t, "sets trusted.* xattrs")
	for _, x := range [][2]string{{"trusted.overlay.redirect", "/a"}, {"trusted.overlay.metacopy", ""}, {xattrOpaque, "x"}} {
		up := t.TempDir()
		must(t, os.Mkdir(filepath.Join(up, "d"), 0o755))
		must(t, unix.Lsetxattr(filepath.Join(up, "d"), x[0], []byte(x[1]), 0))
		_, err := Clean(up, nil, nil)
		if err == nil || !strings.Contains(err.Error(), "/d: "+x[0]) {
			t.Errorf("%s: got %v, want an error naming /d and the xattr", x[0], err)
		}
	}
}
