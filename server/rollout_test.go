package server

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/overlay"
	"github.com/pifleet/pifleet/test/netns"
	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
	"golang.org/x/sys/unix"
)

// writeTree adds files (path -> contents) to root; a path ending in "/" is a dir.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		full := filepath.Join(root, filepath.FromSlash(p))
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// The files of the test images: v2 is v1 with some files changed, one added, one removed
// (a release of the same system).
var (
	rolloutV1 = map[string]string{"etc/keep": "keep", "etc/same-change": "same",
		"etc/app.conf": "v1", "etc/gone": "gone-v1", "etc/both-del": "x", "opt/d/f": "d1"}
	rolloutV2Delta = map[string]string{"etc/app.conf": "v2", "etc/gone": "gone-v2", "opt/d/f": "d2",
		"etc/v2only": "new in v2", "etc/added-both": "image", "boot/firmware/config.txt": "arm_64bit=1\nkernel=kernel8.img\n# v2\n"}
	rolloutV2Deleted = "etc/both-del"
)

// rolloutImages makes images v1 and v2. Without a store they are two path images (two
// full trees); with one, v1 is one layer and v2 is v1 plus a layer holding only the
// delta (the removed file as a whiteout), made with Store.CreateImage.
func rolloutImages(t *testing.T, store *images.Store) (v1, v2 string) {
	t.Helper()
	if store == nil {
		v1, v2 = testImage(t), testImage(t)
		writeTree(t, v1, rolloutV1)
		writeTree(t, v2, rolloutV1)
		writeTree(t, v2, rolloutV2Delta)
		if err := os.Remove(filepath.Join(v2, rolloutV2Deleted)); err != nil {
			t.Fatal(err)
		}
		return v1, v2
	}
	layer := func(fill func(dir string)) string {
		dir, err := store.TempDir("test")
		if err != nil {
			t.Fatal(err)
		}
		fill(dir)
		l, err := store.AddLayer(dir, "")
		if err != nil {
			t.Fatal(err)
		}
		return l.Digest
	}
	base := layer(func(dir string) {
		if err := os.CopyFS(dir, os.DirFS(testImage(t))); err != nil {
			t.Fatal(err)
		}
		writeTree(t, dir, rolloutV1)
	})
	delta := layer(func(dir string) {
		writeTree(t, dir, rolloutV2Delta)
		if err := unix.Mknod(filepath.Join(dir, rolloutV2Deleted), unix.S_IFCHR, 0); err != nil { // a whiteout
			t.Fatal(err)
		}
	})
	if err := store.CreateImage("v1", "", []string{base}, images.ImageMeta{}); err != nil {
		t.Fatal(err)
	}
	if err := store.CreateImage("v2", "v1", []string{delta}, images.ImageMeta{}); err != nil {
		t.Fatal(err)
	}
	return "", ""
}

// startRollout runs a server with images v1 and v2 (path images, or with inStore layered
// images in its state dir), group lab on v1, and boards (which may name group lab);
// dhcp, if not zero, is the proxy DHCP port.
func startRollout(t *testing.T, boards string, dhcp int, inStore bool) *testServer {
	t.Helper()
	dir := t.TempDir()
	ports := freePorts(t, 4)
	state := filepath.Join(dir, "state")
	var store *images.Store
	if inStore {
		var err error
		if store, err = images.OpenStore(filepath.Join(state, "images")); err != nil {
			t.Fatal(err)
		}
	}
	v1, v2 := rolloutImages(t, store)
	ts := &testServer{t: t, cfgPath: filepath.Join(dir, "fleet.yaml"), tftp: ports[0], logs: &netns.LogBuffer{}, done: make(chan error, 1)}
	y := fmt.Sprintf(fleetTmpl, state, ports[0], ports[1], ports[2], ports[3], "IMG", boards)
	imgs := "  v1: {}\n  v2: {}\n"
	if !inStore {
		imgs = "  v1: {path: " + v1 + "}\n  v2: {path: " + v2 + "}\n"
	}
	y = strings.Replace(y, "  img: {path: IMG}\n", imgs, 1)
	y = strings.Replace(y, "defaults: {image: img, cmdline: quiet}", "defaults: {image: v1, cmdline: quiet}\ngroups:\n  lab: {image: v1}", 1)
	if dhcp != 0 {
		y = strings.Replace(y, "dhcp: {mode: off}", "dhcp: {mode: proxy}", 1)
		y = strings.Replace(y, "portmap: 0}", fmt.Sprintf("portmap: 0, dhcp: %d}", dhcp), 1)
	}
	if err := os.WriteFile(ts.cfgPath, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	ts.start()
	t.Cleanup(ts.stop)
	return ts
}

// setGroupImage points group lab at image and has the server reload.
func (ts *testServer) setGroupImage(image string) {
	t := ts.t
	t.Helper()
	y, err := os.ReadFile(ts.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(y), "lab: {image: ")
	if i < 0 {
		t.Fatalf("no group lab in\n%s", y)
	}
	j := i + strings.Index(string(y[i:]), "}")
	out := string(y[:i]) + "lab: {image: " + image + string(y[j:])
	if err := os.WriteFile(ts.cfgPath, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	resp, err := ts.post("/api/reload", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("reload: HTTP %d %s", resp.StatusCode, body)
	}
}

// waitTFTPRecorded waits until the board's last boot has its TFTP read: the server
// records a transfer at its last ACK, which curl may not wait for, and a mount recorded
// before it would belong to the boot before (a real board mounts seconds later).
func (ts *testServer) waitTFTPRecorded(board string) {
	ts.t.Helper()
	waitFor(ts.t, "the TFTP read in "+board+"'s timeline", func() bool {
		last, _ := ts.srv.timeline.Last(board)
		return slices.ContainsFunc(last.Events, func(e boot.Event) bool { return e.Stage == boot.StageTFTP })
	})
}

// status is a board's row of /api/boards.
func (ts *testServer) status(name string) BoardStatus {
	ts.t.Helper()
	var bs []BoardStatus
	ts.getJSON("/api/boards", &bs)
	for _, b := range bs {
		if b.Name == name {
			return b
		}
	}
	ts.t.Fatalf("board %s not in /api/boards", name)
	return BoardStatus{}
}

// mountAs mounts a board's export from 127.0.0.1 (the test boards' fixed IP is the
// address go-nfs-client dials from).
func mountAs(t *testing.T, ts *testServer, board string) (*nfsc.Target, func()) {
	t.Helper()
	mc, err := dialMount(ts.srv.cfg.Server.Ports.Mount)
	if err != nil {
		t.Fatal(err)
	}
	m := &nfsc.Mount{Client: mc}
	auth := rpc.AuthUnix{Machinename: board, GidLen: 1}
	v, err := m.Mount("/boards/"+board, auth.Auth())
	if err != nil {
		mc.Close()
		t.Fatalf("mount %s: %v", board, err)
	}
	return v, func() { v.Close(); mc.Close() }
}

// nfsRead returns a file's contents over NFS, or "<missing>".
func nfsRead(t *testing.T, v *nfsc.Target, p string) string {
	t.Helper()
	f, err := v.Open(p)
	if err != nil {
		if os.IsNotExist(err) || strings.Contains(strings.ToLower(err.Error()), "noent") {
			return "<missing>"
		}
		t.Fatalf("read %s: %v", p, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return string(b)
}

func nfsWrite(t *testing.T, v *nfsc.Target, p, data string) {
	t.Helper()
	f, err := v.OpenFile(p, 0o644)
	if err != nil {
		t.Fatalf("open %s: %v", p, err)
	}
	if _, err := io.WriteString(f, data); err != nil {
		t.Fatalf("write %s: %v", p, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", p, err)
	}
}

// boardChanges makes the changes the conflict rule is tested on, as a board makes them:
// over NFS.
func boardChanges(t *testing.T, v *nfsc.Target) {
	t.Helper()
	nfsWrite(t, v, "etc/app.conf", "board's app.conf") // v2 changed it too: conflict
	nfsWrite(t, v, "etc/keep", "board's keep")         // v2 kept it: none
	nfsWrite(t, v, "etc/same-change", "board's same")  // v2 kept it: none
	nfsWrite(t, v, "etc/mine", "board's own")          // in no image: none
	nfsWrite(t, v, "etc/added-both", "board's added")  // v2 added it too: conflict
	for _, p := range []string{"etc/gone", "etc/both-del", "opt/d/f"} {
		if err := v.Remove(p); err != nil {
			t.Fatalf("remove %s: %v", p, err)
		}
	}
	if err := v.RmDir("opt/d"); err != nil { // v2 changed a file under it: conflict
		t.Fatalf("rmdir opt/d: %v", err)
	}
	// etc/gone: whiteout vs v2's change, a conflict; etc/both-del: v2 removed it too, none.
}

func conflictPaths(t *testing.T, ts *testServer, board string) (Conflict, []string) {
	t.Helper()
	var c Conflict
	if code := ts.getJSON("/api/boards/"+board+"/conflicts", &c); code != http.StatusOK {
		t.Fatalf("conflicts of %s: HTTP %d", board, code)
	}
	var paths []string
	for _, ch := range c.Changes {
		paths = append(paths, ch.Kind+" "+ch.Path)
	}
	return c, paths
}

// TestRolloutGroupMountedBoard: group lab moves from v1 to v2 in one line of fleet.yaml.
// beta, not mounted, switches at once; alpha, mounted, keeps v1 (its NFS view does not
// change) and shows pending image v2 in the API, the status page and the metrics, across
// a server restart too; its next boot (a TFTP read) switches it, with its own changes
// still on top. board diff --conflicts lists exactly the paths both changed, pending and
// after. Rolling back to v1 gives v1's view with the board's changes on top.
// Both with path images (two separate trees) and with store images (v2 = v1 + a layer).
func TestRolloutGroupMountedBoard(t *testing.T) {
	needRoot(t)
	t.Run("path", func(t *testing.T) { testRolloutGroupMountedBoard(t, false) })
	t.Run("store", func(t *testing.T) { testRolloutGroupMountedBoard(t, true) })
}

func testRolloutGroupMountedBoard(t *testing.T, inStore bool) {
	ts := startRollout(t, "  - {name: alpha, mac: '02:00:00:00:00:01', serial: '000abc00', ip: 127.0.0.1, group: lab}\n"+
		"  - {name: beta, mac: '02:00:00:00:00:02', serial: '000abc01', ip: 127.0.0.3, group: lab}\n", 0, inStore)
	v, unmount := mountAs(t, ts, "alpha")
	defer unmount()
	boardChanges(t, v)
	if got := nfsRead(t, v, "etc/app.conf"); got != "board's app.conf" {
		t.Fatalf("board's write reads back %q", got)
	}
	if code := ts.getJSON("/api/boards/alpha/conflicts", nil); code != http.StatusConflict {
		t.Errorf("conflicts without an image switch: HTTP %d, want 409", code)
	}

	ts.setGroupImage("v2")
	if b := ts.status("beta"); b.Image != "v2" || b.Pending != "" {
		t.Errorf("beta (not mounted) after the group moved: image %q pending %q, want v2 at once", b.Image, b.Pending)
	}
	a := ts.status("alpha")
	if a.Image != "v1" || a.Pending != "v2" || !a.Mounted {
		t.Fatalf("alpha (mounted): image %q pending %q mounted %v, want v1 pending v2", a.Image, a.Pending, a.Mounted)
	}
	// Its root did not move: same view through the handles it holds.
	if got := nfsRead(t, v, "etc/v2only"); got != "<missing>" {
		t.Errorf("alpha sees v2's new file under its mounted root: %q", got)
	}
	if got := nfsRead(t, v, "etc/mine"); got != "board's own" {
		t.Errorf("alpha's own file reads %q", got)
	}
	if page := ts.getRaw("/"); !strings.Contains(page, "pending image v2") {
		t.Error("the status page does not show alpha's pending image")
	}
	if page := ts.getRaw("/boards/alpha"); !strings.Contains(page, "pending image v2") || !strings.Contains(page, "Conflicts with image v2") ||
		!strings.Contains(page, `<td class="mono">/etc/app.conf</td>`) || strings.Contains(page, `<td class="mono">/etc/keep</td></tr>`) {
		t.Errorf("alpha's page does not show its pending image and its conflicts:\n%s", page)
	}
	m := ts.scrape()
	if !strings.Contains(m, `pifleet_board_image_pending{board="alpha",image="v2"} 1`) ||
		!strings.Contains(m, `pifleet_board_info{board="alpha",image="v1"} 1`) ||
		strings.Contains(m, `pifleet_board_image_pending{board="beta"`) {
		t.Errorf("metrics do not show alpha pending v2 (and beta not):\n%s", grepLines(m, "pifleet_board_i"))
	}

	wantConflicts := []string{"C /etc/added-both", "C /etc/app.conf", "D /etc/gone", "D /opt/d"}
	c, got := conflictPaths(t, ts, "alpha")
	if !c.Pending || c.From != "v1" || c.To != "v2" || !slices.Equal(got, wantConflicts) {
		t.Errorf("pending conflicts: %+v %q, want v1 -> v2 pending, %q", c, got, wantConflicts)
	}

	// A restart keeps alpha on the stack it runs: its system may have kept running.
	ts.stop()
	ts.start()
	if a := ts.status("alpha"); a.Image != "v1" || a.Pending != "v2" {
		t.Fatalf("alpha after a restart: image %q pending %q, want v1 pending v2", a.Image, a.Pending)
	}
	unmount()
	v, unmount = mountAs(t, ts, "alpha") // its client reconnects
	defer unmount()
	if got := nfsRead(t, v, "etc/v2only"); got != "<missing>" {
		t.Errorf("after a restart alpha sees v2's file: %q", got)
	}

	// Its next boot: the firmware's TFTP read switches it before the file is served.
	out, err := tftpGet(t, "127.0.0.1", ts.tftp, "000abc00/config.txt")
	if err != nil || !strings.Contains(out, "# v2") {
		t.Fatalf("alpha's boot read config.txt %q (%v), want v2's", out, err)
	}
	if a := ts.status("alpha"); a.Image != "v2" || a.Pending != "" {
		t.Fatalf("alpha after its boot: image %q pending %q, want v2", a.Image, a.Pending)
	}
	ts.waitTFTPRecorded("alpha")
	// The handles the board held on its own files stay good across the switch (its
	// root dir is its own: the upper holds it).
	if got := nfsRead(t, v, "etc/mine"); got != "board's own" {
		t.Errorf("alpha's own file through a handle from before the switch: %q", got)
	}
	unmount()
	v, unmount = mountAs(t, ts, "alpha")
	defer unmount()
	for p, want := range map[string]string{
		"etc/v2only": "new in v2", "etc/mine": "board's own", "etc/app.conf": "board's app.conf",
		"etc/keep": "board's keep", "etc/gone": "<missing>", "etc/both-del": "<missing>", "opt/d/f": "<missing>",
	} {
		if got := nfsRead(t, v, p); got != want {
			t.Errorf("alpha on v2: %s = %q, want %q", p, got, want)
		}
	}
	c, got = conflictPaths(t, ts, "alpha")
	if c.Pending || c.From != "v1" || c.To != "v2" || !slices.Equal(got, wantConflicts) {
		t.Errorf("conflicts after the switch: %+v %q, want v1 -> v2, %q", c, got, wantConflicts)
	}

	// Roll back: the group goes back to v1; alpha is mounted again, so at its next boot.
	ts.setGroupImage("v1")
	if a := ts.status("alpha"); a.Image != "v2" || a.Pending != "v1" {
		t.Fatalf("alpha after the rollback edit: image %q pending %q, want v2 pending v1", a.Image, a.Pending)
	}
	if b := ts.status("beta"); b.Image != "v1" || b.Pending != "" {
		t.Errorf("beta after the rollback: image %q pending %q, want v1", b.Image, b.Pending)
	}
	if out, err := tftpGet(t, "127.0.0.1", ts.tftp, "000abc00/config.txt"); err != nil || strings.Contains(out, "# v2") {
		t.Fatalf("alpha's boot after the rollback read config.txt %q (%v), want v1's", out, err)
	}
	unmount()
	v, unmount = mountAs(t, ts, "alpha")
	defer unmount()
	for p, want := range map[string]string{
		"etc/v2only": "<missing>", "etc/mine": "board's own", "etc/app.conf": "board's app.conf",
		"etc/keep": "board's keep", "etc/added-both": "board's added", "etc/gone": "<missing>", "etc/both-del": "<missing>",
	} {
		if got := nfsRead(t, v, p); got != want {
			t.Errorf("alpha back on v1: %s = %q, want %q", p, got, want)
		}
	}
	c, got = conflictPaths(t, ts, "alpha")
	wantBack := []string{"A /etc/added-both", "C /etc/app.conf", "D /etc/both-del", "D /etc/gone", "D /opt/d"}
	if c.Pending || c.From != "v2" || c.To != "v1" || !slices.Equal(got, wantBack) {
		t.Errorf("conflicts after the rollback: %+v %q, want v2 -> v1, %q", c, got, wantBack)
	}
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestRolloutSwitchAtBootAfterDHCP: a board whose boot pifleet sees from its bootloader's
// DHCP switches at the first TFTP read of its firmware tree in that boot, before the file
// is served (a generated file before it, U-Boot's boot.scr.uimg, does not count); the
// DISCOVER itself (anyone can put a board's MAC in one) switches nothing.
func TestRolloutSwitchAtBootAfterDHCP(t *testing.T) {
	needRoot(t)
	dhcpPort := freePorts(t, 1)[0]
	ts := startRollout(t, "  - {name: alpha, mac: '02:00:00:00:00:01', serial: '000abc00', ip: 127.0.0.1, group: lab}\n", dhcpPort, true)
	v, unmount := mountAs(t, ts, "alpha")
	defer unmount()
	nfsWrite(t, v, "etc/mine", "board's own")
	ts.setGroupImage("v2")
	if a := ts.status("alpha"); a.Image != "v1" || a.Pending != "v2" {
		t.Fatalf("alpha (mounted): image %q pending %q, want v1 pending v2", a.Image, a.Pending)
	}
	sendDHCP(t, dhcpPort, "02:00:00:00:00:01", 0x000abc00)
	waitFor(t, "the DISCOVER in alpha's timeline", func() bool {
		last, _ := ts.srv.timeline.Last("alpha")
		return !last.Mounted() && slices.ContainsFunc(last.Events, func(e boot.Event) bool { return e.Stage == boot.StageDHCP })
	})
	if got := nfsRead(t, v, "etc/v2only"); got != "<missing>" {
		t.Errorf("a DHCP DISCOVER alone moved alpha's root: etc/v2only = %q", got)
	}
	if a := ts.status("alpha"); a.Image != "v1" {
		t.Errorf("a DHCP DISCOVER alone switched alpha: image %q", a.Image)
	}
	if _, err := tftpGet(t, "127.0.0.1", ts.tftp, "boot.scr.uimg"); err != nil {
		t.Fatal(err)
	}
	ts.waitTFTPRecorded("alpha")
	out, err := tftpGet(t, "127.0.0.1", ts.tftp, "000abc00/config.txt")
	if err != nil || !strings.Contains(out, "# v2") {
		t.Fatalf("alpha's first read of its firmware after its DHCP: config.txt %q (%v), want v2's", out, err)
	}
	if a := ts.status("alpha"); a.Image != "v2" || a.Pending != "" {
		t.Fatalf("alpha after its boot: image %q pending %q, want v2", a.Image, a.Pending)
	}
	if !strings.Contains(ts.logs.String(), `msg="board switched image" board=alpha`) || !strings.Contains(ts.logs.String(), "its first TFTP read of its firmware") {
		t.Errorf("no log line for the switch:\n%s", grepLines(ts.logs.String(), "alpha"))
	}
	// Later reads of the same boot stay on its stack: an image change now (alpha still
	// counts as mounted) waits for the boot after.
	ts.waitTFTPRecorded("alpha")
	ts.setGroupImage("v1")
	if out, err := tftpGet(t, "127.0.0.1", ts.tftp, "000abc00/config.txt"); err != nil || !strings.Contains(out, "# v2") {
		t.Errorf("a later read of the same boot: config.txt %q (%v), want v2's still", out, err)
	}
	if a := ts.status("alpha"); a.Image != "v2" || a.Pending != "v1" {
		t.Errorf("alpha after a later read of its boot: image %q pending %q, want v2 pending v1", a.Image, a.Pending)
	}
	unmount()
	v, unmount = mountAs(t, ts, "alpha")
	defer unmount()
	if got := nfsRead(t, v, "etc/v2only"); got != "new in v2" {
		t.Errorf("alpha on v2 reads etc/v2only %q", got)
	}
	if got := nfsRead(t, v, "etc/mine"); got != "board's own" {
		t.Errorf("alpha lost its own file in the switch: %q", got)
	}
}

// TestImageConflictsOpaqueDir: a dir the board removed and made again (opaque) hides the
// whole dir of the new image: a file the new image changed or added in it conflicts, the
// dir itself (same attributes) and the board's own new file do not. A file the board put
// in place of a dir conflicts when the image changed anything under that dir.
func TestImageConflictsOpaqueDir(t *testing.T) {
	needRoot(t)
	v1, v2 := t.TempDir(), t.TempDir()
	writeTree(t, v1, map[string]string{"opt/d/f": "d1", "opt/d/same": "s", "etc/x": "x", "srv/dir/a": "1", "srv/dir2/a": "1"})
	writeTree(t, v2, map[string]string{"opt/d/f": "d2", "opt/d/same": "s", "opt/d/h": "new", "etc/x": "x", "srv/dir/a": "2", "srv/dir2/a": "1"})
	board := t.TempDir()
	upper := filepath.Join(board, "upper")
	fs, err := overlay.New(overlay.Options{Upper: upper, Work: filepath.Join(board, "work"), Lowers: []string{v1}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"opt/d/f", "opt/d/same", "opt/d", "srv/dir/a", "srv/dir", "srv/dir2/a", "srv/dir2"} {
		if err := fs.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := fs.Mkdir("opt/d", 0o755); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, fs, "opt/d/g")
	// Dirs replaced by files: the one whose contents v2 changed conflicts, the other not.
	mustCreate(t, fs, "srv/dir")
	mustCreate(t, fs, "srv/dir2")
	got, err := ImageConflicts(upper, []string{v1}, []string{v2})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, c := range got {
		paths = append(paths, c.Kind+" "+c.Path)
	}
	if want := []string{"D /opt/d/f", "D /opt/d/h", "D /srv/dir/a"}; !slices.Equal(paths, want) {
		t.Errorf("conflicts = %q, want %q", paths, want)
	}
	// Rolling the same board back: v1 has no h, its f differs.
	got, err = ImageConflicts(upper, []string{v2}, []string{v1})
	if err != nil {
		t.Fatal(err)
	}
	paths = paths[:0]
	for _, c := range got {
		paths = append(paths, c.Kind+" "+c.Path)
	}
	if want := []string{"D /opt/d/f", "D /srv/dir/a"}; !slices.Equal(paths, want) {
		t.Errorf("conflicts back = %q, want %q", paths, want)
	}
}

// TestRolloutChangedWhileStopped: fleet.yaml changed while pifleet was stopped. alpha had
// its root mounted and may have kept running across the restart: it starts on the stack
// it ran, pending, and the once-a-second "not mounted" check leaves it alone during the
// restart grace; its next boot then switches it. beta never booted: the check switches it.
func TestRolloutChangedWhileStopped(t *testing.T) {
	needRoot(t)
	ts := startRollout(t, "  - {name: alpha, mac: '02:00:00:00:00:01', serial: '000abc00', ip: 127.0.0.1, group: lab}\n"+
		"  - {name: beta, mac: '02:00:00:00:00:02', serial: '000abc01', ip: 127.0.0.3, group: lab}\n", 0, true)
	_, unmount := mountAs(t, ts, "alpha")
	unmount()
	ts.stop()
	y, _ := os.ReadFile(ts.cfgPath)
	os.WriteFile(ts.cfgPath, []byte(strings.Replace(string(y), "lab: {image: v1}", "lab: {image: v2}", 1)), 0o644)
	ts.start()
	if a := ts.status("alpha"); a.Image != "v1" || a.Pending != "v2" || a.Mounted {
		t.Fatalf("alpha after a restart with a new image: image %q pending %q mounted %v, want v1 pending v2", a.Image, a.Pending, a.Mounted)
	}
	// The once-a-second check: neither board shows a mount, but alpha's last boot
	// mounted its root and the server has just started.
	ts.srv.switchUnmounted()
	if a := ts.status("alpha"); a.Image != "v1" {
		t.Fatalf("alpha switched within the restart grace: image %q", a.Image)
	}
	if b := ts.status("beta"); b.Image != "v2" || b.Pending != "" {
		t.Errorf("beta (never booted) after the check: image %q pending %q, want v2", b.Image, b.Pending)
	}
	if out, err := tftpGet(t, "127.0.0.1", ts.tftp, "000abc00/config.txt"); err != nil || !strings.Contains(out, "# v2") {
		t.Fatalf("alpha's boot read config.txt %q (%v), want v2's", out, err)
	}
	rec, ok := readImageRecord(ts.srv.state, "alpha")
	if !ok || rec.Image != "v2" || rec.Previous == nil || rec.Previous.Image != "v1" {
		t.Errorf("alpha's image record = %+v, want v2 with previous v1", rec)
	}
}
