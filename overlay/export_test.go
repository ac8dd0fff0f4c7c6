package overlay

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Export is held against the kernel: the layer it writes, mounted by the kernel as
// lowerdir=layer:lowers, must show what the kernel shows for lowerdir=upper:lowers (the
// board's view), except under the excluded paths, which must show what lowerdir=lowers
// alone shows (the image's version), or nothing where the board's parent is gone.
// Compared per path: type, mode, owner, size, rdev, data, symlink target, xattrs, mtime
// (ns), and which names share an inode (hard links; nlink must equal their number).

// exportPatterns are drawn from for each seed: names of the generated trees; "DIR/" leaves
// out the files below and keeps the dirs.
var exportPatterns = []string{"/d0/n1", "/d1", "/d2/*", "/*/d3/n2", "/n5", "/d0/d1", "/d3/d*/n*", "/*/*/n0", "/d1/", "/d0/d1/", "/*/d3/", "/d2/*/"}

// TestExportAgainstKernel runs PIFLEET_OVERLAY_SEEDS (default 12) boards of 150 random
// operations through our FS over two generated lowers, then exports their uppers.
func TestExportAgainstKernel(t *testing.T) {
	needRoot(t)
	probeKernelOverlay(t)
	old := unix.Umask(0)
	defer unix.Umask(old)
	if s := os.Getenv("PIFLEET_OVERLAY_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		must(t, err)
		runExport(t, seed)
		return
	}
	for seed := range uint64(envInt("PIFLEET_OVERLAY_SEEDS", 12)) {
		t.Run(fmt.Sprintf("seed=%d", seed+1), func(t *testing.T) { runExport(t, seed+1) })
	}
}

func runExport(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x2545f4914f6cdd1d))
	b := newBed(t, 2)
	for i, l := range b.lowers {
		genLower(t, rng, l, i)
	}
	o := b.open(t)
	ours := snapshotOurs(t, o)
	for range envInt("PIFLEET_OVERLAY_OPS", 150) {
		op := randomOp(rng, ours)
		if op.applyOurs(o) == nil {
			ours = snapshotOurs(t, o)
		}
	}
	var pats []string
	n := 1 + rng.IntN(3)
	if seed%5 == 0 {
		n = 0
	}
	for range n {
		pats = append(pats, exportPatterns[rng.IntN(len(exportPatterns))])
	}
	ex, err := ParseExcludes(pats)
	must(t, err)
	before := treeDigest(t, append([]string{b.upper}, b.lowers...)...)
	layer := filepath.Join(b.dir, "layer")
	must(t, os.Mkdir(layer, 0o700))
	stats, err := Export(b.upper, b.lowers, layer, ex)
	must(t, err)
	t.Logf("excludes %v: %+v", pats, stats)
	if d := exportVsKernel(t, b.dir, b.upper, b.lowers, layer, ex); d != "" {
		t.Fatalf("seed %d excludes %v: the exported layer differs (replay: PIFLEET_OVERLAY_SEED=%d go test ./overlay -run ExportAgainstKernel -v):\n%s", seed, pats, seed, d)
	}
	if treeDigest(t, append([]string{b.upper}, b.lowers...)...) != before {
		t.Fatalf("seed %d: export changed the upper or a lower", seed)
	}
}

// exportVsKernel compares the kernel's view of layer over lowers with the board's view
// minus the excluded paths, and checks the layer's own format.
func exportVsKernel(t *testing.T, dir, upper string, lowers []string, layer string, ex *Excludes) string {
	board := inodeView(t, filepath.Join(dir, "exp-board"), append([]string{upper}, lowers...))
	image := inodeView(t, filepath.Join(dir, "exp-image"), lowers)
	got := inodeView(t, filepath.Join(dir, "exp-layer"), append([]string{layer}, lowers...))
	want := wantView(board, image, ex)
	var diffs []string
	// A dir the layer leaves out (it only held excluded changes) shows the image's times.
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("%s missing from the layer's view: %s", p, w.desc))
			continue
		}
		if w.desc[0] == 'd' && w.mtime != g.mtime {
			if _, err := os.Lstat(layer + p); err != nil && image[p].mtime == g.mtime {
				w.mtime = g.mtime
			}
		}
		if g.desc != w.desc || g.mtime != w.mtime {
			diffs = append(diffs, fmt.Sprintf("%s:\n  layer %s %s\n  want  %s %s", p, g.desc, g.mtime, w.desc, w.mtime))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s only in the layer's view: %s", p, g.desc))
		}
	}
	diffs = append(diffs, compareLinks(want, got)...)
	diffs = append(diffs, checkLayerFormat(t, layer, ex)...)
	var ust, lst unix.Stat_t
	must(t, unix.Lstat(upper, &ust))
	must(t, unix.Lstat(layer, &lst))
	if ust.Mode != lst.Mode || ust.Uid != lst.Uid || ust.Gid != lst.Gid || ust.Mtim != lst.Mtim {
		diffs = append(diffs, fmt.Sprintf("layer root %o %d:%d %v, upper root %o %d:%d %v", lst.Mode, lst.Uid, lst.Gid, lst.Mtim, ust.Mode, ust.Uid, ust.Gid, ust.Mtim))
	}
	sort.Strings(diffs)
	return strings.Join(diffs, "\n")
}

// wantView is what the layer over the image must show: the board's view where the layer
// takes the board's path, and below an excluded path (a left-out non-dir or deletion, or
// a whole excluded subtree) the image's own view, as long as the parent shows as a dir.
func wantView(board, image map[string]viewEntry, ex *Excludes) map[string]viewEntry {
	var paths []string
	for p := range board {
		paths = append(paths, p)
	}
	for p := range image {
		if _, ok := board[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths) // parents first
	const fromBoard, fromImage = 'b', 'i'
	from := map[string]byte{"/": fromBoard} // the dirs of the wanted view
	want := map[string]viewEntry{}
	for _, p := range paths {
		b, inBoard := board[p]
		i, inImage := image[p]
		var e viewEntry
		switch from[path.Dir(p)] {
		case fromImage:
			if !inImage {
				continue
			}
			e = i
			e.group = "i" + e.group
		case fromBoard:
			bDir := inBoard && b.desc[0] == 'd'
			switch {
			case inBoard && !ex.Match(p, bDir):
				e = b
				e.group = "b" + e.group
			case inImage && ex.Match(p, bDir):
				e = i
				e.group = "i" + e.group
			default:
				continue
			}
		default:
			continue
		}
		want[p] = e
		if e.desc[0] == 'd' {
			from[p] = e.group[0]
		}
	}
	return want
}

// compareLinks checks that the same names share an inode in both views, and that the
// layer's nlink counts exactly those names (a lower file has no other links here).
func compareLinks(want, got map[string]viewEntry) []string {
	group := func(v map[string]viewEntry) map[string][]string {
		g := map[string][]string{}
		for p, e := range v {
			if e.desc[0] != 'd' {
				g[e.group] = append(g[e.group], p)
			}
		}
		return g
	}
	wg, gg := group(want), group(got)
	var diffs []string
	for p, e := range want {
		if e.desc[0] == 'd' {
			continue
		}
		w := wg[e.group]
		g := gg[got[p].group]
		sort.Strings(w)
		sort.Strings(g)
		if strings.Join(w, " ") != strings.Join(g, " ") {
			diffs = append(diffs, fmt.Sprintf("%s: links %v in the layer's view, want %v", p, g, w))
		}
		if e, ok := got[p]; ok && e.nlink != uint64(len(g)) {
			diffs = append(diffs, fmt.Sprintf("%s: nlink %d, %d names", p, e.nlink, len(g)))
		}
	}
	return diffs
}

// checkLayerFormat lists what the layer must not hold: excluded paths (whiteouts
// included), whiteouts other than 0/0, private xattrs other than opaque=y.
func checkLayerFormat(t *testing.T, layer string, ex *Excludes) []string {
	var bad []string
	must(t, filepath.WalkDir(layer, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == layer {
			return err
		}
		rel := "/" + strings.TrimPrefix(p, layer+"/")
		var st unix.Stat_t
		must(t, unix.Lstat(p, &st))
		if ex.Match(rel, d.IsDir()) {
			bad = append(bad, rel+": excluded, but in the layer")
		}
		if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 && (st.Mode&0o7777 != 0 || st.Uid != 0) {
			bad = append(bad, fmt.Sprintf("%s: whiteout %o %d", rel, st.Mode, st.Uid))
		}
		names, err := listXattrs(p)
		must(t, err)
		for _, n := range names {
			if !privateXattr(n) {
				continue
			}
			if v, _ := getXattr(p, n); n != xattrOpaque || string(v) != "y" {
				bad = append(bad, fmt.Sprintf("%s: xattr %s=%q", rel, n, v))
			}
		}
		return nil
	}))
	return bad
}

// viewEntry is one path of a kernel mount.
type viewEntry struct {
	desc  string // describe(): type, mode, owner, size, rdev, target, data, xattrs
	mtime string
	group string // the inode (names sharing it are hard links)
	nlink uint64
}

// inodeView mounts layers (topmost first) read-only with the kernel and describes every
// path.
func inodeView(t *testing.T, mnt string, layers []string) map[string]viewEntry {
	if len(layers) == 1 {
		empty := mnt + "-empty"
		must(t, os.MkdirAll(empty, 0o755))
		layers = append(layers, empty)
	}
	must(t, os.MkdirAll(mnt, 0o755))
	must(t, unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(layers, ":")+",xino=off"))
	defer func() { must(t, unix.Unmount(mnt, 0)) }()
	view := map[string]viewEntry{}
	for p, d := range snapshotDir(t, mnt) {
		var st unix.Stat_t
		must(t, unix.Lstat(filepath.Join(mnt, p), &st))
		// nlink is compared as link groups: the board's counts excluded names too
		d = strings.Replace(d, fmt.Sprintf(" nlink=%d ", st.Nlink), " ", 1)
		view["/"+p] = viewEntry{desc: d, mtime: fmt.Sprintf("%d.%09d", st.Mtim.Sec, st.Mtim.Nsec),
			group: strconv.FormatUint(st.Ino, 10), nlink: st.Nlink}
	}
	return view
}

// TestExportKeepsEverything: one scripted board with every kind of object and metadata,
// the default-like excludes, an opaque dir kept and one turned into whiteouts, hard links
// with a name excluded, a sparse file.
func TestExportKeepsEverything(t *testing.T) {
	probeKernelOverlay(t)
	b := newBed(t, 2)
	img, base := b.lowers[0], b.lowers[1]
	for _, f := range []string{"etc/hostname", "etc/machine-id", "etc/passwd", "etc/ssh/ssh_host_ed25519_key", "etc/ssh/sshd_config",
		"var/log/syslog", "var/log/apt/history.log", "tmp/x", "opt/app/old", "opt/app/keep", "opt/app/sub/f", "srv/old/f", "usr/bin/ping", "usr/share/doc/a"} {
		put(t, base, f, "base "+f, 0o644)
	}
	put(t, img, "etc/motd", "image motd", 0o644)
	must(t, unix.Mknod(filepath.Join(img, "etc/passwd"), unix.S_IFCHR, 0)) // the image layer deleted it
	o := b.open(t)
	write := func(name, data string, mode os.FileMode) {
		f, err := o.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
		must(t, err)
		_, err = f.Write([]byte(data))
		must(t, err)
		must(t, f.Close())
	}
	write("etc/machine-id", "board's own", 0o444)
	write("etc/ssh/ssh_host_ed25519_key", "secret", 0o600)
	write("etc/app.conf", "new", 0o640)
	must(t, o.Lchown("etc/app.conf", 0, 42))
	must(t, o.Remove("etc/hostname"))                     // excluded: no whiteout in the layer
	must(t, o.Remove("var/log/syslog"))                   // under an excluded dir
	must(t, o.Remove("usr/share/doc/a"))                  // whiteout
	must(t, o.Remove("usr/share/doc"))                    // ... then the dir's
	must(t, o.Chmod("usr/bin/ping", os.ModeSetuid|0o755)) // setuid kept
	must(t, o.Setxattr("usr/bin/ping", "security.capability", capNetRaw, 0))
	must(t, o.Setxattr("etc/app.conf", "system.posix_acl_access", aclUser1000, 0))
	must(t, o.Setxattr("etc/app.conf", "user.note", []byte("x"), 0))
	// /opt/app deleted and made again: opaque in the upper and in the layer
	for _, p := range []string{"opt/app/old", "opt/app/keep", "opt/app/sub/f", "opt/app/sub", "opt/app"} {
		must(t, o.Remove(p))
	}
	must(t, o.Mkdir("opt/app", 0o750))
	must(t, o.Mkdir("opt/app/sub", 0o755)) // as in the base, but empty: must stay in the layer
	write("opt/app/keep", "mine", 0o644)
	// /var deleted and made again: opaque, but /var/log is excluded below it
	must(t, o.Remove("var/log/apt/history.log"))
	must(t, o.Remove("var/log/apt"))
	must(t, o.Remove("var/log"))
	must(t, o.Remove("var"))
	must(t, o.Mkdir("var", 0o755))
	must(t, o.Mkdir("var/lib", 0o755))
	write("var/lib/state", "s", 0o644)
	must(t, o.Mkdir("var/log", 0o700)) // the board's own /var/log: kept, its files left out
	write("var/log/boot.log", "boot", 0o644)
	must(t, o.Mkdir("var/log/foo", 0o750)) // a package's log dir: in the layer, empty
	must(t, o.Lchown("var/log/foo", 7, 4))
	must(t, o.Setxattr("var/log/foo", "user.note", []byte("log"), 0))
	write("var/log/foo/foo.log", "log", 0o640)
	// hard links, one of them excluded
	must(t, o.MkdirAll("srv", 0o755))
	write("srv/data", "linked", 0o644)
	must(t, o.Link("srv/data", "srv/data2"))
	must(t, o.Link("srv/data", "tmp/data3"))
	must(t, o.Symlink("../srv/data", "etc/datalink"))
	must(t, o.Mknod("srv/blk", unix.S_IFBLK|0o660, unix.Mkdev(8, 1)))
	must(t, o.Mknod("srv/fifo", unix.S_IFIFO|0o644, 0))
	must(t, o.Link("srv/fifo", "srv/fifo2")) // a hard link that is no regular file
	// sparse: 1 MiB of data at 64 MiB
	f, err := o.OpenFile("srv/sparse", os.O_WRONLY|os.O_CREATE, 0o644)
	must(t, err)
	_, err = f.WriteAt(make([]byte, 1<<20), 64<<20)
	must(t, err)
	must(t, f.Close())
	must(t, o.Remove("srv/old/f")) // an excluded dir deleted: its whiteout is left out too
	must(t, o.Remove("srv/old"))
	must(t, o.Chtimes("srv/data", time.Unix(100, 123456789), time.Unix(200, 987654321)))

	ex, err := ParseExcludes([]string{"/etc/hostname", "/etc/machine-id", "/etc/ssh/ssh_host_*", "/var/log/", "/tmp", "/srv/old"})
	must(t, err)
	layer := filepath.Join(b.dir, "layer")
	must(t, os.Mkdir(layer, 0o700))
	stats, err := Export(b.upper, b.lowers, layer, ex)
	must(t, err)
	t.Logf("%+v", stats)
	if d := exportVsKernel(t, b.dir, b.upper, b.lowers, layer, ex); d != "" {
		t.Fatalf("the exported layer differs:\n%s", d)
	}
	for _, p := range []string{"etc/hostname", "etc/machine-id", "etc/ssh/ssh_host_ed25519_key", "var/log/boot.log", "var/log/foo/foo.log", "var/log/syslog", "var/log/apt", "tmp", "srv/old"} {
		if _, err := os.Lstat(filepath.Join(layer, p)); err == nil {
			t.Errorf("%s is excluded but in the layer", p)
		}
	}
	if st := lstatRaw(t, filepath.Join(layer, "var/log/foo")); st.Mode != unix.S_IFDIR|0o750 || st.Uid != 7 || st.Gid != 4 {
		t.Errorf("/var/log/foo: mode %o owner %d:%d, want the board's dir 750 7:4", st.Mode, st.Uid, st.Gid)
	} else if v, err := getXattr(filepath.Join(layer, "var/log/foo"), "user.note"); err != nil || string(v) != "log" {
		t.Errorf("/var/log/foo lost its xattr: %q %v", v, err)
	}
	if st := lstatRaw(t, filepath.Join(layer, "var/log")); st.Mode != unix.S_IFDIR|0o700 || isOpaque(filepath.Join(layer, "var/log")) {
		t.Errorf("/var/log: mode %o opaque %v, want the board's 700, not opaque (the image's logs show)", st.Mode, isOpaque(filepath.Join(layer, "var/log")))
	}
	if !isOpaque(filepath.Join(layer, "opt/app")) {
		t.Error("/opt/app: not opaque in the layer")
	}
	if isOpaque(filepath.Join(layer, "var")) {
		t.Error("/var: opaque in the layer, so the image's /var/log would not show")
	}
	st := lstatRaw(t, filepath.Join(layer, "usr/share/doc"))
	if !isWhiteout(st) {
		t.Errorf("/usr/share/doc: %o, want a whiteout", st.Mode)
	}
	if st := lstatRaw(t, filepath.Join(layer, "srv/sparse")); st.Blocks*512 > 2<<20 {
		t.Errorf("sparse file takes %d bytes in the layer", st.Blocks*512)
	}
	if st := lstatRaw(t, filepath.Join(layer, "srv/data")); st.Nlink != 2 || st.Mtim.Nsec != 987654321 {
		t.Errorf("srv/data: nlink %d mtime %v", st.Nlink, st.Mtim)
	}
	if v, err := getXattr(filepath.Join(layer, "usr/bin/ping"), "security.capability"); err != nil || string(v) != string(capNetRaw) {
		t.Errorf("ping capability %x %v", v, err)
	}
	if st := lstatRaw(t, filepath.Join(layer, "usr/bin/ping")); st.Mode&07777 != 04755 {
		t.Errorf("ping mode %o", st.Mode)
	}
	if _, err := os.Lstat(filepath.Join(layer, "etc/passwd")); err == nil {
		t.Error("etc/passwd: the board never had it, the layer must not mention it")
	}
}

// capNetRaw is a VFS_CAP_REVISION_2 security.capability value granting cap_net_raw (13),
// as setcap cap_net_raw+ep writes it.
var capNetRaw = []byte{0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// aclUser1000 is a system.posix_acl_access value: user::rw-, user:1000:r--, group::r--,
// mask::r--, other::---.
var aclUser1000 = []byte{
	2, 0, 0, 0,
	1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff,
	2, 0, 4, 0, 0xe8, 3, 0, 0,
	4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,
	0x10, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,
	0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
}

func TestParseExcludes(t *testing.T) {
	for _, bad := range []string{"", "etc", "/", "/etc//x", "/etc/../x", "/a/[", "/./a"} {
		if _, err := ParseExcludes([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	ex, err := ParseExcludes([]string{"/etc/ssh/ssh_host_*", "/var/lib/dhcp", "/home/*/.cache", "/var/log/", "/srv/*/tmp/"})
	must(t, err)
	for p, want := range map[string]bool{
		"/etc/ssh/ssh_host_rsa_key": true, "/etc/ssh/sshd_config": false, "/etc/ssh": false,
		"/var/lib/dhcp": true, "/var/lib/dhcp/x/y": true, "/var/lib/dhcpcd": false, "/var": false,
		"/home/pi/.cache/x": true, "/home/pi/.config": false,
		"/var/log/syslog": true, "/var/log/apt/history.log": true, "/var/log": false, "/var/logs/x": false,
		"/srv/a/tmp/x": true, "/srv/a/tmp": false,
	} {
		for _, dir := range []bool{false, true} {
			w := want && !(dir && strings.HasPrefix(p, "/var/log/") || dir && strings.HasPrefix(p, "/srv/"))
			if ex.Match(p, dir) != w {
				t.Errorf("Match(%s, dir %v) = %v", p, dir, !w)
			}
		}
	}
	for p, want := range map[string]bool{"/": true, "/etc": true, "/etc/ssh": true, "/usr": false, "/home/x": true, "/var/lib/dhcp": false,
		"/var/log": true, "/var/log/apt/x": true, "/var/logs": false, "/srv/a": true, "/srv/a/tmp/b": true, "/srv/a/b": false} {
		if ex.Below(p) != want {
			t.Errorf("Below(%s) = %v", p, !want)
		}
	}
}

// FuzzExcludes: any pattern is accepted or refused without panicking; an accepted one is
// absolute and clean, and Match and Below never panic on any path. "DIR" leaves out DIR
// and all below it; "DIR/" the non-dirs below DIR, not DIR nor a dir below it.
func FuzzExcludes(f *testing.F) {
	for _, s := range []string{"/etc/ssh/ssh_host_*", "/var/log", "/var/log/", "/home/*/.cache/", "/a/[b-c]?", "relative", "/a//b", "/[", "/\\", "//", "/a/b//"} {
		f.Add(s, "/etc/ssh/ssh_host_rsa_key")
	}
	f.Fuzz(func(t *testing.T, pat, p string) {
		ex, err := ParseExcludes([]string{pat})
		if err != nil {
			return
		}
		if !strings.HasPrefix(pat, "/") || strings.Contains(pat, "//") || strings.Contains(pat+"/", "/../") || strings.Contains(pat+"/", "/./") {
			t.Fatalf("accepted %q", pat)
		}
		ex.Match(p, false)
		ex.Match(p, true)
		ex.Below(p)
		if strings.ContainsAny(pat, "*?[\\") {
			return
		}
		dir, files := strings.CutSuffix(pat, "/")
		if ex.Match(dir, false) == files || ex.Match(dir, true) == files {
			t.Fatalf("%q: Match(%q) wrong", pat, dir)
		}
		if !ex.Match(dir+"/below", false) || ex.Match(dir+"/below", true) == files || !ex.Below(dir) == files {
			t.Fatalf("%q: wrong for what is below it", pat)
		}
	})
}
