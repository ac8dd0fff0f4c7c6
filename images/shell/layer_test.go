package shell

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/test/require"
	"golang.org/x/sys/unix"
)

// TestClean: overlay bookkeeping xattrs and trusted.pifleet.* go, opaque=y stays,
// hard-linked whiteouts get their own inode, volatile files go while directories and
// whiteouts under volatile paths stay.
func TestClean(t *testing.T) {
	require.Root(t, "sets trusted.* xattrs and makes whiteouts (char 0/0)")
	up := t.TempDir()
	mk := func(rel, content string) {
		p := filepath.Join(up, rel)
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
	must(t, os.MkdirAll(filepath.Join(up, "opq"), 0o755))
	must(t, unix.Mknod(filepath.Join(up, "etc", "gone"), unix.S_IFCHR, 0))
	must(t, os.Link(filepath.Join(up, "etc", "gone"), filepath.Join(up, "var", "log", "gone")))
	must(t, unix.Lsetxattr(up, "trusted.overlay.impure", []byte("y"), 0))
	must(t, unix.Lsetxattr(filepath.Join(up, "etc", "foo"), "trusted.overlay.origin", []byte{0, 1, 2}, 0))
	must(t, unix.Lsetxattr(filepath.Join(up, "etc", "foo"), "trusted.pifleet.fileid", []byte("12345678"), 0))
	must(t, unix.Lsetxattr(filepath.Join(up, "etc", "foo"), "user.keep", []byte("v"), 0))
	must(t, unix.Lsetxattr(filepath.Join(up, "opq"), xattrOpaque, []byte("y"), 0))

	dropped, err := Clean(up, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/etc/hostname", "/etc/ssh/ssh_host_ed25519_key", "/root/.bash_history",
		"/var/cache/apt/archives/foo.deb", "/var/cache/apt/pkgcache.bin",
		"/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease", "/var/log/apt/history.log"}
	slices.Sort(dropped)
	if !slices.Equal(dropped, want) {
		t.Errorf("dropped %q, want %q", dropped, want)
	}
	for _, rel := range []string{"etc/foo", "etc/ssh/sshd_config", "var/log/apt", "var/cache/apt/archives", "var/lib/apt/lists", "var/lib/apt/extended_states"} {
		if _, err := os.Lstat(filepath.Join(up, rel)); err != nil {
			t.Errorf("%s: %v", rel, err)
		}
	}
	for _, rel := range []string{"etc/gone", "var/log/gone"} {
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
		_, err := Clean(up, nil)
		if err == nil || !strings.Contains(err.Error(), "/d: "+x[0]) {
			t.Errorf("%s: got %v, want an error naming /d and the xattr", x[0], err)
		}
	}
}

func TestExcluded(t *testing.T) {
	for rel, want := range map[string]bool{
		"/var/log/syslog": true, "/var/log": false, "/var/logger": false, "/etc/ssh/ssh_host_rsa_key.pub": true,
		"/etc/ssh/sshd_config": false, "/var/cache/apt/srcpkgcache.bin": true, "/var/cache/apt/x/y.bin": false,
		"/tmp/a/b": true, "/etc/machine-id": true, "/etc/machine-id.old": false,
	} {
		if got := excluded(rel, Volatile); got != want {
			t.Errorf("excluded(%s) = %v, want %v", rel, got, want)
		}
	}
}
