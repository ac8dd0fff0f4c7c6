package images

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/overlay"
)

// TestACLsSurviveCopyUp: what a board sees of an imported ACL. The overlay copies xattrs at
// copy-up with getxattr/setxattr, so the ACLs written in the kernel's format by the import
// must reach the upper unchanged, and a file created in a copied-up dir inherits its default
// ACL as on any Linux file system.
func TestACLsSurviveCopyUp(t *testing.T) {
	needRoot(t)
	needTool(t, "getfacl")
	src := t.TempDir()
	fixtureTree(t, src, 0)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	if _, err := st.Import(context.Background(), src, "acl", ImportOptions{Logger: quietLog()}); err != nil {
		t.Fatal(err)
	}
	board := t.TempDir()
	upper, work := filepath.Join(board, "upper"), filepath.Join(board, "work")
	o, err := overlay.New(overlay.Options{Upper: upper, Work: work, Lowers: []string{st.RootDir("acl")}})
	must(t, err)
	// chown to the same owner copies up the file and its parents, changing nothing else
	for _, p := range []string{"srv/shared/notes", "var/log/journal/0123456789abcdef/system.journal"} {
		fi, err := o.Lstat(p)
		must(t, err)
		ost := fi.Sys().(*overlay.Stat)
		must(t, o.Lchown(p, int(ost.Uid), int(ost.Gid)))
	}
	compareACLs(t, src, upper)
	f, err := o.OpenFile("srv/shared/new", os.O_WRONLY|os.O_CREATE, 0o644)
	must(t, err)
	f.Close()
	out, err := exec.Command("getfacl", "-n", filepath.Join(upper, "srv/shared/new")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "user:1234:rwx") || !strings.Contains(string(out), "group:4321:r-x") {
		t.Errorf("a file created in a dir with a default ACL did not inherit it: %v\n%s", err, out)
	}
}
