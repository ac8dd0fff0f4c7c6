package nfsroot

import (
	"bytes"
	"testing"
)

// The pool hands out buffers of its classes, keeps only those, and a grown record keeps
// its bytes; a call's cost covers the buffers it holds.
func TestBufPool(t *testing.T) {
	var p bufPool
	for _, n := range []int{0, 1, poolMin + poolSlack, poolMin + poolSlack + 1, 128<<10 + 200, maxRecord} {
		b := p.get(n)
		if len(b) != 0 || cap(b) < n || cap(b) != bufCap(n) || poolClass(cap(b)) < 0 {
			t.Fatalf("get(%d): len %d cap %d (bufCap %d)", n, len(b), cap(b), bufCap(n))
		}
		p.put(b)
	}
	if b := p.get(maxRecord + 1); cap(b) != maxRecord+1 {
		t.Fatalf("get over the largest class: cap %d", cap(b))
	}
	// A buffer of another capacity (a reply that outgrew its buffer) is not kept.
	p.put(make([]byte, 0, 100<<10))
	if b := p.get(100 << 10); cap(b) != bufCap(100<<10) {
		t.Fatalf("got a foreign buffer back: cap %d", cap(b))
	}
	small := append(p.get(0), "record"...)
	big := p.grow(small, 64<<10)
	if !bytes.Equal(big, []byte("record")) || cap(big) < 64<<10 {
		t.Fatalf("grow: %q, cap %d", big, cap(big))
	}
	// READ of 128 KiB: its reply fits the buffer the cost was charged for.
	h := &rpcCallHdr{prog: progNFS, vers: 3, proc: 6}
	w := &xdrWriter{}
	w.opaque(make([]byte, fhSize))
	w.u64(0)
	w.u32(128 << 10)
	h.args = w.b
	rec := p.get(0)
	if got, want := callCost(h, rec), int64(cap(rec)+bufCap(1<<10+128<<10)); got != want {
		t.Fatalf("callCost %d, want %d", got, want)
	}
	if replySize(h) > bufCap(replySize(h)) || bufCap(replySize(h)) > 2*(128<<10) {
		t.Fatalf("reply of a 128 KiB READ: size %d in a %d buffer", replySize(h), bufCap(replySize(h)))
	}
}

// A GETACL with the largest ACLs the server stores fits the buffer its cost was charged for.
func TestGetACLReplyFits(t *testing.T) {
	h := &rpcCallHdr{prog: progNFSACL, vers: 3, proc: 1}
	// Two ACLs of maxACLEntries entries (type, id, perm), with their counts, attributes and
	// the RPC header.
	worst := 2*(maxACLEntries*12+8) + 4 + 88 + 4 + 64
	if bufCap(replySize(h)) < worst {
		t.Fatalf("GETACL reply buffer %d bytes, the largest reply %d", bufCap(replySize(h)), worst)
	}
}
