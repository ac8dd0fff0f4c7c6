package nfsroot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/willscott/go-nfs-client/nfs/xdr"
)

func TestRPCErrorReplies(t *testing.T) {
	f := newFixture(t)
	c, root := f.client("pi-a")
	mismatch := func(what string, prog, vers uint32, low, high uint32) {
		t.Helper()
		r, err := c.raw(c.callMsg(prog, vers, 0))
		must(t, err)
		if r.denied || r.stat != acceptProgMismatch {
			t.Fatalf("%s: denied=%v stat=%d, want PROG_MISMATCH", what, r.denied, r.stat)
		}
		var v struct{ Low, High uint32 }
		must(t, xdr.Read(r.body, &v))
		if v.Low != low || v.High != high {
			t.Fatalf("%s: versions %d-%d, want %d-%d", what, v.Low, v.High, low, high)
		}
	}
	mismatch("NFSv2", progNFS, 2, 3, 3)
	mismatch("NFSv4", progNFS, 4, 3, 3)
	mismatch("MOUNT v1", progMount, 1, 3, 3)
	mismatch("NFS_ACL v2", progNFSACL, 2, 3, 3)
	if r, err := c.raw(c.callMsg(progNFSACL, 3, 0)); err != nil || r.denied || r.stat != acceptSuccess || r.body.Len() != 0 {
		t.Fatalf("NFS_ACL v3 NULL: %+v %v", r, err)
	}
	if r, err := c.raw(c.callMsg(progNFSACL, 3, 3)); err != nil || r.stat != acceptProcUnavail {
		t.Fatalf("NFS_ACL v3 proc 3: %+v %v, want PROC_UNAVAIL", r, err)
	}
	for _, p := range []uint32{100021 /* NLM */, 100000 /* portmap */, 12345} {
		r, err := c.raw(c.callMsg(p, 3, 0))
		must(t, err)
		if r.denied || r.stat != acceptProgUnavail || r.body.Len() != 0 {
			t.Fatalf("prog %d: denied=%v stat=%d rest=%d, want PROG_UNAVAIL with no body", p, r.denied, r.stat, r.body.Len())
		}
	}
	r, err := c.raw(c.callMsg(progNFS, 3, 22))
	must(t, err)
	if r.stat != acceptProcUnavail {
		t.Fatalf("NFS proc 22: stat %d, want PROC_UNAVAIL", r.stat)
	}
	// Wrong RPC version: MSG_DENIED, RPC_MISMATCH 2-2.
	msg := c.callMsg(progNFS, 3, 0)
	binary.BigEndian.PutUint32(msg[12:], 3)
	r, err = c.raw(msg)
	must(t, err)
	if !r.denied || r.stat != rejectRPCMismatch {
		t.Fatalf("rpcvers 3: denied=%v stat=%d", r.denied, r.stat)
	}
	// RPCSEC_GSS (flavor 6) is not offered: AUTH_ERROR, AUTH_TOOWEAK.
	msg = c.callMsg(progNFS, 3, 0)
	binary.BigEndian.PutUint32(msg[28:], 6)
	r, err = c.raw(msg)
	must(t, err)
	if st, _ := xdr.ReadUint32(r.body); !r.denied || r.stat != rejectAuthError || st != authTooWeak {
		t.Fatalf("auth flavor 6: denied=%v stat=%d auth=%d", r.denied, r.stat, st)
	}
	// A GETATTR whose handle claims 2 GiB: GARBAGE_ARGS, no allocation, connection alive.
	msg = c.callMsg(progNFS, 3, 1, uint32(0x7fffffff))
	r, err = c.raw(msg)
	must(t, err)
	if r.stat != acceptGarbageArgs {
		t.Fatalf("2 GiB handle: stat %d, want GARBAGE_ARGS", r.stat)
	}
	// Truncated arguments.
	r, err = c.raw(c.callMsg(progNFS, 3, 6, root[:8]))
	must(t, err)
	if r.stat != acceptGarbageArgs {
		t.Fatalf("truncated READ: stat %d", r.stat)
	}
	// A handle of the right size but not ours: BADHANDLE; garbage of another size too.
	if st, _ := c.getattr(make([]byte, fhSize)); st != 10001 {
		t.Fatalf("zero handle: %d", st)
	}
	if st, _ := c.getattr(root); st != 0 {
		t.Fatalf("connection unusable after errors: %d", st)
	}
}

// Malformed records end the connection (or get an error reply), never the server.
func TestMalformedRecordsCloseConnection(t *testing.T) {
	f := newFixture(t)
	cases := map[string][]byte{
		"huge fragment":      {0xff, 0xff, 0xff, 0xff, 1, 2, 3},
		"too many fragments": bytes.Repeat([]byte{0, 0, 0, 0}, maxFragments+1),
		"truncated":          {0x80, 0, 0, 100, 1, 2, 3},
		"fragments too long": append(append([]byte{0x00, 0x08, 0, 0}, make([]byte, 0x80000)...), 0x80, 0x10, 0, 0),
	}
	for name, junk := range cases {
		c := dialFrom(t, addrA, f.nfs)
		_ = c.c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.c.Write(junk)
		if name == "truncated" {
			c.c.(*net.TCPConn).CloseWrite()
		}
		_, err := io.ReadAll(c.c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: connection left open", name)
		}
	}
	// A record that is a reply, not a call, is ignored; the next call is answered.
	c, root := f.client("pi-a")
	_, _ = c.c.Write([]byte{0x80, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1})
	if st, _ := c.getattr(root); st != 0 {
		t.Fatalf("after a stray reply record: %d", st)
	}
	// Short garbage inside a well-formed record: GARBAGE_ARGS or a dropped record, and the
	// connection keeps working.
	for _, body := range [][]byte{{}, {0, 0, 0, 1}, {0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2}} {
		rec := append([]byte{0x80, 0, 0, byte(len(body))}, body...)
		_, _ = c.c.Write(rec)
	}
	if st, _ := c.getattr(root); st != 0 {
		t.Fatalf("after garbage records: %d", st)
	}
}

// One board not reading its replies does not stall another board.
func TestSlowBoardDoesNotStallOthers(t *testing.T) {
	f := newFixture(t)
	slow, root := f.client("pi-a")
	big := slow.walk(root, "tmp")
	st, fh, _ := slow.create(big, "big", 0, mode(0o644))
	wantStatus(t, "create", st, 0)
	slow.write(fh, 0, make([]byte, 1<<20), unstable)
	// Queue many 1 MiB reads and never read the replies.
	for range 64 {
		_, _ = slow.c.Write(slow.callMsg(progNFS, 3, 6, fh, uint64(0), uint32(1<<20)))
	}
	b, rootB := f.client("pi-b")
	host := b.walk(rootB, "etc", "hostname")
	for range 100 {
		if st, data := b.readAll(host); st != 0 || data != "base\n" {
			t.Fatalf("pi-b while pi-a stalls: %d %q", st, data)
		}
	}
}

// Replies to pipelined calls come back for every call, in whatever order they finish.
func TestPipelinedCalls(t *testing.T) {
	f := newFixture(t)
	c, root := f.client("pi-a")
	host := c.walk(root, "etc", "hostname")
	const n = 50
	var all []byte
	want := map[uint32]bool{}
	for range n {
		m := c.callMsg(progNFS, 3, 6, host, uint64(0), uint32(100))
		want[c.xid] = true
		all = append(all, m...)
	}
	_, _ = c.c.Write(all)
	_ = c.c.SetDeadline(time.Now().Add(20 * time.Second))
	for range n {
		rec, err := readRecord(c.br, nil, 1<<30)
		must(t, err)
		xid := binary.BigEndian.Uint32(rec)
		if !want[xid] {
			t.Fatalf("unexpected or duplicate xid %d", xid)
		}
		delete(want, xid)
	}
}
