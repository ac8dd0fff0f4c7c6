package images

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/overlay"
)

// TestIdentityPathsCoverIdentity: every file WriteIdentity writes, on Pi OS and on a plain
// Debian image, is an identity path, except the account files and the home dir's skeleton.
func TestIdentityPathsCoverIdentity(t *testing.T) {
	needRoot(t)
	ex, err := overlay.ParseExcludes(IdentityPaths())
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@example"}
	for _, piOS := range []bool{true, false} {
		img := debianRoot(t)
		if piOS {
			must(t, os.MkdirAll(filepath.Join(img, "usr/lib/userconf-pi"), 0o755))
			must(t, os.WriteFile(filepath.Join(img, "usr/lib/userconf-pi/userconf"), nil, 0o755))
		}
		dir := t.TempDir()
		id := Identity{Hostname: "pi-01", Serial: "1234abcd", User: "kiosk", AuthorizedKeys: keys, Image: []string{img}}
		if err := WriteIdentity(dir, id); err != nil {
			t.Fatal(err)
		}
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel := "/" + strings.TrimPrefix(p, dir+"/")
			if ex.Match(rel, false) || slices.Contains([]string{"/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"}, rel) ||
				!piOS && strings.HasPrefix(rel, "/home/kiosk/") {
				return nil
			}
			t.Errorf("Pi OS %v: %s is written per board but not in IdentityPaths", piOS, rel)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestLayerExcludes: the list parses, per-board paths go whole, volatile dirs keep their
// dirs and lose their files.
func TestLayerExcludes(t *testing.T) {
	ex, err := overlay.ParseExcludes(LayerExcludes())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		dir  bool
		want bool
	}{
		{"/etc/machine-id", false, true}, {"/etc/machine-id.old", false, false}, {"/etc/ssh/ssh_host_rsa_key.pub", false, true},
		{"/etc/ssh/sshd_config", false, false}, {"/var/lib/NetworkManager", true, true}, {"/var/lib/NetworkManager/secret_key", false, true},
		{"/var/log", true, false}, {"/var/log/nginx", true, false}, {"/var/log/nginx/access.log", false, true}, {"/var/logger", false, false},
		{"/var/cache/apt/srcpkgcache.bin", false, true}, {"/var/cache/apt/x/y.bin", false, false}, {"/tmp/a/b", false, true},
		{"/tmp/a", true, false}, {"/home/pi/.cache/x/y", false, true}, {"/var/lib/apt/lists/partial", true, false},
	} {
		if got := ex.Match(c.path, c.dir); got != c.want {
			t.Errorf("Match(%s, dir %v) = %v, want %v", c.path, c.dir, got, c.want)
		}
	}
}
