package nfsroot

import (
	"strings"
	"testing"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/xdr"
)

func TestMountOwnExportOnly(t *testing.T) {
	f := newFixture(t)
	a := dialFrom(t, addrA, f.mount)
	st, fh := a.mnt("/boards/pi-a")
	wantStatus(t, "pi-a mounts its own export", st, 0)
	if len(fh) != fhSize {
		t.Fatalf("root handle is %d bytes", len(fh))
	}
	st, _ = a.mnt("/boards/pi-a/") // the same export, spelled with a slash
	wantStatus(t, "pi-a mounts /boards/pi-a/", st, 0)
	st, etc := a.mnt("/boards/pi-a/etc") // a directory below it, as libnfs and knfsd allow
	wantStatus(t, "pi-a mounts /boards/pi-a/etc", st, 0)
	if st, _, _ := a.lookup(etc, "hostname"); st != 0 {
		t.Fatalf("lookup in mounted subdir: %d", st)
	}
	st, _ = a.mnt("/boards/pi-a/etc/hostname")
	wantStatus(t, "mount a file", st, 20)
	st, _ = a.mnt("/boards/pi-a/nope")
	wantStatus(t, "mount a missing dir", st, 2)
	for _, p := range []string{"/boards/pi-b", "/boards/pi-c", "/", "/boards", "/nope", "", "/boards/pi-a/../pi-b", "/boards/pi-b/etc"} {
		st, _ := a.mnt(p)
		wantStatus(t, "pi-a mounts "+p, st, 13)
	}
	// pi-b's address may not mount pi-a's export.
	b := dialFrom(t, addrB, f.mount)
	st, _ = b.mnt("/boards/pi-a")
	wantStatus(t, "pi-b mounts pi-a", st, 13)
	// An address in no board's fleet.yaml entry gets nothing, and the server keeps running.
	x := dialFrom(t, addrOther, f.mount)
	st, _ = x.mnt("/boards/pi-a")
	wantStatus(t, "stranger mounts pi-a", st, 13)
	st, _ = b.mnt("/boards/pi-b")
	wantStatus(t, "pi-b mounts its own export after refusals", st, 0)
	f.mu.Lock()
	calls := strings.Join(f.onMount, " ")
	f.mu.Unlock()
	if calls != "pi-a@127.0.0.2 pi-a@127.0.0.2 pi-a@127.0.0.2 pi-b@127.0.0.3" {
		t.Fatalf("OnMount calls: %s", calls)
	}
	if !f.srv.Mounted("pi-a") || !f.srv.Mounted("pi-b") || f.srv.Mounted("pi-c") {
		t.Fatalf("Mounted: a=%v b=%v c=%v", f.srv.Mounted("pi-a"), f.srv.Mounted("pi-b"), f.srv.Mounted("pi-c"))
	}
}

func TestMountExportAndDumpShowOnlyOwnBoard(t *testing.T) {
	f := newFixture(t)
	a := dialFrom(t, addrA, f.mount)
	st, _ := a.mnt("/boards/pi-a")
	wantStatus(t, "mount", st, 0)
	type group struct {
		Name string
		More bool
	}
	body := a.call(progMount, 5)
	var exports []string
	for read[bool](t, body) {
		exports = append(exports, read[string](t, body))
		for read[bool](t, body) {
			_ = read[string](t, body)
		}
	}
	if len(exports) != 1 || exports[0] != "/boards/pi-a" {
		t.Fatalf("EXPORT from pi-a lists %q", exports)
	}
	body = a.call(progMount, 2)
	var dumps []string
	for read[bool](t, body) {
		host := read[string](t, body)
		dumps = append(dumps, host+":"+read[string](t, body))
	}
	if len(dumps) != 1 || dumps[0] != "127.0.0.2:/boards/pi-a" {
		t.Fatalf("DUMP from pi-a lists %q", dumps)
	}
	a.call(progMount, 3, "/boards/pi-a") // UMNT
	body = a.call(progMount, 2)
	if read[bool](t, body) {
		t.Fatal("DUMP still lists the mount after UMNT")
	}
}

func TestForeignHandleRefused(t *testing.T) {
	f := newFixture(t)
	a, rootA := f.client("pi-a")
	etcA := a.walk(rootA, "etc")
	hostA := a.walk(etcA, "hostname")
	b, rootB := f.client("pi-b")
	// Board B holds A's handles (learned any way at all): every use is refused.
	for _, fh := range [][]byte{rootA, etcA, hostA} {
		st, _ := b.getattr(fh)
		if st != uint32(70) && st != 13 {
			t.Fatalf("pi-b GETATTR with pi-a's handle: status %d, want STALE or ACCES", st)
		}
		st, _ = b.read(fh, 0, 100)
		if st != 70 && st != 13 {
			t.Fatalf("pi-b READ with pi-a's handle: status %d", st)
		}
		st, _, _ = b.lookup(fh, "hostname")
		if st != 70 && st != 13 {
			t.Fatalf("pi-b LOOKUP with pi-a's handle: status %d", st)
		}
	}
	st, _, _ := b.create(etcA, "planted", 0, mode(0o644))
	if st != 70 && st != 13 {
		t.Fatalf("pi-b CREATE in pi-a's dir: status %d", st)
	}
	// Renaming from its own dir into A's is refused too.
	hostB := b.walk(rootB, "etc")
	if st := b.rename(hostB, "hostname", etcA, "x"); st != 70 && st != 13 {
		t.Fatalf("pi-b RENAME into pi-a's dir: status %d", st)
	}
	// A forged handle: B's own export id with a FileID from A's tree is checked against B's table.
	forged := append([]byte(nil), rootB...)
	copy(forged[20:], hostA[20:])
	if st, _ := b.getattr(forged); st == 0 {
		t.Fatal("forged handle served")
	}
	// A's handle still works for A.
	st, data := a.readAll(hostA)
	if st != 0 || data != "base\n" {
		t.Fatalf("pi-a read: %d %q", st, data)
	}
	_ = nfsc.Fattr{}
	_ = xdr.Read
}

func TestStrangerCannotSendBigRecords(t *testing.T) {
	f := newFixture(t)
	x := dialFrom(t, addrOther, f.nfs)
	// A stranger's MOUNT is answered (refused); a stranger's 1 MiB WRITE closes the connection.
	if st, _ := x.mnt("/boards/pi-a"); st != 13 {
		t.Fatalf("stranger mount: %d", st)
	}
	_, err := x.raw(x.callMsg(progNFS, 3, 7, make([]byte, fhSize), uint64(0), uint32(1<<20), uint32(0), make([]byte, 1<<20)))
	if err == nil {
		t.Fatal("a 1 MiB record from an unknown address was read")
	}
	// A board's own large WRITE is fine.
	c, root := f.client("pi-a")
	st, fh, _ := c.create(c.walk(root, "tmp"), "big", 0, mode(0o644))
	wantStatus(t, "create", st, 0)
	if st, res := c.write(fh, 0, make([]byte, 1<<20), unstable); st != 0 || res.Count != 1<<20 {
		t.Fatalf("board's 1 MiB write: %d %d", st, res.Count)
	}
}
