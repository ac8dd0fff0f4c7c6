package nfsroot

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/overlay"
	"github.com/pifleet/pifleet/test/require"
	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/xdr"
)

// Test boards: each mounts only from its own loopback address (all of 127/8 is lo).
var (
	addrA     = netip.MustParseAddr("127.0.0.2") // board pi-a
	addrB     = netip.MustParseAddr("127.0.0.3") // board pi-b
	addrC     = netip.MustParseAddr("127.0.0.1") // board pi-c: for clients that cannot pick a source address
	addrOther = netip.MustParseAddr("127.0.0.9") // no board
)

func needRoot(t testing.TB) {
	t.Helper()
	require.Root(t, "nfsroot tests: the overlay keeps real owners, device nodes and trusted.* xattrs (CI runs as root)")
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// fixture is a server with three boards over one shared lower tree.
type fixture struct {
	t       testing.TB
	dir     string
	lower   string
	boards  []string
	srv     *Server
	nfs     netip.AddrPort // NFS listener (answers MOUNT too)
	mount   netip.AddrPort // separate MOUNT listener
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	squash  bool
	exps    []Export      // what the server was given
	limits  func(*limits) // adjusts the server's limits before it serves
	observe func(Call)    // the server's Options.Observer
	exact   bool          // the server's Options.ExactArrivals

	mu      sync.Mutex
	onMount []string // board@client for every OnMount call
}

var boardAddr = map[string]netip.Addr{"pi-a": addrA, "pi-b": addrB, "pi-c": addrC}

func exportPath(board string) string { return "/boards/" + board }

func newFixture(t testing.TB) *fixture {
	t.Helper()
	needRoot(t)
	f := &fixture{t: t, dir: t.TempDir(), boards: []string{"pi-a", "pi-b", "pi-c"}}
	f.lower = filepath.Join(f.dir, "lower")
	f.makeLower()
	f.start()
	t.Cleanup(f.stop)
	return f
}

// makeLower builds a small Debian-like base tree.
func (f *fixture) makeLower() {
	t := f.t
	put := func(name, data string, mode os.FileMode, uid, gid int) {
		p := filepath.Join(f.lower, name)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(data), 0o600))
		must(t, os.Chown(p, uid, gid))
		must(t, syscall.Chmod(p, uint32(mode))) // raw bits: os.Chmod drops 04000/02000/01000
	}
	put("etc/hostname", "base\n", 0o644, 0, 0)
	put("etc/shadow", "root:*:1::::::\n", 0o640, 0, 42)
	put("bin/sh", "#!binary\n", 0o755, 0, 0)
	put("usr/bin/sudo", "sudo binary\n", 0o4755, 0, 0)
	put("home/user/secret", "user's secret\n", 0o600, 1000, 1000)
	put("srv/deep/a/b/c/file", "deep\n", 0o644, 0, 0)
	must(t, os.MkdirAll(filepath.Join(f.lower, "tmp"), 0o755))
	must(t, syscall.Chmod(filepath.Join(f.lower, "tmp"), 0o1777))
	must(t, os.Chown(filepath.Join(f.lower, "home/user"), 1000, 1000))
}

func (f *fixture) stateDir(board string) string {
	return filepath.Join(f.dir, "boards", board, "state")
}
func (f *fixture) upper(board string) string { return filepath.Join(f.dir, "boards", board, "upper") }

func (f *fixture) exports() []Export {
	var exps []Export
	for _, b := range f.boards {
		fs, err := overlay.New(overlay.Options{
			Upper:  f.upper(b),
			Work:   filepath.Join(f.dir, "boards", b, "work"),
			Lowers: []string{f.lower},
		})
		must(f.t, err)
		a := boardAddr[b]
		exps = append(exps, Export{
			Board:      b,
			Path:       exportPath(b),
			FS:         fs,
			Allow:      func(c netip.Addr) bool { return c == a },
			RootSquash: f.squash,
			StateDir:   f.stateDir(b),
		})
	}
	return exps
}

// start runs a fresh Server (as after a restart) on new ephemeral ports.
func (f *fixture) start() {
	t := f.t
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	f.srv = New(Options{Logger: log, OnMount: func(board string, client netip.Addr) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.onMount = append(f.onMount, board+"@"+client.String())
	}, Observer: f.observe, ExactArrivals: f.exact})
	if f.limits != nil {
		f.limits(&f.srv.lim)
		f.srv.bytes = newBudget(f.srv.lim.totalBytes)
	}
	f.exps = f.exports()
	f.srv.SetExports(f.exps)
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	lm, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	f.nfs = netip.MustParseAddrPort(ln.Addr().String())
	f.mount = netip.MustParseAddrPort(lm.Addr().String())
	f.wg.Add(2)
	go func() { defer f.wg.Done(); _ = f.srv.ServeNFS(ctx, ln) }()
	go func() { defer f.wg.Done(); _ = f.srv.ServeMount(ctx, lm) }()
}

func (f *fixture) stop() {
	if f.cancel != nil {
		f.cancel()
		f.wg.Wait()
		f.cancel = nil
		f.srv.SetExports(nil) // closes handle tables and open files
	}
}

func (f *fixture) restart() {
	f.stop()
	f.start()
}

// client is a minimal ONC RPC client over TCP that can choose its source address and its
// AUTH_SYS identity; arguments are encoded with go-nfs-client's xdr and types.
type client struct {
	t    testing.TB
	c    net.Conn
	br   *bufio.Reader
	xid  uint32
	uid  uint32
	gid  uint32
	gids []uint32
}

func dialFrom(t testing.TB, from netip.Addr, to netip.AddrPort) *client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", to.String())
	must(t, err)
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, br: bufio.NewReader(c), xid: 100}
}

func (c *client) as(uid, gid uint32, gids ...uint32) *client {
	c.uid, c.gid, c.gids = uid, gid, gids
	return c
}

func (c *client) authSys() []byte {
	var b bytes.Buffer
	must(c.t, xdr.Write(&b, struct {
		Stamp   uint32
		Machine string
		UID     uint32
		GID     uint32
		Gids    []uint32
	}{1, "test", c.uid, c.gid, c.gids}))
	return b.Bytes()
}

// tReply is what came back: accepted with an accept_stat, or denied.
type tReply struct {
	denied bool
	stat   uint32
	body   *bytes.Reader
}

// raw sends one record as is and reads one reply record.
func (c *client) raw(rec []byte) (tReply, error) {
	_ = c.c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.c.Write(rec); err != nil {
		return tReply{}, err
	}
	// Replies to anything sent before (garbage records the test wrote) are skipped.
	want := binary.BigEndian.Uint32(rec[4:])
	var r *bytes.Reader
	var hdr struct{ Xid, Mtype, ReplyStat uint32 }
	for range 1000 {
		reply, err := readRecord(c.br, nil, 1<<30)
		if err != nil {
			return tReply{}, err
		}
		r = bytes.NewReader(reply)
		if err := xdr.Read(r, &hdr); err != nil {
			return tReply{}, err
		}
		if hdr.Xid == want {
			break
		}
	}
	if hdr.ReplyStat == msgDenied {
		st, _ := xdr.ReadUint32(r)
		return tReply{denied: true, stat: st, body: r}, nil
	}
	var verf struct {
		Flavor uint32
		Body   []byte
	}
	if err := xdr.Read(r, &verf); err != nil {
		return tReply{}, err
	}
	st, err := xdr.ReadUint32(r)
	return tReply{stat: st, body: r}, err
}

func (c *client) callMsg(prog, vers, proc uint32, args ...any) []byte {
	var b bytes.Buffer
	b.Write(make([]byte, 4))
	c.xid++
	for _, v := range []uint32{c.xid, rpcCall, 2, prog, vers, proc, authSys} {
		_ = binary.Write(&b, binary.BigEndian, v)
	}
	must(c.t, xdr.Write(&b, c.authSys()))
	_ = binary.Write(&b, binary.BigEndian, [2]uint32{0, 0})
	for _, a := range args {
		if ra, ok := a.(rawArgs); ok {
			b.Write(ra)
			continue
		}
		must(c.t, xdr.Write(&b, a))
	}
	rec := b.Bytes()
	binary.BigEndian.PutUint32(rec, 0x80000000|uint32(len(rec)-4))
	return rec
}

// rawArgs are arguments already in XDR.
type rawArgs []byte

// rawNFS makes one NFS call with pre-encoded arguments and returns the result bytes after
// the status, decoded by hand: the reflection decoder costs more than the server on the
// benchmark's single pinned CPU.
func (c *client) rawNFS(proc uint32, args []byte) (uint32, *xdrReader) {
	r, err := c.raw(c.callMsg(progNFS, 3, proc, rawArgs(args)))
	must(c.t, err)
	if r.denied || r.stat != acceptSuccess {
		c.t.Fatalf("proc %d: denied=%v stat=%d", proc, r.denied, r.stat)
	}
	rest := make([]byte, r.body.Len())
	_, _ = r.body.Read(rest)
	x := &xdrReader{b: rest}
	return x.u32(), x
}

// call makes one RPC; it fails the test unless the call was accepted with SUCCESS.
func (c *client) call(prog, proc uint32, args ...any) *bytes.Reader {
	c.t.Helper()
	r, err := c.raw(c.callMsg(prog, 3, proc, args...))
	must(c.t, err)
	if r.denied || r.stat != acceptSuccess {
		c.t.Fatalf("prog %d proc %d: denied=%v stat=%d", prog, proc, r.denied, r.stat)
	}
	return r.body
}

func (c *client) nfs(proc uint32, args ...any) (uint32, *bytes.Reader) {
	c.t.Helper()
	body := c.call(progNFS, proc, args...)
	st, err := xdr.ReadUint32(body)
	must(c.t, err)
	return st, body
}

func read[T any](t testing.TB, r io.Reader) T {
	t.Helper()
	var v T
	must(t, xdr.Read(r, &v))
	return v
}

// mnt mounts path and returns the MOUNT status and root handle.
func (c *client) mnt(path string) (uint32, []byte) {
	c.t.Helper()
	body := c.call(progMount, 1, path)
	st, err := xdr.ReadUint32(body)
	must(c.t, err)
	if st != 0 {
		return st, nil
	}
	fh, err := xdr.ReadOpaque(body)
	must(c.t, err)
	return st, fh
}

// mustMount mounts the board's export from the board's address.
func (f *fixture) client(board string) (*client, []byte) {
	f.t.Helper()
	c := dialFrom(f.t, boardAddr[board], f.nfs)
	st, fh := c.mnt(exportPath(board))
	if st != 0 {
		f.t.Fatalf("mount %s: status %d", board, st)
	}
	return c, fh
}

type lookupRes struct {
	FH      []byte
	Attr    nfsc.PostOpAttr
	DirAttr nfsc.PostOpAttr
}

func (c *client) lookup(dir []byte, name string) (uint32, []byte, nfsc.Fattr) {
	c.t.Helper()
	st, r := c.nfs(3, nfsc.Diropargs3{FH: dir, Filename: name})
	if st != 0 {
		return st, nil, nfsc.Fattr{}
	}
	res := read[lookupRes](c.t, r)
	return 0, res.FH, res.Attr.Attr
}

// walk looks up a slash path from dir and fails the test if any step fails.
func (c *client) walk(dir []byte, names ...string) []byte {
	c.t.Helper()
	for _, n := range names {
		st, fh, _ := c.lookup(dir, n)
		if st != 0 {
			c.t.Fatalf("lookup %s: status %d", n, st)
		}
		dir = fh
	}
	return dir
}

func (c *client) getattr(fh []byte) (uint32, nfsc.Fattr) {
	c.t.Helper()
	st, r := c.nfs(1, fh)
	if st != 0 {
		return st, nfsc.Fattr{}
	}
	return 0, read[nfsc.Fattr](c.t, r)
}

func (c *client) read(fh []byte, off uint64, n uint32) (uint32, []byte) {
	c.t.Helper()
	st, r := c.nfs(6, fh, off, n)
	if st != 0 {
		return st, nil
	}
	res := read[struct {
		Attr  nfsc.PostOpAttr
		Count uint32
		EOF   bool
		Data  []byte
	}](c.t, r)
	return 0, res.Data
}

func (c *client) readAll(fh []byte) (uint32, string) {
	st, b := c.read(fh, 0, 1<<20)
	return st, string(b)
}

type writeRes struct {
	Wcc       nfsc.WccData
	Count     uint32
	Committed uint32
	Verf      [8]byte
}

func (c *client) write(fh []byte, off uint64, data []byte, stable uint32) (uint32, writeRes) {
	c.t.Helper()
	st, r := c.nfs(7, fh, off, uint32(len(data)), stable, data)
	if st != 0 {
		return st, writeRes{}
	}
	return 0, read[writeRes](c.t, r)
}

func (c *client) commit(fh []byte) (uint32, [8]byte) {
	c.t.Helper()
	st, r := c.nfs(21, fh, uint64(0), uint32(0))
	if st != 0 {
		return st, [8]byte{}
	}
	res := read[struct {
		Wcc  nfsc.WccData
		Verf [8]byte
	}](c.t, r)
	return 0, res.Verf
}

type createdRes struct {
	FH   nfsc.PostOpFH3
	Attr nfsc.PostOpAttr
}

func mode(m uint32) nfsc.Sattr3 { return nfsc.Sattr3{Mode: nfsc.SetMode{SetIt: true, Mode: m}} }

func (c *client) create(dir []byte, name string, how uint32, attr nfsc.Sattr3) (uint32, []byte, nfsc.Fattr) {
	c.t.Helper()
	st, r := c.nfs(8, nfsc.Diropargs3{FH: dir, Filename: name}, how, attr)
	return created(c.t, st, r)
}

func (c *client) createExclusive(dir []byte, name string, verf [8]byte) (uint32, []byte, nfsc.Fattr) {
	c.t.Helper()
	st, r := c.nfs(8, nfsc.Diropargs3{FH: dir, Filename: name}, uint32(createExclusive), verf)
	return created(c.t, st, r)
}

func created(t testing.TB, st uint32, r io.Reader) (uint32, []byte, nfsc.Fattr) {
	t.Helper()
	if st != 0 {
		return st, nil, nfsc.Fattr{}
	}
	res := read[createdRes](t, r)
	return 0, res.FH.FH, res.Attr.Attr
}

func (c *client) mkdir(dir []byte, name string, attr nfsc.Sattr3) (uint32, []byte, nfsc.Fattr) {
	c.t.Helper()
	st, r := c.nfs(9, nfsc.Diropargs3{FH: dir, Filename: name}, attr)
	return created(c.t, st, r)
}

func (c *client) symlink(dir []byte, name, target string) (uint32, []byte, nfsc.Fattr) {
	c.t.Helper()
	st, r := c.nfs(10, nfsc.Diropargs3{FH: dir, Filename: name}, nfsc.Sattr3{}, target)
	return created(c.t, st, r)
}

func (c *client) mknod(dir []byte, name string, typ uint32, attr nfsc.Sattr3, major, minor uint32) (uint32, []byte, nfsc.Fattr) {
	c.t.Helper()
	args := []any{nfsc.Diropargs3{FH: dir, Filename: name}, typ, attr}
	if typ == nf3Chr || typ == nf3Blk {
		args = append(args, major, minor)
	}
	st, r := c.nfs(11, args...)
	return created(c.t, st, r)
}

func (c *client) setattr(fh []byte, attr nfsc.Sattr3) uint32 {
	c.t.Helper()
	st, _ := c.nfs(2, fh, attr, uint32(0))
	return st
}

func (c *client) remove(dir []byte, name string) uint32 {
	c.t.Helper()
	st, _ := c.nfs(12, nfsc.Diropargs3{FH: dir, Filename: name})
	return st
}

func (c *client) rename(fdir []byte, fname string, tdir []byte, tname string) uint32 {
	c.t.Helper()
	st, _ := c.nfs(14, nfsc.Diropargs3{FH: fdir, Filename: fname}, nfsc.Diropargs3{FH: tdir, Filename: tname})
	return st
}

func (c *client) link(fh, dir []byte, name string) uint32 {
	c.t.Helper()
	st, _ := c.nfs(15, fh, nfsc.Diropargs3{FH: dir, Filename: name})
	return st
}

func (c *client) access(fh []byte, want uint32) (uint32, uint32) {
	c.t.Helper()
	st, r := c.nfs(4, fh, want)
	if st != 0 {
		return st, 0
	}
	res := read[struct {
		Attr   nfsc.PostOpAttr
		Access uint32
	}](c.t, r)
	return 0, res.Access
}

type entryPlus struct {
	FileID uint64
	Name   string
	Cookie uint64
	Attr   nfsc.PostOpAttr
	FH     nfsc.PostOpFH3
}

// readdirplus lists a whole directory, following cookies.
func (c *client) readdirplus(dir []byte) (uint32, []entryPlus) {
	c.t.Helper()
	var out []entryPlus
	cookie := uint64(0)
	var verf [8]byte
	for range 10000 {
		st, r := c.nfs(17, dir, cookie, verf, uint32(8192), uint32(32768))
		if st != 0 {
			return st, out
		}
		_ = read[nfsc.PostOpAttr](c.t, r)
		verf = read[[8]byte](c.t, r)
		for read[bool](c.t, r) {
			e := read[entryPlus](c.t, r)
			if e.Name != "." && e.Name != ".." {
				out = append(out, e)
			}
			cookie = e.Cookie
		}
		if read[bool](c.t, r) {
			return 0, out
		}
	}
	c.t.Fatal("readdirplus did not reach eof")
	return 0, nil
}

func wantStatus(t testing.TB, what string, got, want uint32) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: status %d, want %d", what, got, want)
	}
}

var _ = fmt.Sprint
