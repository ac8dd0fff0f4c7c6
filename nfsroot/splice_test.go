package nfsroot

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
)

// pat is the content of the splice tests' files: never zero, and shifted data (a wrong
// offset, a lost or doubled byte) never matches it.
func pat(i int64) byte { return byte(i%251 + 1) }

func patBytes(off, n int64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = pat(off + int64(i))
	}
	return b
}

// readReply reads one READ reply record from br and returns its xid, count, eof and data.
func readReply(t *testing.T, br *bufio.Reader) (xid, count uint32, eof bool, data []byte) {
	t.Helper()
	rec, err := readRecord(br, nil, 4<<20)
	if err != nil {
		t.Fatalf("reading a READ reply: %v", err)
	}
	r := &xdrReader{b: rec}
	xid = r.u32()
	if r.u32() != rpcReply || r.u32() != msgAccepted {
		t.Fatalf("xid %d: not an accepted reply", xid)
	}
	r.u32()
	r.opaque(maxAuthBody)
	if st := r.u32(); st != acceptSuccess {
		t.Fatalf("xid %d: accept_stat %d", xid, st)
	}
	if st := r.u32(); st != 0 {
		t.Fatalf("xid %d: READ status %d", xid, st)
	}
	skipPostOpAttr(r)
	count = r.u32()
	eof = r.bool()
	data = r.opaque(maxIO)
	if r.err != nil || len(r.b) != 0 {
		t.Fatalf("xid %d: malformed READ reply (%v, %d bytes left over)", xid, r.err, len(r.b))
	}
	if int(count) != len(data) {
		t.Fatalf("xid %d: count %d, %d bytes of data", xid, count, len(data))
	}
	return xid, count, eof, data
}

// TestSplicedRead reads files big enough to be spliced (splice.go) with libnfs nfs-cat,
// go-nfs-client and READs at odd offsets and lengths (XDR padding), pipelined on one
// connection: every byte is the file's, replies never interleave, and the splice path
// was taken.
func TestSplicedRead(t *testing.T) {
	f := newFixture(t)
	const size = 3<<20 + 4093 // the last READ is short and needs padding
	must(t, os.WriteFile(filepath.Join(f.lower, "big"), patBytes(0, size), 0o644))
	want := patBytes(0, size)

	if got := runTool(t, "nfs-cat", f.libnfsURL("/big", "")); got != string(want) {
		t.Fatalf("nfs-cat: %d bytes, not the file's %d", len(got), size)
	}

	mc, err := nfsc.DialServiceAtPort("127.0.0.1", int(f.nfs.Port()))
	must(t, err)
	defer mc.Close()
	m := &nfsc.Mount{Client: mc}
	auth := rpc.AuthUnix{Machinename: "pi-c", GidLen: 1}
	v, err := m.Mount(exportPath("pi-c"), auth.Auth())
	must(t, err)
	r, err := v.Open("big")
	must(t, err)
	var back bytes.Buffer
	_, err = back.ReadFrom(r)
	must(t, err)
	if !bytes.Equal(back.Bytes(), want) {
		t.Fatalf("go-nfs-client: %d bytes, not the file's %d", back.Len(), size)
	}
	if f.srv.pipes.spliced.Load() == 0 {
		t.Fatal("no READ reply was spliced")
	}

	// Odd offsets and lengths, one at a time (spliced), then 8 in flight on one
	// connection (copied: see conn.pipe), each reply whole and the file's.
	c, root := f.client("pi-a")
	fh := c.walk(root, "big")
	type call struct {
		off int64
		n   uint32
	}
	calls := []call{{0, 1 << 20}, {1, 300001}, {4095, 1<<20 - 4096}, {size - 200003, 1 << 20},
		{3 << 20, 131072}, {12345, 131073}, {2<<20 + 7, 1<<20 - 7}, {size - 1, 1 << 20}}
	for _, k := range calls {
		sent := f.srv.pipes.spliced.Load()
		st, data := c.read(fh, uint64(k.off), k.n)
		wantStatus(t, "read", st, 0)
		end := min(k.off+int64(k.n), size)
		if !bytes.Equal(data, want[k.off:end]) {
			t.Fatalf("READ %d bytes at %d: %d bytes, not the file's", k.n, k.off, len(data))
		}
		if spliced := f.srv.pipes.spliced.Load() > sent; spliced != (end-k.off >= spliceMin) {
			t.Fatalf("READ %d bytes at %d: spliced %v", k.n, k.off, spliced)
		}
	}
	byXid := map[uint32]call{}
	var out bytes.Buffer
	for _, k := range calls {
		msg := c.callMsg(progNFS, 3, 6, fh, uint64(k.off), k.n)
		byXid[c.xid] = k
		out.Write(msg)
	}
	_ = c.c.SetDeadline(time.Now().Add(20 * time.Second))
	_, err = c.c.Write(out.Bytes())
	must(t, err)
	for range calls {
		xid, count, eof, data := readReply(t, c.br)
		k, ok := byXid[xid]
		if !ok {
			t.Fatalf("reply to unknown xid %d", xid)
		}
		delete(byXid, xid)
		end := min(k.off+int64(k.n), size)
		if !bytes.Equal(data, want[k.off:end]) || int64(count) != end-k.off {
			t.Fatalf("READ %d bytes at %d: %d bytes, not the file's", k.n, k.off, count)
		}
		if eof != (end == size) {
			t.Fatalf("READ %d bytes at %d: eof %v", k.n, k.off, eof)
		}
	}
	if n := f.srv.pipes.inUse(); n != 0 {
		t.Fatalf("%d pipes still held after every reply was read", n)
	}
}

// TestSplicedReadBiggerThanPipe: with pipes smaller than a READ (a kernel that refuses
// to raise them), the READ is copied, byte-exact; smaller READs are still spliced.
func TestSplicedReadBiggerThanPipe(t *testing.T) {
	f := newFixture(t)
	f.srv.pipes.mu.Lock()
	f.srv.pipes.size = 256 << 10
	f.srv.pipes.mu.Unlock()
	const size = 2<<20 + 3
	must(t, os.WriteFile(filepath.Join(f.lower, "big"), patBytes(0, size), 0o644))
	c, root := f.client("pi-a")
	fh := c.walk(root, "big")
	for _, k := range []struct {
		off     int64
		n       uint32
		spliced bool
	}{{0, 1 << 20, false}, {1 << 20, 256 << 10, true}, {1<<20 + 1, 256 << 10, false}, {5, 200 << 10, true}, {size - 150000, 1 << 20, true}} {
		sent := f.srv.pipes.spliced.Load()
		st, data := c.read(fh, uint64(k.off), k.n)
		wantStatus(t, "read", st, 0)
		end := min(k.off+int64(k.n), size)
		if !bytes.Equal(data, patBytes(k.off, end-k.off)) {
			t.Fatalf("READ %d at %d: %d bytes, not the file's", k.n, k.off, len(data))
		}
		if spliced := f.srv.pipes.spliced.Load() > sent; spliced != k.spliced {
			t.Fatalf("READ %d at %d with 256 KiB pipes: spliced %v, want %v", k.n, k.off, spliced, k.spliced)
		}
	}
}

// TestSplicedReadTruncated truncates a file while a spliced READ reply of it waits, in
// its pipe and the socket's buffers, for a client that does not read, then truncates and
// regrows it while READs run: every reply stays one well-formed record whose count is the
// data it carries (short only with EOF), each byte is the file's (or zero, where a
// truncation cut a page the reply still held, as a local read racing a truncate may see),
// and READs after the truncations see the final file, byte-exact.
func TestSplicedReadTruncated(t *testing.T) {
	f := newFixture(t)
	const size = 8 << 20
	p := filepath.Join(f.upper("pi-a"), "shrinks")
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, patBytes(0, size), 0o644))
	_, root := f.client("pi-a")
	// A client that does not read: a small receive buffer, set before connecting.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: addrA.AsSlice()}, Timeout: 5 * time.Second,
		Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
		}}
	nc, err := d.Dial("tcp", f.nfs.String())
	must(t, err)
	defer nc.Close()
	c := &client{t: t, c: nc, br: bufio.NewReader(nc), xid: 100}
	fh := c.walk(root, "shrinks")
	check := func(off int64, count uint32, eof bool, data []byte) {
		t.Helper()
		if count > 1<<20 {
			t.Fatalf("READ at %d: count %d", off, count)
		}
		for i, b := range data {
			if b != pat(off+int64(i)) && b != 0 {
				t.Fatalf("READ at %d: byte %d is %d, neither the file's %d nor a truncated page's 0", off, i, b, pat(off+int64(i)))
			}
		}
		if count < 1<<20 && !eof {
			t.Fatalf("READ at %d: short (%d) without EOF", off, count)
		}
	}
	// READs whose replies cannot leave, until one's data sits in a pipe when the file
	// shrinks under it, in the middle of a page.
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	n := sendUntilHeld(t, f, c, fh, 2<<20)
	must(t, os.Truncate(p, 2<<20+1000))
	for range n {
		_, count, eof, data := readReply(t, c.br)
		if count != 1<<20 {
			t.Fatalf("READ spliced before the truncation: count %d, want %d", count, 1<<20)
		}
		check(2<<20, count, eof, data)
	}
	// READs while the file is cut and regrown at odd sizes.
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if err := os.Truncate(p, size/2+int64(i*104729)%(size/2)); err != nil {
				done <- err
				return
			}
			fw, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				done <- err
				return
			}
			time.Sleep(time.Millisecond)
			_, err = fw.WriteAt(patBytes(0, size), 0)
			fw.Close()
			if err != nil {
				done <- err
				return
			}
		}
	}()
	for i := range 200 {
		off := int64(i%8) << 20
		_, _ = nc.Write(c.callMsg(progNFS, 3, 6, fh, uint64(off), uint32(1<<20)))
		_, count, eof, data := readReply(t, c.br)
		check(off, count, eof, data)
	}
	close(stop)
	must(t, <-done)
	// After the truncations: the final file, exactly.
	must(t, os.Truncate(p, 3<<20+1000))
	st, data := c.read(fh, 3<<20, 1<<20)
	wantStatus(t, "read after truncate", st, 0)
	if !bytes.Equal(data, patBytes(3<<20, 1000)) {
		t.Fatalf("READ after truncate: %d bytes, want the file's last 1000", len(data))
	}
	st, data = c.read(fh, 1<<20, 1<<20)
	wantStatus(t, "read after truncate", st, 0)
	if !bytes.Equal(data, patBytes(1<<20, 1<<20)) {
		t.Fatal("READ after truncate differs from the file")
	}
	waitFor(t, "the pipes given back", func() bool { return f.srv.pipes.inUse() == 0 })
	t.Logf("%d replies spliced", f.srv.pipes.spliced.Load())
}

// sendUntilHeld sends 1 MiB READs at off one at a time, each alone on the connection
// (so spliced), without reading their replies, until one's pipe cannot empty into the
// full socket; it returns how many it sent.
func sendUntilHeld(t *testing.T, f *fixture, c *client, fh []byte, off uint64) int {
	t.Helper()
	for n := 1; n <= 64; n++ {
		spliced := f.srv.pipes.spliced.Load()
		_, err := c.c.Write(c.callMsg(progNFS, 3, 6, fh, off, uint32(1<<20)))
		must(t, err)
		// Its reply is spliced; then either its pipe is held or the socket took it all.
		waitFor(t, "the READ spliced", func() bool { return f.srv.pipes.spliced.Load() > spliced })
		for range 20 {
			if f.srv.pipes.inUse() > 0 {
				time.Sleep(20 * time.Millisecond)
				if f.srv.pipes.inUse() > 0 {
					return n
				}
			}
			time.Sleep(time.Millisecond)
		}
	}
	t.Fatal("64 unread 1 MiB replies and no pipe held")
	return 0
}

// TestSplicedReadClientStopsReading: a client that stops reading in the middle of a
// spliced reply is closed after the write timeout; its pipes are closed (they still hold
// data), its bytes are given back, and the server goes on serving.
func TestSplicedReadClientStopsReading(t *testing.T) {
	f := newFixture(t)
	f.stop()
	f.limits = func(l *limits) { l.writeTimeout = 500 * time.Millisecond }
	f.start()
	must(t, os.WriteFile(filepath.Join(f.lower, "big"), patBytes(0, 16<<20), 0o644))
	c, root := f.client("pi-a")
	fh := c.walk(root, "big")
	// Replies not read, until one stops in the middle of its splice into the socket.
	sendUntilHeld(t, f, c, fh, 1<<20)
	waitFor(t, "the stuck connection closed and everything given back", func() bool {
		s := f.srv.Stats()
		return s.Conns == 0 && s.Reserved == 0 && f.srv.pipes.inUse() == 0
	})
	other, oroot := f.client("pi-b")
	ofh := other.walk(oroot, "big")
	st, data := other.read(ofh, 1<<20, 1<<20)
	wantStatus(t, "read by another board", st, 0)
	if !bytes.Equal(data, patBytes(1<<20, 1<<20)) {
		t.Fatalf("READ by another board: %d bytes, not the file's", len(data))
	}
}
