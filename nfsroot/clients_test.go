package nfsroot

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/require"
	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
)

// libnfsURL names a path in board pi-c's export (pi-c is 127.0.0.1: libnfs cannot choose
// its source address).
func (f *fixture) libnfsURL(p string, extra string) string {
	return fmt.Sprintf("nfs://127.0.0.1%s%s?version=3&nfsport=%d&mountport=%d%s",
		exportPath("pi-c"), p, f.nfs.Port(), f.mount.Port(), extra)
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	require.Tool(t, name, "libnfs-utils")
	cmd := exec.Command(name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	must(t, cmd.Start())
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s %q: %v\n%s%s", name, args, err, out.String(), errb.String())
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("%s %q hung", name, args)
	}
	return out.String()
}

func TestLibnfsClient(t *testing.T) {
	f := newFixture(t)
	// No auto-traverse-mounts=0: MOUNT EXPORT must be well-formed for libnfs to mount.
	if got := runTool(t, "nfs-cat", f.libnfsURL("/etc/hostname", "")); got != "base\n" {
		t.Fatalf("nfs-cat: %q", got)
	}
	ls := runTool(t, "nfs-ls", f.libnfsURL("/usr/bin", ""))
	if !strings.Contains(ls, "sudo") {
		t.Fatalf("nfs-ls /usr/bin does not list sudo:\n%s", ls)
	}
	// Upload a file, then read it back through the server and check the upper on disk.
	local := filepath.Join(t.TempDir(), "payload")
	payload := bytes.Repeat([]byte("pifleet "), 300000) // 2.4 MB: several WRITEs and READs
	must(t, os.WriteFile(local, payload, 0o644))
	runTool(t, "nfs-cp", local, f.libnfsURL("/tmp/payload", ""))
	back := filepath.Join(t.TempDir(), "back")
	runTool(t, "nfs-cp", f.libnfsURL("/tmp/payload", ""), back)
	got, err := os.ReadFile(back)
	must(t, err)
	if !bytes.Equal(got, payload) {
		t.Fatalf("nfs-cp round trip: %d bytes back of %d", len(got), len(payload))
	}
	onDisk, err := os.ReadFile(filepath.Join(f.upper("pi-c"), "tmp/payload"))
	must(t, err)
	if !bytes.Equal(onDisk, payload) {
		t.Fatal("upper file differs from what was written")
	}
	// Another board's export is refused to this address.
	cmd := exec.Command("nfs-cat", fmt.Sprintf("nfs://127.0.0.1%s/etc/hostname?version=3&nfsport=%d&mountport=%d", exportPath("pi-a"), f.nfs.Port(), f.mount.Port()))
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("nfs-cat of pi-a's export from pi-c's address succeeded: %s", out)
	}
}

func TestGoNFSClient(t *testing.T) {
	f := newFixture(t)
	mc, err := nfsc.DialServiceAtPort("127.0.0.1", int(f.nfs.Port()))
	must(t, err)
	defer mc.Close()
	m := &nfsc.Mount{Client: mc}
	auth := rpc.AuthUnix{Machinename: "pi-c", Uid: 0, Gid: 0, GidLen: 1}
	if _, err := m.Mount(exportPath("pi-a"), auth.Auth()); err == nil {
		t.Fatal("go-nfs-client mounted pi-a's export from pi-c's address")
	}
	v, err := m.Mount(exportPath("pi-c"), auth.Auth())
	must(t, err)
	_, err = v.Mkdir("work", 0o755)
	must(t, err)
	w, err := v.OpenFile("work/file", 0o644)
	must(t, err)
	data := bytes.Repeat([]byte("0123456789abcdef"), 70000) // ~1.1 MB
	_, err = w.Write(data)
	must(t, err)
	must(t, w.Close())
	r, err := v.Open("work/file")
	must(t, err)
	var back bytes.Buffer
	_, err = back.ReadFrom(r)
	must(t, err)
	if !bytes.Equal(back.Bytes(), data) {
		t.Fatalf("read back %d bytes of %d", back.Len(), len(data))
	}
	ents, err := v.ReadDirPlus("usr/bin")
	must(t, err)
	found := false
	for _, e := range ents {
		if e.Name() == "sudo" {
			found = e.Attr.Attr.FileMode == 0o4755
		}
	}
	if !found {
		t.Fatal("READDIRPLUS of usr/bin: sudo missing or not 4755")
	}
	must(t, v.Rename("work/file", "work/renamed"))
	if _, _, err := v.Lookup("work/renamed"); err != nil {
		t.Fatal(err)
	}
	must(t, v.Remove("work/renamed"))
	must(t, v.RmDir("work"))
	// A non-root uid through the same library cannot write root's files.
	ua := rpc.AuthUnix{Machinename: "pi-c", Uid: 1000, Gid: 1000, GidLen: 1, Gids: 1000}
	uv, err := m.Mount(exportPath("pi-c"), ua.Auth())
	must(t, err)
	if _, err := uv.Mkdir("etc/evil", 0o755); err == nil {
		t.Fatal("uid 1000 made a directory in /etc")
	}
	must(t, m.Unmount())
}
