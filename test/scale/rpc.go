package scale

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// RPC program numbers and the NFSv3 procedures the replay uses.
const (
	progPortmap = 100000
	progNFS     = 100003
	progMount   = 100005
	progACL     = 100227 // NFS_ACL

	procNull        = 0
	procGetattr     = 1
	procLookup      = 3
	procRead        = 6
	procWrite       = 7
	procCreate      = 8
	procReaddirplus = 17
	procFsinfo      = 19
	procCommit      = 21
)

// callTimeout guards one RPC; a board's kernel would wait longer (timeo=600), so hitting
// it is a failure, never a normal path.
const callTimeout = 60 * time.Second

// maxRecord bounds a reply record (a READ of 128 KiB plus headers is far below it).
const maxRecord = 4 << 20

// rpcConn is one board's RPC connection over TCP from its own address. Calls go with
// AUTH_SYS root credentials as a board's kernel sends them, or with a caller's (send); a
// reader goroutine takes the replies off the socket as they come, as the kernel does, so
// several calls can be outstanding (matched by xid) without the server ever waiting on a
// full socket.
type rpcConn struct {
	c       net.Conn
	xid     uint32
	machine string
	cred    []byte        // root's AUTH_SYS body
	delay   time.Duration // the board's think time after each reply
	buf     []byte
	replies chan rpcReply // from the reader goroutine
	quit    chan struct{} // closed by Close: the reader stops
	timer   *time.Timer   // callTimeout for one wait
	once    sync.Once
}

// rpcReply is one record the reader took off the socket, or why it stopped.
type rpcReply struct {
	rec []byte
	err error
}

// dialRPC connects from (the board's address) to the server's port.
func dialRPC(from netip.Addr, to netip.AddrPort, machine string, delay time.Duration) (*rpcConn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", to.String())
	if err != nil {
		return nil, fmt.Errorf("connect %s from %s: %w", to, from, err)
	}
	r := &rpcConn{c: c, xid: 1, machine: machine, delay: delay,
		replies: make(chan rpcReply, 64), quit: make(chan struct{}), timer: time.NewTimer(time.Hour)}
	r.timer.Stop()
	r.cred = r.authSys(traceCred{})
	go r.read(bufio.NewReaderSize(c, 256<<10))
	return r, nil
}

// authSys encodes an AUTH_SYS credential body from this board.
func (r *rpcConn) authSys(c traceCred) []byte {
	var e enc
	e.u32(uint32(time.Now().Unix()))
	e.str(r.machine)
	e.u32(c.uid)
	e.u32(c.gid)
	e.u32(uint32(len(c.gids)))
	for _, g := range c.gids {
		e.u32(g)
	}
	return e.b
}

// read hands each reply record to the waiting side until the connection fails or closes.
func (r *rpcConn) read(br *bufio.Reader) {
	for {
		rec, err := readRecord(br)
		select {
		case r.replies <- rpcReply{rec, err}:
		case <-r.quit:
			return
		}
		if err != nil {
			return
		}
	}
}

// Close ends the connection and its reader.
func (r *rpcConn) Close() error {
	r.once.Do(func() { close(r.quit) })
	return r.c.Close()
}

// send sends one call with the given AUTH_SYS body (nil: root) and returns its xid.
func (r *rpcConn) send(prog, vers, proc uint32, cred, args []byte) (uint32, error) {
	if cred == nil {
		cred = r.cred
	}
	r.xid++
	e := enc{b: r.buf[:0]}
	e.u32(0) // record mark, filled in below
	e.u32(r.xid)
	e.u32(0) // CALL
	e.u32(2) // RPC version
	e.u32(prog)
	e.u32(vers)
	e.u32(proc)
	e.u32(1) // AUTH_SYS
	e.opaque(cred)
	e.u32(0) // verifier AUTH_NONE
	e.u32(0)
	e.b = append(e.b, args...)
	binary.BigEndian.PutUint32(e.b, 0x80000000|uint32(len(e.b)-4))
	r.buf = e.b
	_ = r.c.SetWriteDeadline(time.Now().Add(callTimeout))
	if _, err := r.c.Write(e.b); err != nil {
		return 0, fmt.Errorf("rpc %d/%d send: %w", prog, proc, err)
	}
	return r.xid, nil
}

// rpcRefused is a reply whose call the server did not run (accept_stat not SUCCESS).
type rpcRefused struct{ xid, stat uint32 }

func (e *rpcRefused) Error() string { return fmt.Sprintf("rpc xid %d: accept_stat %d", e.xid, e.stat) }

// recv waits (at most callTimeout) for the next reply, thinks (delay), and returns its
// xid and the result body after a SUCCESS accept_stat.
func (r *rpcConn) recv() (uint32, *dec, error) {
	r.timer.Reset(callTimeout)
	var rep rpcReply
	select {
	case rep = <-r.replies:
		r.timer.Stop()
	case <-r.timer.C:
		return 0, nil, fmt.Errorf("rpc: no reply in %v", callTimeout)
	}
	if rep.err != nil {
		return 0, nil, fmt.Errorf("rpc reply: %w", rep.err)
	}
	pause(r.delay)
	d := &dec{b: rep.rec}
	xid := d.u32()
	if d.u32() != 1 || d.u32() != 0 { // REPLY, MSG_ACCEPTED
		return xid, nil, fmt.Errorf("rpc xid %d: call denied", xid)
	}
	d.u32()    // verifier flavor
	d.opaque() // verifier body
	if st := d.u32(); st != 0 {
		return xid, nil, &rpcRefused{xid: xid, stat: st}
	}
	return xid, d, d.err
}

// call sends one call as root and waits for its reply, with nothing else outstanding.
func (r *rpcConn) call(prog, vers, proc uint32, args []byte) (*dec, error) {
	xid, err := r.send(prog, vers, proc, nil, args)
	if err != nil {
		return nil, err
	}
	got, d, err := r.recv()
	if err != nil {
		return nil, fmt.Errorf("rpc %d/%d: %w", prog, proc, err)
	}
	if got != xid {
		return nil, fmt.Errorf("rpc %d/%d: reply xid %d, want %d", prog, proc, got, xid)
	}
	return d, nil
}

// readRecord reads one record-marked message (all its fragments).
func readRecord(br *bufio.Reader) ([]byte, error) {
	var out []byte
	for range 1024 {
		var hdr [4]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return nil, err
		}
		h := binary.BigEndian.Uint32(hdr[:])
		n := int(h & 0x7fffffff)
		if len(out)+n > maxRecord {
			return nil, fmt.Errorf("record over %d bytes", maxRecord)
		}
		start := len(out)
		out = append(out, make([]byte, n)...)
		if _, err := io.ReadFull(br, out[start:]); err != nil {
			return nil, err
		}
		if h&0x80000000 != 0 {
			return out, nil
		}
	}
	return nil, errors.New("record of more than 1024 fragments")
}

// enc appends XDR.
type enc struct{ b []byte }

func (e *enc) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *enc) opaque(p []byte) {
	e.u32(uint32(len(p)))
	e.b = append(e.b, p...)
	for len(e.b)%4 != 0 {
		e.b = append(e.b, 0)
	}
}
func (e *enc) str(s string) { e.opaque([]byte(s)) }

// dec reads XDR; the first short read sets err and every later read returns zero.
type dec struct {
	b   []byte
	err error
}

var errShort = errors.New("short XDR reply")

func (d *dec) take(n int) []byte {
	if d.err != nil || n < 0 || len(d.b) < n {
		d.err = errShort
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) u32() uint32 {
	p := d.take(4)
	if p == nil {
		return 0
	}
	return binary.BigEndian.Uint32(p)
}

func (d *dec) u64() uint64 {
	p := d.take(8)
	if p == nil {
		return 0
	}
	return binary.BigEndian.Uint64(p)
}

func (d *dec) opaque() []byte {
	n := int(d.u32())
	if n > maxRecord {
		d.err = errShort
		return nil
	}
	p := d.take(n)
	d.take((4 - n%4) % 4)
	return p
}

// fattr is what the replay needs of an fattr3.
type fattr struct {
	typ  uint32
	size uint64
}

// fattr3 reads a whole fattr3 (84 bytes).
func (d *dec) fattr3() fattr {
	a := fattr{typ: d.u32()}
	d.take(16) // mode, nlink, uid, gid
	a.size = d.u64()
	d.take(84 - 28)
	return a
}

// postOpAttr reads a post_op_attr; ok is false when the server sent none.
func (d *dec) postOpAttr() (fattr, bool) {
	if d.u32() == 0 {
		return fattr{}, false
	}
	return d.fattr3(), true
}

// wccData skips a wcc_data.
func (d *dec) wccData() {
	if d.u32() != 0 {
		d.take(24)
	}
	d.postOpAttr()
}
