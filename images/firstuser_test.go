package images

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/pifleet/pifleet/overlay"
	"github.com/pifleet/pifleet/test/require"
)

// debianRoot writes a small stock-Debian-like root: account files with root, daemon, the
// sudo, users and shadow groups, nobody, /etc/skel and bash.
func debianRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"etc/passwd":        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		"etc/shadow":        "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
		"etc/group":         "root:x:0:\ndaemon:x:1:\nadm:x:4:\nsudo:x:27:\nshadow:x:42:\nusers:x:100:\nnogroup:x:65534:\n",
		"etc/gshadow":       "root:*::\ndaemon:*::\nadm:*::\nsudo:*::\nshadow:*::\nusers:*::\nnogroup:*::\n",
		"etc/skel/.bashrc":  "# skel bashrc\n",
		"etc/skel/.profile": "# skel profile\n",
		"usr/bin/bash":      "",
	}
	for rel, data := range files {
		p := filepath.Join(root, rel)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(data), 0o644))
	}
	must(t, os.Chmod(filepath.Join(root, "etc/shadow"), 0o640))
	return root
}

// boardView opens the board's merged tree (identity layer over the image) as the server does.
func boardView(t *testing.T, ident string, image []string) *overlay.FS {
	t.Helper()
	b := t.TempDir()
	o, err := overlay.New(overlay.Options{Upper: filepath.Join(b, "upper"), Work: filepath.Join(b, "work"), Lowers: append([]string{ident}, image...)})
	must(t, err)
	return o
}

func readOverlay(t *testing.T, o *overlay.FS, rel string) string {
	t.Helper()
	f, err := o.Open(rel)
	if err != nil {
		t.Fatalf("board's /%s: %v", rel, err)
	}
	defer f.Close()
	var b strings.Builder
	buf := make([]byte, 1<<16)
	for {
		n, err := f.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

func ownerOf(t *testing.T, o *overlay.FS, rel string) (uid, gid uint32, mode os.FileMode) {
	t.Helper()
	fi, err := o.Lstat(rel)
	if err != nil {
		t.Fatalf("board's /%s: %v", rel, err)
	}
	st := fi.Sys().(*overlay.Stat)
	return st.Uid, st.Gid, fi.Mode()
}

func TestFirstUserOnDebian(t *testing.T) {
	needRoot(t)
	img := debianRoot(t)
	// the image's layers: a prep layer above the root, as the store stacks them
	prep := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(prep, "etc"), 0o755))
	must(t, os.WriteFile(filepath.Join(prep, "etc/fstab"), []byte("# prep\n"), 0o644))
	image := []string{prep, img}
	ident := t.TempDir()
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests admin@laptop"
	id := Identity{Hostname: "deb-1", Serial: "1234", User: "admin", PasswordHash: "$6$salt$hash",
		AuthorizedKeys: []string{key}, Image: image}
	must(t, WriteIdentity(ident, id))
	o := boardView(t, ident, image)

	if got := readOverlay(t, o, "etc/passwd"); !strings.HasSuffix(got, "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nadmin:x:1000:1000:,,,:/home/admin:/bin/bash\n") {
		t.Errorf("passwd:\n%s", got)
	}
	if got := readOverlay(t, o, "etc/shadow"); !strings.Contains(got, "\nadmin:$6$salt$hash::0:99999:7:::\n") || !strings.HasPrefix(got, "root:*:19000:") {
		t.Errorf("shadow:\n%s", got)
	}
	group := readOverlay(t, o, "etc/group")
	for _, want := range []string{"\nsudo:x:27:admin\n", "\nadm:x:4:admin\n", "\nusers:x:100:admin\n", "\nadmin:x:1000:\n", "\nshadow:x:42:\n"} {
		if !strings.Contains(group, want) {
			t.Errorf("group lacks %q:\n%s", want, group)
		}
	}
	if got := readOverlay(t, o, "etc/gshadow"); !strings.Contains(got, "\nsudo:*::admin\n") || !strings.Contains(got, "\nadmin:!::\n") {
		t.Errorf("gshadow:\n%s", got)
	}
	for rel, want := range map[string][3]uint32{
		"etc/passwd": {0, 0, 0o644}, "etc/group": {0, 0, 0o644}, "etc/shadow": {0, 42, 0o640}, "etc/gshadow": {0, 42, 0o640},
		"home/admin": {1000, 1000, 0o700}, "home/admin/.bashrc": {1000, 1000, 0o644},
		"home/admin/.ssh": {1000, 1000, 0o700}, "home/admin/.ssh/authorized_keys": {1000, 1000, 0o600},
	} {
		u, g, m := ownerOf(t, o, rel)
		if u != want[0] || g != want[1] || uint32(m.Perm()) != want[2] {
			t.Errorf("/%s: %d:%d %o, want %d:%d %o", rel, u, g, m.Perm(), want[0], want[1], want[2])
		}
	}
	if got := readOverlay(t, o, "home/admin/.bashrc"); got != "# skel bashrc\n" {
		t.Errorf(".bashrc %q", got)
	}
	if got := readOverlay(t, o, "home/admin/.ssh/authorized_keys"); got != key+"\n" {
		t.Errorf("authorized_keys %q", got)
	}
	for _, p := range []string{"boot/firmware/userconf.txt", "etc/ssh/authorized_keys/admin"} {
		if _, err := os.Lstat(filepath.Join(ident, p)); err == nil {
			t.Errorf("%s written for an image without Pi OS's userconfig", p)
		}
	}
	checkAccounts(t, o)

	// a restart writes the same files and leaves them alone
	snap := layerSnapshot(t, ident)
	before, _ := os.Stat(filepath.Join(ident, "etc/passwd"))
	must(t, WriteIdentity(ident, id))
	if after, _ := os.Stat(filepath.Join(ident, "etc/passwd")); !os.SameFile(before, after) {
		t.Error("unchanged /etc/passwd was rewritten")
	}
	if got := layerSnapshot(t, ident); got != snap {
		t.Errorf("second call changed the layer:\n%s\nvs\n%s", snap, got)
	}
	// another layer dir gets the same files (deterministic)
	ident2 := t.TempDir()
	must(t, WriteIdentity(ident2, id))
	if a, b := accountsOf(t, ident), accountsOf(t, ident2); a != b {
		t.Errorf("two calls made different account files:\n%s\nvs\n%s", a, b)
	}

	// keys dropped: ~/.ssh goes, the rest stays
	id.AuthorizedKeys = nil
	must(t, WriteIdentity(ident, id))
	if _, err := os.Lstat(filepath.Join(ident, "home/admin/.ssh")); err == nil {
		t.Error("~/.ssh kept after the keys were dropped")
	}
	// the user renamed: the old home goes
	id.User = "ops"
	must(t, WriteIdentity(ident, id))
	if _, err := os.Lstat(filepath.Join(ident, "home/admin")); err == nil {
		t.Error("old user's home kept")
	}
	if got := readOverlay(t, boardView(t, ident, image), "etc/passwd"); strings.Contains(got, "admin") || !strings.Contains(got, "\nops:x:1000:1000:") {
		t.Errorf("passwd after rename:\n%s", got)
	}
	// the user taken out of fleet.yaml: every file goes, the image's own files show again
	id.User, id.PasswordHash = "", ""
	must(t, WriteIdentity(ident, id))
	for _, p := range []string{"etc/passwd", "etc/shadow", "etc/group", "etc/gshadow", "home"} {
		if _, err := os.Lstat(filepath.Join(ident, p)); err == nil {
			t.Errorf("%s kept after fleet.yaml dropped the user", p)
		}
	}
}

// TestFirstUserExistingEntry: a user the image already has (uid >= 1000) keeps its entry
// and home; only its password is set. System users are refused.
func TestFirstUserExistingEntry(t *testing.T) {
	needRoot(t)
	img := debianRoot(t)
	appendFile := func(rel, s string) {
		f, err := os.OpenFile(filepath.Join(img, rel), os.O_APPEND|os.O_WRONLY, 0)
		must(t, err)
		f.WriteString(s)
		f.Close()
	}
	appendFile("etc/passwd", "pi:x:1000:1000:,,,:/home/pi:/bin/bash\n")
	appendFile("etc/shadow", "pi:!:19000:0:99999:7:::\n")
	appendFile("etc/group", "pi:x:1000:\n")
	appendFile("etc/gshadow", "pi:!::\n")
	must(t, os.MkdirAll(filepath.Join(img, "home/pi"), 0o750))
	must(t, os.Chown(filepath.Join(img, "home/pi"), 1000, 1000))
	ident := t.TempDir()
	image := []string{img}
	must(t, WriteIdentity(ident, Identity{Hostname: "deb-2", Serial: "1", User: "pi", PasswordHash: "$y$j9T$x$y", Image: image}))
	o := boardView(t, ident, image)
	passwd := readOverlay(t, o, "etc/passwd")
	if strings.Count(passwd, "pi:x:") != 1 {
		t.Errorf("passwd:\n%s", passwd)
	}
	if got := readOverlay(t, o, "etc/shadow"); !strings.Contains(got, "\npi:$y$j9T$x$y:19000:0:99999:7:::\n") {
		t.Errorf("shadow:\n%s", got)
	}
	if u, _, m := ownerOf(t, o, "home/pi"); u != 1000 || m.Perm() != 0o750 {
		t.Errorf("home/pi %d %o", u, m.Perm())
	}
	if _, err := o.Lstat("home/pi/.bashrc"); err == nil {
		t.Error("skel copied into an existing home")
	}
	checkAccounts(t, o)
	for _, name := range []string{"root", "daemon", "nobody", "sudo"} {
		err := WriteIdentity(t.TempDir(), Identity{Hostname: "deb-2", Serial: "1", User: name, Image: image})
		if err == nil || !strings.Contains(err.Error(), "system") {
			t.Errorf("user %s: %v", name, err)
		}
	}
}

// TestFirstUserPiOS: an image with Pi OS's userconfig service keeps the userconf.txt way.
func TestFirstUserPiOS(t *testing.T) {
	needRoot(t)
	img := debianRoot(t)
	must(t, os.MkdirAll(filepath.Join(img, "usr/lib/userconf-pi"), 0o755))
	must(t, os.WriteFile(filepath.Join(img, "usr/lib/userconf-pi/userconf"), nil, 0o755))
	ident := t.TempDir()
	id := Identity{Hostname: "pi-1", Serial: "1", User: "admin", PasswordHash: "$6$s$h", Image: []string{img}}
	// an earlier call for a Debian image (the board's image changed)
	must(t, WriteIdentity(ident, Identity{Hostname: "pi-1", Serial: "1", User: "admin", Image: []string{debianRoot(t)}}))
	must(t, WriteIdentity(ident, id))
	if b, err := os.ReadFile(filepath.Join(ident, "boot/firmware/userconf.txt")); err != nil || string(b) != "admin:$6$s$h\n" {
		t.Errorf("userconf.txt %q %v", b, err)
	}
	for _, p := range []string{"etc/passwd", "etc/shadow", "etc/group", "etc/gshadow", "home"} {
		if _, err := os.Lstat(filepath.Join(ident, p)); err == nil {
			t.Errorf("%s written for a Pi OS image", p)
		}
	}
}

// checkAccounts runs pwck and grpck (read-only) on a copy of the board's merged account files
// and home dirs.
func checkAccounts(t *testing.T, o *overlay.FS) {
	t.Helper()
	require.Tools(t, map[string]string{"pwck": "passwd", "grpck": "passwd"})
	root := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	for _, f := range []string{"passwd", "shadow", "group", "gshadow"} {
		must(t, os.WriteFile(filepath.Join(root, "etc", f), []byte(readOverlay(t, o, "etc/"+f)), 0o640))
	}
	// pwck checks that homes exist
	for _, line := range strings.Split(readOverlay(t, o, "etc/passwd"), "\n") {
		if f := strings.Split(line, ":"); len(f) == 7 {
			must(t, os.MkdirAll(filepath.Join(root, f[5]), 0o755))
		}
	}
	for _, c := range [][]string{{"pwck", "-r", "-q", "-R", root}, {"grpck", "-r", "-R", root}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
}

// layerSnapshot lists every file of the layer with owner, mode and content.
func layerSnapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(dir, p)
		b.WriteString(rel + " " + fi.Mode().String() + " " + strconv.Itoa(int(st.Uid)) + ":" + strconv.Itoa(int(st.Gid)) + " ")
		if fi.Mode().IsRegular() && !strings.Contains(rel, "ssh_host") {
			d, _ := os.ReadFile(p)
			b.Write(d)
		}
		b.WriteByte('\n')
		return nil
	})
	return b.String()
}

func accountsOf(t *testing.T, dir string) string {
	var b strings.Builder
	for _, f := range []string{"etc/passwd", "etc/shadow", "etc/group", "etc/gshadow", "home/admin/.bashrc", "home/admin/.ssh/authorized_keys"} {
		d, err := os.ReadFile(filepath.Join(dir, f))
		must(t, err)
		b.WriteString(f + "\n" + string(d))
	}
	return b.String()
}

// FuzzAddAccount feeds addAccount arbitrary account files (an image's, so untrusted): it
// must not panic, and what it accepts has the user exactly once in passwd and shadow, with
// the uid and gid it reports.
func FuzzAddAccount(f *testing.F) {
	f.Add("root:x:0:0:root:/root:/bin/bash\n", "root:*::::::\n", "root:x:0:\nsudo:x:27:\nshadow:x:42:\n", "sudo:*::\n", "admin")
	f.Add("admin:x:1000:1000:,,,:/home/admin:/bin/bash\n", "admin:!:1::::::\n", "admin:x:1000:\nsudo:x:27:x,y\n", "", "admin")
	f.Add("a\n:::\nadmin\n", "admin\n", "admin:x\nsudo\n", "sudo:::", "admin")
	f.Add("x:x:1000:1000::/home/x:/bin/sh\n", "", "admin:x:1000:\n", "", "admin")
	f.Fuzz(func(t *testing.T, passwd, shadow, group, gshadow, name string) {
		if !userRE.MatchString(name) {
			return
		}
		db := map[string]accountDB{"etc/passwd": parseAccounts([]byte(passwd)), "etc/shadow": parseAccounts([]byte(shadow)),
			"etc/group": parseAccounts([]byte(group))}
		if gshadow != "" {
			db["etc/gshadow"] = parseAccounts([]byte(gshadow))
		}
		a, err := addAccount(db, name, "$6$s$h", "/bin/bash")
		if err != nil {
			return
		}
		pw := parseAccounts(db["etc/passwd"].bytes())
		n := 0
		for _, l := range pw {
			if l[0] == name {
				n++
				if len(l) < 7 || l[2] != strconv.Itoa(a.uid) || l[3] != strconv.Itoa(a.gid) || l[5] != a.home {
					t.Fatalf("passwd entry %q, account %+v", l, a)
				}
			}
		}
		if n != 1 && !strings.Contains(passwd, "\n"+name+":") && !strings.HasPrefix(passwd, name+":") {
			t.Fatalf("user %s %d times in passwd:\n%s", name, n, db["etc/passwd"].bytes())
		}
		if sp := db["etc/shadow"].find(name); sp == nil || sp[1] != "$6$s$h" {
			t.Fatalf("shadow entry %q", sp)
		}
		if a.uid < firstUID || a.uid > lastUID || a.gid < 0 || !strings.HasPrefix(a.home, "/home/") {
			t.Fatalf("account %+v", a)
		}
	})
}
