package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/require"
	"golang.org/x/sys/unix"
)

// needRoot skips tests that create device nodes, chown files or set security.* xattrs.
func needRoot(t testing.TB) {
	t.Helper()
	require.Root(t, "creates device nodes, chowns files and sets security.capability (CI runs as root)")
}

func needTool(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			require.Missing(t, fmt.Sprintf("needs %s (apt-get install e2fsprogs dosfstools mtools fdisk xz-utils acl)", n))
		}
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// longTarget is longer than the 60 bytes ext4 keeps inside the inode, so the symlink needs
// a data block.
var longTarget = "/usr/lib/" + strings.Repeat("very-long-directory-name/", 8) + "target"

// capability is a real security.capability value (cap_net_raw=ep, VFS_CAP_REVISION_2), as on
// Pi OS's /usr/bin/ping.
var capability = []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}

// fixtureTree builds a root tree holding every kind of object an image must keep: setuid and
// setgid files, a sticky dir, a hard-link pair, a long symlink, char/block devices, a fifo,
// xattrs incl. security.capability, odd owners, a sparse file and a large (htree) directory.
func fixtureTree(t testing.TB, dir string, bigDir int) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mk := func(p string, mode os.FileMode, data string) string {
		full := filepath.Join(dir, p)
		must(os.MkdirAll(filepath.Dir(full), 0o755))
		must(os.WriteFile(full, []byte(data), 0o644))
		must(os.Chmod(full, mode))
		return full
	}
	needTool(t, "setfacl")
	must(os.MkdirAll(filepath.Join(dir, "etc"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "boot/firmware"), 0o755))
	mk("etc/hostname", 0o644, "raspberrypi\n")
	mk("etc/fstab", 0o644, "proc            /proc           proc    defaults          0       0\n"+
		"PARTUUID=1234abcd-01  /boot/firmware  vfat    defaults          0       2\n"+
		"PARTUUID=1234abcd-02  /               ext4    defaults,noatime  0       1\n")
	mk("lib/systemd/system/dphys-swapfile.service", 0o644, "[Service]\nExecStart=/sbin/dphys-swapfile swapon\n")
	mk("etc/init.d/resize2fs_once", 0o755, "#!/bin/sh\n")
	mk("etc/NetworkManager/NetworkManager.conf", 0o644, "[main]\nplugins=ifupdown,keyfile\n")
	su := mk("usr/bin/sudo", 0o755, "#!/bin/sh\necho sudo\n")
	must(unix.Chmod(su, 0o4755))
	sg := mk("usr/bin/wall", 0o755, "wall\n")
	must(os.Chown(sg, 0, 5))
	must(unix.Chmod(sg, 0o2755))
	ping := mk("usr/bin/ping", 0o755, "ping binary\n")
	must(unix.Setxattr(ping, "security.capability", capability, 0))
	must(unix.Setxattr(ping, "user.pifleet.note", []byte("hello"), 0))
	must(os.MkdirAll(filepath.Join(dir, "tmp"), 0o755))
	must(unix.Chmod(filepath.Join(dir, "tmp"), 0o1777))
	must(os.MkdirAll(filepath.Join(dir, "home/pi"), 0o750))
	must(os.Chown(filepath.Join(dir, "home/pi"), 1000, 1000))
	hl := mk("usr/bin/perl5.36", 0o755, "perl interpreter\n")
	must(os.Link(hl, filepath.Join(dir, "usr/bin/perl")))
	must(os.MkdirAll(filepath.Join(dir, "usr/lib"), 0o755))
	must(os.Symlink(longTarget, filepath.Join(dir, "usr/lib/long-link")))
	must(os.Symlink("sudo", filepath.Join(dir, "usr/bin/short-link")))
	must(os.MkdirAll(filepath.Join(dir, "dev"), 0o755))
	must(unix.Mknod(filepath.Join(dir, "dev/console"), unix.S_IFCHR|0o600, int(unix.Mkdev(5, 1))))
	must(unix.Mknod(filepath.Join(dir, "dev/mmcblk0"), unix.S_IFBLK|0o660, int(unix.Mkdev(179, 0))))
	must(unix.Mkfifo(filepath.Join(dir, "dev/initctl"), 0o600))
	// sparse: data, a 3 MiB hole, data, and a hole at the end
	sp, err := os.Create(filepath.Join(dir, "var/swap-like"))
	if os.IsNotExist(err) {
		must(os.MkdirAll(filepath.Join(dir, "var"), 0o755))
		sp, err = os.Create(filepath.Join(dir, "var/swap-like"))
	}
	must(err)
	_, err = sp.WriteAt(bytes.Repeat([]byte("A"), 10000), 0)
	must(err)
	_, err = sp.WriteAt(bytes.Repeat([]byte("B"), 5000), 3<<20)
	must(err)
	must(sp.Truncate(5 << 20))
	must(sp.Close())
	// 24 data islands between holes: more extents than the inode holds, so ext4 needs an
	// extent tree with an index level
	me, err := os.Create(filepath.Join(dir, "var/many-extents"))
	must(err)
	for i := 0; i < 24; i++ {
		_, err = me.WriteAt(bytes.Repeat([]byte{byte('a' + i)}, 4096), int64(i)*64<<10)
		must(err)
	}
	must(me.Close())
	// POSIX ACLs as systemd leaves them on the journal (tmpfiles.d: group adm may read it),
	// a shared dir whose default ACL names a user and a group, and a file whose mask widens
	// the group class beyond the owning group's entry
	mk("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000::/home/pi:/bin/bash\n")
	mk("etc/group", 0o644, "root:x:0:\nadm:x:4:pi\nsystemd-journal:x:101:\npi:x:1000:\n")
	jf := mk("var/log/journal/0123456789abcdef/system.journal", 0o640, "journal\n")
	must(os.Chown(filepath.Dir(filepath.Dir(jf)), 0, 101))
	must(unix.Chmod(filepath.Dir(filepath.Dir(jf)), 0o2755))
	must(os.MkdirAll(filepath.Join(dir, "srv/shared"), 0o775))
	acl := mk("srv/shared/notes", 0o640, "notes\n")
	for _, c := range [][]string{
		{"-m", "g:4:r-x", filepath.Dir(filepath.Dir(jf))},
		{"-d", "-m", "g::r-x,g:4:r-x,o::r-x", filepath.Dir(filepath.Dir(jf))},
		{"-m", "g:4:r--", jf},
		{"-m", "u:1234:rwx,g:4321:rwx", filepath.Join(dir, "srv/shared")},
		{"-d", "-m", "u:1234:rwx,g:4321:r-x,m::rwx", filepath.Join(dir, "srv/shared")},
		{"-m", "u:1234:rw-", acl},
	} {
		if out, err := exec.Command("setfacl", c...).CombinedOutput(); err != nil {
			t.Fatalf("setfacl %v: %v %s", c, err, out)
		}
	}
	// a file with a name that needs quoting in the manifest
	mk("usr/share/doc/odd\tname\nwith newline", 0o644, "odd\n")
	for i := 0; i < bigDir; i++ {
		mk(fmt.Sprintf("usr/share/big/file-%05d.txt", i), 0o644, fmt.Sprintf("file %d\n", i))
	}
	// fixed mtimes, deepest first so parents keep theirs
	var paths []string
	must(filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	}))
	for i := len(paths) - 1; i >= 0; i-- {
		ts := unix.NsecToTimespec(time.Date(2024, 11, 19, 10, 0, i%60, 123456789, time.UTC).UnixNano())
		must(unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// aclPaths are the fixture's paths that carry POSIX ACLs.
var aclPaths = []string{"var/log/journal", "var/log/journal/0123456789abcdef/system.journal", "srv/shared", "srv/shared/notes"}

// compareACLs compares what getfacl (the acl package's own reader) says of the fixture's ACL'd
// paths in two trees.
func compareACLs(t testing.TB, src, dst string) {
	t.Helper()
	needTool(t, "getfacl")
	getfacl := func(root string) string {
		cmd := exec.Command("getfacl", append([]string{"-n", "-P"}, aclPaths...)...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("getfacl in %s: %v\n%s", root, err, out)
		}
		return string(out)
	}
	want, got := getfacl(src), getfacl(dst)
	if !strings.Contains(want, "default:group:4:r-x") || !strings.Contains(want, "user:1234:rw-") {
		t.Fatalf("fixture has no ACLs:\n%s", want)
	}
	if got != want {
		t.Errorf("ACLs differ after import:\n--- source\n%s--- imported\n%s", want, got)
	}
}

// snapshot describes a tree for comparison: every attribute the import must keep.
type snapshot map[string]string

func takeSnapshot(t testing.TB, root string, skip func(string) bool) snapshot {
	t.Helper()
	s := snapshot{}
	err := walkDir(context.Background(), root, func(e *entry) error {
		if skip != nil && skip(e.Path) {
			return nil
		}
		if e.LinkTo != "" {
			s[e.Path] = "hardlink to " + e.LinkTo
			return nil
		}
		desc := fmt.Sprintf("mode=%o uid=%d gid=%d", e.Mode, e.UID, e.GID)
		if e.Mode&typeMask != typeDir {
			desc += fmt.Sprintf(" mtime=%d", e.Mtime.UnixNano())
		}
		switch e.Mode & typeMask {
		case typeReg:
			r, err := e.Open()
			if err != nil {
				return err
			}
			h := sha256.New()
			n, err := io.Copy(h, r)
			r.Close()
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" size=%d sha=%s", n, hex.EncodeToString(h.Sum(nil))[:16])
		case typeLnk:
			desc += " target=" + e.Target
		case typeChr, typeBlk:
			desc += fmt.Sprintf(" dev=%d:%d", e.Major, e.Minor)
		}
		for _, k := range sortedKeys(e.Xattrs) {
			desc += fmt.Sprintf(" xattr[%s]=%x", k, e.Xattrs[k])
		}
		s[e.Path] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sortedKeys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func compareSnapshots(t testing.TB, want, got snapshot) {
	t.Helper()
	bad := 0
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			t.Errorf("/%s missing after import (want %s)", p, w)
			bad++
		case g != w:
			t.Errorf("/%s differs:\n want %s\n  got %s", p, w, g)
			bad++
		}
		if bad > 20 {
			t.Fatal("too many differences")
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("/%s appeared after import: %s", p, g)
		}
	}
}

// dirMtimes checks directory mtimes separately: they are set last, after children exist.
func dirMtimes(t testing.TB, src, dst string, skip func(string) bool) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "." {
			rel = ""
		}
		if skip != nil && skip(rel) {
			return nil
		}
		d, err := os.Lstat(filepath.Join(dst, rel))
		if err != nil {
			return err
		}
		if !d.ModTime().Equal(fi.ModTime()) {
			t.Errorf("dir /%s mtime %v, want %v", rel, d.ModTime(), fi.ModTime())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func runErr(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func execIn(stdin, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func execOut(w io.Writer, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout = w
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %v: %s", name, err, stderr.String())
	}
	return nil
}
