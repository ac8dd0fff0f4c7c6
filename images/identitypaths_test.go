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
			if ex.Match(rel) || slices.Contains([]string{"/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"}, rel) ||
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
