package server

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/overlay"
	"github.com/pifleet/pifleet/test/netns"
	"github.com/pifleet/pifleet/test/require"
	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
	"golang.org/x/sys/unix"
)

// storeImage puts the tree root into the state dir's image store as image name (one layer).
func storeImage(t *testing.T, state, name, root string) *images.Store {
	t.Helper()
	st, err := images.OpenStore(filepath.Join(state, "images"))
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := st.TempDir("test")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", root+"/.", tmp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	l, err := st.AddLayer(tmp, "test root")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateImage(name, "", []string{l.Digest}, images.ImageMeta{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	return st
}

// startStoreServer is startServer with image img in the state dir's store (so boards can
// be committed over it) and extra server: lines.
func startStoreServer(t *testing.T, boards, serverExtra string) *testServer {
	t.Helper()
	dir := t.TempDir()
	ports := freePorts(t, 4)
	state := filepath.Join(dir, "state")
	storeImage(t, state, "img", testImage(t))
	ts := &testServer{t: t, cfgPath: filepath.Join(dir, "fleet.yaml"), tftp: ports[0], logs: &netns.LogBuffer{}, done: make(chan error, 1)}
	y := fmt.Sprintf("server:\n  address: 127.0.0.100/8\n  state: %s\n  dhcp: {mode: off}\n  ports: {tftp: %d, nfs: %d, mount: %d, http: %d, portmap: 0}\n%s"+
		"images:\n  img: {}\ndefaults: {image: img, cmdline: quiet}\nboards:\n%s", state, ports[0], ports[1], ports[2], ports[3], serverExtra, boards)
	if err := os.WriteFile(ts.cfgPath, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	ts.start()
	t.Cleanup(ts.stop)
	return ts
}

// TestCommitWhileMounted: a board with its root mounted (a real NFS client) is not
// committed unless forced; the forced commit makes an image whose new layer has the
// board's file and not its identity or logs (its new log dir, empty), and the board is
// not disturbed.
func TestCommitWhileMounted(t *testing.T) {
	needRoot(t)
	ts := startStoreServer(t, "  - {name: alpha, mac: '02:00:00:00:00:01', serial: '000abc00', ip: 127.0.0.1}\n",
		"  commit: {exclude: [/srv/cache]}\n")
	mc, err := dialMount(ts.srv.cfg.Server.Ports.Mount)
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	m := &nfsc.Mount{Client: mc}
	auth := rpc.AuthUnix{Machinename: "alpha", GidLen: 1}
	v, err := m.Mount("/boards/alpha", auth.Auth())
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	for _, f := range []struct{ name, data string }{{"etc/app.conf", "kiosk=1\n"}, {"etc/hostname", "renamed\n"}} {
		w, err := v.OpenFile(f.name, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(w, f.data)
		w.Close()
	}
	for _, d := range []string{"srv", "srv/cache", "var", "var/log"} {
		if _, err := v.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"srv/cache/blob", "var/log/syslog"} {
		w, err := v.OpenFile(f, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(w, "x")
		w.Close()
	}
	upper := ts.srv.state.Upper("alpha")
	before := treeSum(t, upper)
	post := func(q string) (int, string) {
		resp, err := ts.post("/api/boards/alpha/commit"+q, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := post("?as=kiosk"); code != http.StatusConflict || !strings.Contains(body, "--force") {
		t.Fatalf("commit of a mounted board: HTTP %d %s, want 409", code, body)
	}
	if ts.srv.store.Exists("kiosk") {
		t.Fatal("a refused commit made the image")
	}
	code, body := post("?as=kiosk&force=1")
	if code != http.StatusOK {
		t.Fatalf("forced commit: HTTP %d %s", code, body)
	}
	var res CommitResult
	if err := json.Unmarshal([]byte(body), &res); err != nil {
		t.Fatal(err)
	}
	if res.Image != "kiosk" || res.Base != "img" || len(res.Layer) != 64 || res.Excluded == 0 {
		t.Errorf("result %+v", res)
	}
	if code, body := post("?as=kiosk&force=1"); code != http.StatusBadRequest || !strings.Contains(body, "exists") {
		t.Errorf("commit over an existing image: HTTP %d %s", code, body)
	}
	if _, _, err := v.Lookup("etc/app.conf"); err != nil {
		t.Errorf("the commit disturbed the board: %v", err)
	}
	if after := treeSum(t, upper); after != before {
		t.Error("the commit changed the board's upper")
	}
	layers, err := ts.srv.store.Layers("kiosk")
	if err != nil {
		t.Fatal(err)
	}
	base, _ := ts.srv.store.Layers("img")
	if len(layers) != len(base)+1 || !slices.Equal(layers[1:], base) {
		t.Fatalf("kiosk's layers %v, img's %v", layers, base)
	}
	top := layers[0]
	if b, err := os.ReadFile(filepath.Join(top, "etc/app.conf")); err != nil || string(b) != "kiosk=1\n" {
		t.Errorf("etc/app.conf in the layer: %q %v", b, err)
	}
	for _, p := range []string{"etc/hostname", "etc/machine-id", "etc/ssh", "srv/cache", "var/log/syslog"} {
		if _, err := os.Lstat(filepath.Join(top, p)); err == nil {
			t.Errorf("%s is per board, volatile or excluded in fleet.yaml, but in the layer", p)
		}
	}
	if fi, err := os.Lstat(filepath.Join(top, "var/log")); err != nil || !fi.IsDir() {
		t.Errorf("var/log, the board's new dir, is not in the layer as a dir: %v", err)
	}
}

// TestCommitAgainstKernel: a board changed through its overlay (identity layer over a
// stored image, as the server stacks it) is committed offline with the default excludes;
// the kernel mounting the new image's layers shows what the kernel shows for the board's
// upper over the image, except that every excluded path shows the image's version.
func TestCommitAgainstKernel(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	img := testImage(t)
	files := map[string]string{
		"etc/hostname": "image\n", "etc/machine-id": "", "etc/passwd": "root:x:0:0::/root:/bin/sh\n",
		"var/log/dpkg.log": "image log\n", "var/lib/dpkg/status": "Package: base\n",
		"usr/share/doc/a/copyright": "a", "usr/share/doc/b/copyright": "b", "opt/app/old.conf": "old",
		"usr/lib/userconf-pi/userconf": "#!/bin/sh\n", // Pi OS: the identity writes userconf.txt, keys, sshd drop-in
	}
	for rel, data := range files {
		must(t, os.MkdirAll(filepath.Join(img, filepath.Dir(rel)), 0o755))
		must(t, os.WriteFile(filepath.Join(img, rel), []byte(data), 0o644))
	}
	state := filepath.Join(dir, "state")
	store := storeImage(t, state, "img", img)
	cfgPath := filepath.Join(dir, "fleet.yaml")
	must(t, os.WriteFile(cfgPath, []byte(fmt.Sprintf("server: {state: %s, commit: {exclude: ['/srv/*/cache']}}\nimages: {img: {}}\n"+
		"boards:\n  - {name: pi-01, serial: '12345678', image: img, user: {name: kiosk, ssh_keys: ['ssh-ed25519 AAAAC3Nza k@x']}}\n", state)), 0o644))
	cfg, _, err := Load(cfgPath)
	must(t, err)
	st := State{Dir: state}
	imgLowers, err := store.Layers("img")
	must(t, err)
	must(t, images.WriteIdentity(st.Identity("pi-01"), images.Identity{Hostname: "pi-01", Serial: "12345678", User: "kiosk",
		AuthorizedKeys: []string{"ssh-ed25519 AAAAC3Nza k@x"}, Image: imgLowers}))
	lowers := append([]string{st.Identity("pi-01")}, imgLowers...)
	o, err := overlay.New(overlay.Options{Upper: st.Upper("pi-01"), Work: st.Work("pi-01"), Lowers: lowers})
	must(t, err)
	write := func(name, data string) {
		must(t, o.MkdirAll(filepath.Dir(name), 0o755))
		f, err := o.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		must(t, err)
		_, err = f.Write([]byte(data))
		must(t, err)
		must(t, f.Close())
	}
	write("etc/hostname", "changed by the board\n")
	write("etc/machine-id", "0123\n")
	write("etc/ssh/ssh_host_ed25519_key", "board key")
	write("etc/ssh/authorized_keys/kiosk", "more keys")
	write("boot/firmware/userconf.txt", "x")
	write("etc/passwd", "root:x:0:0::/root:/bin/sh\nsvc:x:100:100::/:/bin/false\n")
	write("var/lib/dpkg/status", "Package: base\n\nPackage: kiosk\n")
	write("var/lib/systemd/random-seed", "seed")
	write("var/log/kiosk.log", "log")
	must(t, o.Mkdir("var/log/kiosk", 0o750)) // a package's log dir: kept, empty
	must(t, o.Lchown("var/log/kiosk", 7, 4))
	write("var/log/kiosk/kiosk.log", "log")
	write("tmp/x", "tmp")
	write("srv/app/cache/blob", "cached")
	write("srv/app/data", "kept")
	write("home/kiosk/.bash_history", "ls")
	write("home/kiosk/.config/kiosk.ini", "url=x")
	must(t, o.Remove("boot/firmware/ssh")) // as Pi OS's sshswitch does: identity's, excluded
	must(t, o.Remove("usr/share/doc/a/copyright"))
	must(t, o.Remove("usr/share/doc/a"))
	for _, p := range []string{"opt/app/old.conf", "opt/app"} {
		must(t, o.Remove(p))
	}
	must(t, o.Mkdir("opt/app", 0o755))
	write("opt/app/new.conf", "new")
	must(t, o.Remove("var/log/dpkg.log"))
	upperSum := treeSum(t, st.Upper("pi-01"))

	res, err := OfflineCommit(cfg, "pi-01", "kiosk")
	must(t, err)
	if treeSum(t, st.Upper("pi-01")) != upperSum {
		t.Error("the commit changed the board's upper")
	}
	stack, err := store.Layers("kiosk")
	must(t, err)
	ex, err := overlay.ParseExcludes(LayerExcludes(cfg))
	must(t, err)
	// The board's own changes: its upper over the image, without its identity layer (what
	// only that layer has is per board; a board booting the new image gets its own).
	board := kernelTree(t, filepath.Join(dir, "m-board"), append([]string{st.Upper("pi-01")}, imgLowers...))
	image := kernelTree(t, filepath.Join(dir, "m-image"), imgLowers)
	got := kernelTree(t, filepath.Join(dir, "m-kiosk"), stack)
	// Parents first: the board's path where the layer takes it, else under a dir the
	// image's where the layer leaves the path out (neither added nor deleted).
	var paths []string
	for p := range board {
		paths = append(paths, p)
	}
	for p := range image {
		if _, ok := board[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	isDir := func(d string) bool { return strings.HasPrefix(d, "40") }
	want := map[string]string{}
	fromImage := map[string]bool{}
	for _, p := range paths {
		par := path.Dir(p)
		if w, ok := want[par]; par != "/" && (!ok || !isDir(w)) {
			continue
		}
		b, inBoard := board[p]
		i, inImage := image[p]
		switch {
		case fromImage[par] && inImage, !fromImage[par] && inImage && ex.Match(p, inBoard && isDir(b)):
			want[p], fromImage[p] = i, true
		case !fromImage[par] && inBoard && !ex.Match(p, isDir(b)):
			want[p] = b
		}
	}
	var diffs []string
	for p, w := range want {
		if g, ok := got[p]; !ok || g != w {
			diffs = append(diffs, fmt.Sprintf("%s: committed image %q, want %q", p, g, w))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: only in the committed image: %q", p, g))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Fatalf("result %+v\n%s", res, strings.Join(diffs, "\n"))
	}
	for _, p := range []string{"/etc/hostname", "/etc/passwd", "/var/log/dpkg.log", "/home/kiosk/.config/kiosk.ini", "/srv/app/data"} {
		if _, ok := got[p]; !ok {
			t.Errorf("%s missing from the committed image", p)
		}
	}
	for _, p := range []string{"/var/lib/systemd/random-seed", "/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/authorized_keys",
		"/boot/firmware/userconf.txt", "/tmp/x", "/srv/app/cache", "/home/kiosk/.bash_history", "/var/log/kiosk.log", "/var/log/kiosk/kiosk.log"} {
		if _, ok := got[p]; ok {
			t.Errorf("%s is per board or volatile, but in the committed image", p)
		}
	}
	if got["/var/log/kiosk"] != "40750 7:4" {
		t.Errorf("/var/log/kiosk: %q in the committed image, want the board's empty dir 40750 7:4", got["/var/log/kiosk"])
	}
	if got["/etc/hostname"] != image["/etc/hostname"] || got["/var/log/dpkg.log"] != image["/var/log/dpkg.log"] {
		t.Errorf("excluded paths do not show the image's version: %q %q", got["/etc/hostname"], got["/var/log/dpkg.log"])
	}
	if _, ok := got["/usr/share/doc/a"]; ok {
		t.Error("/usr/share/doc/a deleted by the board, but in the committed image")
	}
	// committing again under the same name is refused, and leaves no temp dir behind
	if _, err := OfflineCommit(cfg, "pi-01", "kiosk"); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("second commit as kiosk: %v", err)
	}
}

// kernelTree mounts layers (topmost first) read-only with the kernel and describes every
// path: type and mode, owner, size, data, symlink target.
func kernelTree(t *testing.T, mnt string, layers []string) map[string]string {
	t.Helper()
	if len(layers) == 1 {
		empty := mnt + "-empty"
		must(t, os.MkdirAll(empty, 0o755))
		layers = append(layers, empty)
	}
	must(t, os.MkdirAll(mnt, 0o755))
	if err := unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(layers, ":")+",xino=off"); err != nil {
		require.Missing(t, fmt.Sprintf("kernel overlayfs unavailable (%v): the commit test needs it as the oracle", err))
	}
	defer unix.Unmount(mnt, 0)
	out := map[string]string{}
	must(t, filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == mnt {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err == unix.ENOENT {
			return nil
		} else if err != nil {
			return err
		}
		desc := fmt.Sprintf("%o %d:%d", st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			must(t, err)
			desc += fmt.Sprintf(" %q", b)
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		}
		out["/"+strings.TrimPrefix(p, mnt+"/")] = desc
		return nil
	}))
	return out
}

// treeSum fingerprints a tree: paths, modes, owners, sizes, mtimes, ctimes and data.
func treeSum(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	must(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		must(t, unix.Lstat(p, &st))
		fmt.Fprintf(&b, "%s %o %d:%d %d %v %v\n", p, st.Mode, st.Uid, st.Gid, st.Size, st.Mtim, st.Ctim)
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			data, err := os.ReadFile(p)
			must(t, err)
			b.Write(data)
		}
		return nil
	}))
	return b.String()
}

// TestParseCommitExclude: server.commit.exclude takes absolute path patterns; a bad one is
// an error at its own line.
func TestParseCommitExclude(t *testing.T) {
	cfg, ps, err := Parse([]byte("server:\n  commit:\n    exclude:\n      - /srv/cache\n      - /home/*/.local/share/Trash\nimages: {img: {}}\n"), "fleet.yaml")
	if err != nil || len(ps) != 0 {
		t.Fatalf("good: %v %v", err, ps)
	}
	if !slices.Equal(cfg.Server.CommitExclude, []string{"/srv/cache", "/home/*/.local/share/Trash"}) {
		t.Errorf("exclude = %v", cfg.Server.CommitExclude)
	}
	for _, tc := range []struct {
		yaml string
		line int
		msg  string
	}{
		{"server:\n  commit:\n    exclude:\n      - /ok\n      - relative/path\n", 5, "absolute path"},
		{"server:\n  commit:\n    exclude:\n      - /a/../b\n", 4, "'..'"},
		{"server:\n  commit:\n    exclude:\n      - /a/[\n", 4, "syntax error in pattern"},
		{"server:\n  commit:\n    exclude: /srv/cache\n", 3, "must be a list"},
		{"server:\n  commit:\n    excludes: [/x]\n", 3, "did you mean"},
	} {
		_, ps, _ := Parse([]byte(tc.yaml), "fleet.yaml")
		found := false
		for _, p := range ps {
			if p.Line == tc.line && strings.Contains(p.Msg+" "+p.Hint, tc.msg) {
				found = true
			}
		}
		if !found {
			t.Errorf("%q: want %q at line %d, got %v", tc.yaml, tc.msg, tc.line, ps)
		}
	}
}

// TestCommitPendingSwitch: a mounted board whose group moved to another image keeps
// running its old one until it reboots; a forced commit stacks its changes on the image it
// runs, which is what they were made over, not on the pending one.
func TestCommitPendingSwitch(t *testing.T) {
	needRoot(t)
	ts := startRollout(t, "  - {name: alpha, mac: '02:00:00:00:00:01', serial: '000abc00', ip: 127.0.0.1, group: lab}\n", 0, true)
	v, done := mountAs(t, ts, "alpha")
	defer done()
	nfsWrite(t, v, "etc/mine", "board data")
	ts.setGroupImage("v2")
	if st := ts.status("alpha"); st.Image != "v1" || st.Pending != "v2" {
		t.Fatalf("alpha runs %q, pending %q: want v1 with v2 pending", st.Image, st.Pending)
	}
	resp, err := ts.post("/api/boards/alpha/commit?as=mine&force=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var res CommitResult
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &res) != nil || res.Base != "v1" {
		t.Fatalf("commit: HTTP %d %s (want base v1)", resp.StatusCode, body)
	}
	layers, err := ts.srv.store.Layers("mine")
	must(t, err)
	v1, _ := ts.srv.store.Layers("v1")
	if !slices.Equal(layers[1:], v1) {
		t.Errorf("mine's stack %v, want a layer over v1's %v", layers, v1)
	}
}
