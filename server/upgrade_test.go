package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/nfsroot"
	"github.com/pifleet/pifleet/overlay"
	"github.com/pifleet/pifleet/test/netns"
)

// treeState describes every path under root: inode, mode, owner, size, content and xattrs.
func treeState(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("ino=%d mode=%o uid=%d gid=%d size=%d rdev=%d", st.Ino, st.Mode, st.Uid, st.Gid, st.Size, st.Rdev)
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			desc += " sha256=" + hex.EncodeToString(sum[:])
		}
		buf := make([]byte, 4096)
		if n, err := syscall.Listxattr(p, buf); err == nil {
			for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
				if name == "" {
					continue
				}
				v := make([]byte, 256)
				vn, _ := syscall.Getxattr(p, name, v)
				desc += fmt.Sprintf(" %s=%x", name, v[:max(vn, 0)])
			}
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// serveLayout1 serves board alpha's root the way pifleet serve did before store layout 2:
// its overlay stacks [identity, images/img/prep, images/img/root] (what Store.Layers returned
// then) with the board's upper and NFS state dir. It returns the MOUNT port and a stop func.
func serveLayout1(t *testing.T, st State) (int, func()) {
	t.Helper()
	lowers := []string{st.Identity("alpha"), filepath.Join(st.Images(), "img", "prep"), filepath.Join(st.Images(), "img", "root")}
	if err := images.WriteIdentity(st.Identity("alpha"), images.Identity{Hostname: "alpha", Serial: "000abc00", MAC: "02:00:00:00:00:01", Image: lowers[1:]}); err != nil {
		t.Fatal(err)
	}
	fs, err := overlay.New(overlay.Options{Upper: st.Upper("alpha"), Work: st.Work("alpha"), Lowers: lowers})
	if err != nil {
		t.Fatal(err)
	}
	srv := nfsroot.New(nfsroot.Options{Logger: slog.New(slog.DiscardHandler)})
	srv.SetExports([]nfsroot.Export{{Board: "alpha", Path: Export("alpha"), FS: fs,
		Allow: func(netip.Addr) bool { return true }, StateDir: st.NFS("alpha")}})
	ports := freePorts(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	for i, serve := range []func(context.Context, net.Listener) error{srv.ServeNFS, srv.ServeMount} {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.100:%d", ports[i]))
		if err != nil {
			t.Fatal(err)
		}
		go func() { done <- serve(ctx, l) }()
	}
	return ports[1], func() {
		cancel()
		for range 2 {
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("layout 1 NFS server did not stop")
			}
		}
	}
}

// TestUpgradeLayout1 starts pifleet serve on a state dir in store layout 1, made by the
// import of pifleet before layers (images.ImportLayout1) and a board served as pifleet
// served it then: the server migrates it on start, the board's upper is untouched, and the
// handles the board's NFS client got before still resolve, to the same files.
func TestUpgradeLayout1(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	st := State{Dir: filepath.Join(dir, "state")}
	ctx := context.Background()
	if err := images.ImportLayout1(ctx, st.Images(), testImage(t), "img", true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(st.Images(), "img", "prep", "boot/firmware/cmdline.txt")); err != nil {
		t.Fatalf("the layout 1 fixture has no prep layer: %v", err)
	}

	// check, like serve, accepts the layout 1 image (serve upgrades it), with a warning
	cfg, _, err := Parse([]byte("server: {state: "+st.Dir+"}\nimages: {img: {}}\ndefaults: {image: img}\nboards:\n  - {name: alpha, serial: '000abc00'}\n"), "fleet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if ps := CheckImages(cfg); ps.Errors() > 0 || len(ps) != 1 || !strings.Contains(ps[0].Msg, "layout of an older pifleet") {
		t.Errorf("check on a layout 1 state dir: %s", ps.Format("fleet.yaml"))
	}

	// The board runs on the layout 1 state dir: it writes a file and looks up some.
	mountPort, stop := serveLayout1(t, st)
	auth := rpc.AuthUnix{Machinename: "alpha", GidLen: 1}
	mc, err := dialMount(mountPort)
	if err != nil {
		t.Fatal(err)
	}
	v, err := (&nfsc.Mount{Client: mc}).Mount("/boards/alpha", auth.Auth())
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	w, err := v.OpenFile("etc/mine", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(w, "board data")
	w.Close()
	// one handle per layer: upper, identity, prep, root, and a merged dir
	paths := []string{"etc/mine", "etc/hostname", "boot/firmware/cmdline.txt", "etc/os-release", "etc", "boot/firmware"}
	type handle struct {
		fh     []byte
		fileid uint64
		size   uint64
	}
	handles := map[string]handle{}
	for _, p := range paths {
		_, fh, err := v.Lookup(p)
		if err != nil {
			t.Fatalf("lookup %s: %v", p, err)
		}
		a, err := v.GetAttr(fh)
		if err != nil {
			t.Fatalf("getattr %s: %v", p, err)
		}
		handles[p] = handle{fh, a.Fileid, a.Filesize}
	}
	mc.Close()
	stop()
	upperBefore := treeState(t, st.Upper("alpha"))

	// pifleet serve of this version on the same state dir
	ports := freePorts(t, 4)
	ts := &testServer{t: t, cfgPath: filepath.Join(dir, "fleet.yaml"), logs: &netns.LogBuffer{}}
	y := fmt.Sprintf(`server:
  address: 127.0.0.100/8
  state: %s
  dhcp: {mode: off}
  ports: {tftp: %d, nfs: %d, mount: %d, http: %d, portmap: 0}
images:
  img: {}
defaults: {image: img}
boards:
  - {name: alpha, mac: '02:00:00:00:00:01', serial: '000abc00', ip: 127.0.0.1}
`, st.Dir, ports[0], ports[1], ports[2], ports[3])
	if err := os.WriteFile(ts.cfgPath, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	ts.start()
	t.Cleanup(ts.stop)
	if b, err := os.ReadFile(st.LayoutFile()); err != nil || string(b) != "pifleet state layout 2\n" {
		t.Errorf("layout file: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(st.Images(), "img", "root")); err == nil {
		t.Error("images/img/root is still there")
	}
	if !strings.Contains(ts.logs.String(), "upgrading the state dir") {
		t.Errorf("no upgrade logged:\n%s", ts.logs.String())
	}
	if after := treeState(t, st.Upper("alpha")); !equalMaps(upperBefore, after) {
		t.Errorf("the board's upper changed:\nbefore %v\nafter  %v", upperBefore, after)
	}

	mc2, err := dialMount(ts.srv.cfg.Server.Ports.Mount)
	if err != nil {
		t.Fatal(err)
	}
	defer mc2.Close()
	v2, err := (&nfsc.Mount{Client: mc2}).Mount("/boards/alpha", auth.Auth())
	if err != nil {
		t.Fatalf("mount after upgrade: %v", err)
	}
	for _, p := range paths {
		h := handles[p]
		a, err := v2.GetAttr(h.fh)
		if err != nil {
			t.Errorf("%s: handle from before the upgrade: %v", p, err)
			continue
		}
		if a.Fileid != h.fileid || a.Filesize != h.size {
			t.Errorf("%s: handle now names fileid %d size %d, was %d size %d", p, a.Fileid, a.Filesize, h.fileid, h.size)
		}
		_, fh, err := v2.Lookup(p)
		if err != nil || string(fh) != string(h.fh) {
			t.Errorf("%s: lookup after the upgrade gives another handle (%v)", p, err)
		}
	}
	f, err := v2.Open("etc/mine")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if string(b) != "board data" {
		t.Errorf("etc/mine = %q", b)
	}
	ts.stop()

	// a state dir from a newer pifleet is refused, with what to do
	if err := os.WriteFile(st.LayoutFile(), []byte("pifleet state layout 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = Run(ctx, Options{ConfigPath: ts.cfgPath, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "has layout 3, written by a newer pifleet; this one reads layout 2") {
		t.Errorf("serve on a layout 3 state dir: %v", err)
	}
	if _, err := OpenStore(st.Dir, nil, nil); err == nil || !strings.Contains(err.Error(), "newer pifleet") {
		t.Errorf("OpenStore on a layout 3 state dir: %v", err)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestParseLayout(t *testing.T) {
	for in, want := range map[string]int{"pifleet state layout 2\n": 2, "pifleet state layout 17": 17} {
		if v, err := parseLayout([]byte(in)); err != nil || v != want {
			t.Errorf("parseLayout(%q) = %d, %v", in, v, err)
		}
	}
	for _, bad := range []string{"", "2\n", "pifleet state layout x", "pifleet state layout 0", "pifleet state layout -1", "pifleet state layout 02", "pifleet state layout 99999999999999999999"} {
		if _, err := parseLayout([]byte(bad)); err == nil {
			t.Errorf("parseLayout(%q) accepted", bad)
		}
	}
}

func FuzzParseLayout(f *testing.F) {
	f.Add([]byte("pifleet state layout 2\n"))
	f.Add([]byte("pifleet state layout 0"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if v, err := parseLayout(b); err == nil && v < 1 {
			t.Fatalf("layout %d accepted", v)
		}
	})
}
