package nfsroot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/test/require"
	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
	"golang.org/x/sys/unix"
)

// tACE is an ACL entry as the tests write it: tag, id (for named entries), perm.
type tACE struct{ tag, id, perm uint32 }

// kernelACLXattr writes a posix_acl xattr value by hand, as an image's files carry them
// (the kernel checks it when it is set).
func kernelACLXattr(aces ...tACE) []byte {
	b := []byte{2, 0, 0, 0}
	for _, a := range aces {
		id := a.id
		if a.tag != aclUser && a.tag != aclGroup {
			id = aclUndefinedID
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(a.tag))
		b = binary.LittleEndian.AppendUint16(b, uint16(a.perm))
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	return b
}

// getfacl runs getfacl on a path of the server's disk (an image lower or a board's upper)
// and returns its entries without comments, one per line.
func getfacl(t *testing.T, p string) string {
	t.Helper()
	require.Tool(t, "getfacl", "acl")
	out, err := exec.Command("getfacl", "-cpn", p).CombinedOutput()
	if err != nil {
		t.Fatalf("getfacl %s: %v\n%s", p, err, out)
	}
	return strings.TrimSpace(string(out))
}

type tACLs struct {
	mode          uint32
	uid, gid      uint32
	mask          uint32
	access, deflt []tACE
	accessCount   uint32
	defaultCount  uint32
}

// getacl makes an NFS_ACL GETACL call.
func (c *client) getacl(fh []byte, mask uint32) (uint32, tACLs) {
	c.t.Helper()
	var args bytes.Buffer
	args.Write(xdrOpaque(fh))
	args.Write(be(mask))
	body := c.call3(progNFSACL, aclProcGetACL, args.Bytes())
	r := &xdrReader{b: body}
	st := r.u32()
	var res tACLs
	if r.bool() {
		a := r.fixed(84)
		res.mode = binary.BigEndian.Uint32(a[4:])
		res.uid, res.gid = binary.BigEndian.Uint32(a[12:]), binary.BigEndian.Uint32(a[16:])
	}
	if st != 0 {
		return st, res
	}
	res.mask = r.u32()
	readList := func(flag uint32) (uint32, []tACE) {
		n := r.u32()
		var out []tACE
		for range r.u32() {
			a := tACE{tag: r.u32(), id: r.u32(), perm: r.u32()}
			if a.tag&nfsACLDefault != flag {
				c.t.Fatalf("entry %+v: default flag %#x", a, flag)
			}
			a.tag &^= nfsACLDefault
			out = append(out, a)
		}
		return n, out
	}
	res.accessCount, res.access = readList(0)
	res.defaultCount, res.deflt = readList(nfsACLDefault)
	if r.err != nil || len(r.b) != 0 {
		c.t.Fatalf("GETACL reply: %v, %d bytes left", r.err, len(r.b))
	}
	return st, res
}

// setaclArgs encodes SETACL arguments the way the Linux client does.
func setaclArgs(fh []byte, mask uint32, access, deflt []tACE) []byte {
	var b bytes.Buffer
	b.Write(xdrOpaque(fh))
	b.Write(be(mask))
	for i, l := range [][]tACE{access, deflt} {
		b.Write(be(uint32(len(l))))
		b.Write(be(uint32(len(l))))
		for _, a := range l {
			tag := a.tag
			if i == 1 {
				tag |= nfsACLDefault
			}
			b.Write(be(tag))
			b.Write(be(a.id))
			b.Write(be(a.perm))
		}
	}
	return b.Bytes()
}

func (c *client) setacl(fh []byte, mask uint32, access, deflt []tACE) uint32 {
	c.t.Helper()
	body := c.call3(progNFSACL, aclProcSetACL, setaclArgs(fh, mask, access, deflt))
	return binary.BigEndian.Uint32(body)
}

// call3 makes one version 3 call with raw arguments and returns the result body.
func (c *client) call3(prog, proc uint32, args []byte) []byte {
	c.t.Helper()
	r, err := c.raw(c.callMsg(prog, 3, proc, rawArgs(args)))
	must(c.t, err)
	if r.denied || r.stat != acceptSuccess {
		c.t.Fatalf("prog %d proc %d: denied=%v stat=%d", prog, proc, r.denied, r.stat)
	}
	rest := make([]byte, r.body.Len())
	_, _ = r.body.Read(rest)
	return rest
}

func be(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func xdrOpaque(p []byte) []byte {
	w := xdrWriter{}
	w.opaque(p)
	return w.b
}

var acePerm = map[uint32]string{0: "---", 4: "r--", 6: "rw-", 5: "r-x", 7: "rwx", 1: "--x", 2: "-w-", 3: "-wx"}

// TestNFSACLGetSetacl drives GETACL and SETACL as the Linux client's getfacl/setfacl do,
// and checks what lands on disk with getfacl.
func TestNFSACLGetSetacl(t *testing.T) {
	f := newFixture(t)
	_, root := f.client("pi-a")
	u := dialFrom(t, addrA, f.nfs).as(1000, 1000, 1000)
	o := dialFrom(t, addrA, f.nfs).as(1001, 1001, 1001)
	x := dialFrom(t, addrA, f.nfs).as(1002, 1002, 1002)

	// A file without an ACL has the minimal one, sent with a mask equal to the group entry.
	host := u.walk(root, "etc", "hostname")
	st, got := u.getacl(host, nfsACL|nfsACLCnt)
	wantStatus(t, "getacl", st, 0)
	want := []tACE{{aclUserObj, 0, 6}, {aclGroupObj, 0, 4}, {aclMask, 0, 4}, {aclOther, 0, 4}}
	if got.mask != nfsACL|nfsACLCnt || got.accessCount != 4 || !slicesEqual(got.access, want) {
		t.Fatalf("getacl of a 0644 file: %+v", got)
	}
	st, _ = u.getacl(host, 0x10)
	wantStatus(t, "getacl with an unknown mask bit", st, 22)

	// The owner gives uid 1001 read on a 0600 file.
	secret := u.walk(root, "home", "user", "secret")
	if st, _ := o.read(secret, 0, 10); st != stAccess {
		t.Fatalf("uid 1001 reads before the ACL: %d", st)
	}
	acl := []tACE{{aclUserObj, 1000, 6}, {aclUser, 1001, 4}, {aclGroupObj, 1000, 0}, {aclMask, 0, 4}, {aclOther, 0, 0}}
	wantStatus(t, "setacl by owner", u.setacl(secret, nfsACL, acl, nil), 0)
	if _, a := u.getattr(secret); a.FileMode != 0o640 {
		t.Fatalf("mode after setacl %o, want 640 (group bits = mask)", a.FileMode)
	}
	if st, data := o.readAll(secret); st != 0 || data != "user's secret\n" {
		t.Fatalf("named user reads: %d %q", st, data)
	}
	if _, bits := o.access(secret, access3Read|access3Modify); bits != access3Read {
		t.Fatalf("ACCESS for the named user: %#x", bits)
	}
	if st, _ := x.read(secret, 0, 10); st != stAccess {
		t.Fatalf("uid 1002 reads: %d", st)
	}
	st, got = x.getacl(secret, nfsACL|nfsACLCnt|nfsDfACL|nfsDfACLCnt)
	wantStatus(t, "getacl by another user", st, 0)
	if !slicesEqual(got.access, acl) || got.defaultCount != 0 || len(got.deflt) != 0 {
		t.Fatalf("getacl: %+v", got)
	}
	upper := filepath.Join(f.upper("pi-a"), "home/user/secret")
	if g := getfacl(t, upper); g != "user::rw-\nuser:1001:r--\ngroup::---\nmask::r--\nother::---" {
		t.Fatalf("on disk:\n%s", g)
	}
	if g := getfacl(t, filepath.Join(f.lower, "home/user/secret")); strings.Contains(g, "1001") {
		t.Fatalf("the lower changed:\n%s", g)
	}

	// Only the owner (or root) may set ACLs.
	wantStatus(t, "setacl by another user", o.setacl(secret, nfsACL, acl[:3:3], nil), stPerm)

	// A mask that denies: the named entry grants read, the mask takes it away.
	acl[3].perm = 0
	wantStatus(t, "setacl mask ---", u.setacl(secret, nfsACL, acl, nil), 0)
	if st, _ := o.read(secret, 0, 10); st != stAccess {
		t.Fatalf("named user reads through a --- mask: %d", st)
	}
	if _, a := u.getattr(secret); a.FileMode != 0o600 {
		t.Fatalf("mode with mask --- %o", a.FileMode)
	}

	// An ACL the mode says all of is stored as the mode only; the minimal ACL the client
	// sends (with its redundant mask) removes the xattr.
	min := []tACE{{aclUserObj, 1000, 6}, {aclGroupObj, 1000, 4}, {aclMask, 0, 4}, {aclOther, 0, 0}}
	wantStatus(t, "setacl minimal", u.setacl(secret, nfsACL, min, nil), 0)
	if _, a := u.getattr(secret); a.FileMode != 0o640 {
		t.Fatalf("mode after minimal ACL %o", a.FileMode)
	}
	if _, err := unix.Lgetxattr(upper, xattrACLAccess, nil); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("minimal ACL left an xattr: %v", err)
	}

	// Invalid ACLs are INVAL; a default ACL on a file is ACCES; garbage is GARBAGE_ARGS.
	wantStatus(t, "named user without a mask", u.setacl(secret, nfsACL, []tACE{{aclUserObj, 0, 6}, {aclUser, 5, 4}, {aclGroupObj, 0, 0}, {aclOther, 0, 0}}, nil), 22)
	wantStatus(t, "the same user twice", u.setacl(secret, nfsACL, []tACE{{aclUserObj, 0, 6}, {aclUser, 5, 4}, {aclUser, 5, 6}, {aclGroupObj, 0, 0}, {aclMask, 0, 6}, {aclOther, 0, 0}}, nil), 22)
	wantStatus(t, "no other entry", u.setacl(secret, nfsACL, []tACE{{aclUserObj, 0, 6}, {aclGroupObj, 0, 0}}, nil), 22)
	wantStatus(t, "default ACL on a file", u.setacl(secret, nfsACL|nfsDfACL, min, min), stAccess)
	for what, args := range map[string][]byte{
		"1025 entries":    setaclArgs(secret, nfsACL, make([]tACE, 1025), nil),
		"unknown tag":     setaclArgs(secret, nfsACL, []tACE{{0x40, 0, 0}}, nil),
		"owner perm 8":    setaclArgs(secret, nfsACL, []tACE{{aclUserObj, 0, 8}}, nil),
		"unknown mask":    setaclArgs(secret, 0x20, nil, nil),
		"truncated":       setaclArgs(secret, nfsACL, acl, nil)[:60],
		"count mismatch":  append(append(setaclArgs(secret, nfsACL, nil, nil)[:44], be(2)...), be(1)...),
		"user id -1":      setaclArgs(secret, nfsACL, []tACE{{aclUser, aclUndefinedID, 4}}, nil),
		"count 2^31 - 1 ": append(setaclArgs(secret, nfsACL, nil, nil)[:44], be(1<<31-1)...),
	} {
		r, err := u.raw(u.callMsg(progNFSACL, 3, aclProcSetACL, rawArgs(args)))
		must(t, err)
		if r.stat != acceptGarbageArgs {
			t.Fatalf("%s: stat %d, want GARBAGE_ARGS", what, r.stat)
		}
	}

	// Squashed or not, root may set ACLs on any file; SETACL on a lower file copies it up.
	r := dialFrom(t, addrA, f.nfs).as(0, 0)
	sh := r.walk(root, "bin", "sh")
	wantStatus(t, "root setacl on a lower file", r.setacl(sh, nfsACL, []tACE{{aclUserObj, 0, 7}, {aclGroup, 42, 5}, {aclGroupObj, 0, 5}, {aclMask, 0, 5}, {aclOther, 0, 0}}, nil), 0)
	if g := getfacl(t, filepath.Join(f.upper("pi-a"), "bin/sh")); g != "user::rwx\ngroup::r-x\ngroup:42:r-x\nmask::r-x\nother::---" {
		t.Fatalf("bin/sh in the upper:\n%s", g)
	}
	if st, _ := x.read(sh, 0, 10); st != stAccess {
		t.Fatalf("other reads after other::---: %d", st)
	}
	if st, _ := dialFrom(t, addrA, f.nfs).as(1002, 1002, 42).read(sh, 0, 10); st != 0 {
		t.Fatalf("member of group 42 reads: %d", st)
	}
}

// anyOwner clears the ids of owner and owning-group entries, which name the file's owner.
func anyOwner(acl []tACE) []tACE {
	out := append([]tACE(nil), acl...)
	for i := range out {
		if out[i].tag == aclUserObj || out[i].tag == aclGroupObj {
			out[i].id = 0
		}
	}
	return out
}

func slicesEqual(a, b []tACE) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestImportedACLEnforced: a file of the image with an ACL is checked against it, for
// libnfs and for our client, as the kernel would check it on the image's own disk.
func TestImportedACLEnforced(t *testing.T) {
	needRoot(t)
	f := &fixture{t: t, dir: t.TempDir(), boards: []string{"pi-a", "pi-b", "pi-c"}}
	f.lower = filepath.Join(f.dir, "lower")
	f.makeLower()
	// /srv/log: 0600 root:root plus user:1000:r--, mask r-- (so mode 0640).
	// /srv/masked: named group 42 rw-, but the mask is r--.
	// /srv/grpdeny: named group 42 ---, other r--: a member of 42 matched a group entry
	// that does not grant read, so other's r-- does not apply to it.
	// /srv/grp: owning group --- and named group 43 r--: a member of both reads.
	// /srv/zeromask: user 1001 rw- with mask ---, other r--: the kernel checks a file whose
	// group bits (its mask) are all clear by its mode bits alone, so uid 1001 gets other's
	// r--, as on the image's own disk.
	p := filepath.Join(f.lower, "srv")
	for name, acl := range map[string][]tACE{
		"log":      {{aclUserObj, 0, 6}, {aclUser, 1000, 4}, {aclGroupObj, 0, 0}, {aclMask, 0, 4}, {aclOther, 0, 0}},
		"masked":   {{aclUserObj, 0, 6}, {aclGroupObj, 0, 0}, {aclGroup, 42, 6}, {aclMask, 0, 4}, {aclOther, 0, 0}},
		"grpdeny":  {{aclUserObj, 0, 6}, {aclGroupObj, 0, 4}, {aclGroup, 42, 0}, {aclMask, 0, 4}, {aclOther, 0, 4}},
		"grp":      {{aclUserObj, 0, 6}, {aclGroupObj, 0, 0}, {aclGroup, 43, 4}, {aclMask, 0, 4}, {aclOther, 0, 0}},
		"zeromask": {{aclUserObj, 0, 6}, {aclUser, 1001, 6}, {aclGroupObj, 0, 0}, {aclMask, 0, 0}, {aclOther, 0, 4}},
	} {
		fp := filepath.Join(p, name)
		must(t, os.WriteFile(fp, []byte(name+"\n"), 0o600))
		must(t, unix.Lsetxattr(fp, xattrACLAccess, kernelACLXattr(acl...), 0))
	}
	f.start()
	t.Cleanup(f.stop)

	// libnfs as uid 1000 (named user) reads /srv/log; as uid 1001 it cannot.
	if got := runTool(t, "nfs-cat", f.libnfsURL("/srv/log", "&uid=1000&gid=1000")); got != "log\n" {
		t.Fatalf("nfs-cat as the named user: %q", got)
	}
	if out, err := exec.Command("nfs-cat", f.libnfsURL("/srv/log", "&uid=1001&gid=1001")).CombinedOutput(); err == nil {
		t.Fatalf("nfs-cat as uid 1001 read a file its ACL does not grant: %q", out)
	}

	// go-nfs-client with AUTH_SYS uid 1000: the same.
	mc, err := nfsc.DialServiceAtPort("127.0.0.1", int(f.nfs.Port()))
	must(t, err)
	defer mc.Close()
	m := &nfsc.Mount{Client: mc}
	for _, c := range []struct {
		uid     uint32
		wantErr bool
	}{{1000, false}, {1001, true}} {
		auth := rpc.AuthUnix{Machinename: "pi-c", Uid: c.uid, Gid: c.uid, GidLen: 1, Gids: c.uid}
		v, err := m.Mount(exportPath("pi-c"), auth.Auth())
		must(t, err)
		var data []byte
		rd, err := v.Open("srv/log")
		if err == nil {
			data, err = io.ReadAll(rd)
			rd.Close()
		}
		if (err != nil) != c.wantErr || (!c.wantErr && string(data) != "log\n") {
			t.Fatalf("go-nfs-client as uid %d reads /srv/log: %q, %v", c.uid, data, err)
		}
	}
	must(t, m.Unmount())

	r, root := f.client("pi-a")
	named := dialFrom(t, addrA, f.nfs).as(1000, 1000, 1000)
	// Root's read leaves the file open on the server (root needs no ACL): the named
	// user's READ then finds it by its descriptor, and the ACL is read through that.
	log := r.walk(root, "srv", "log")
	if st, _ := r.readAll(log); st != 0 {
		t.Fatalf("root reads: %d", st)
	}
	if st, data := named.readAll(log); st != 0 || data != "log\n" {
		t.Fatalf("named user reads: %d %q", st, data)
	}
	if st, _ := dialFrom(t, addrA, f.nfs).as(1001, 1001).read(log, 0, 10); st != stAccess {
		t.Fatalf("uid 1001 reads an open file its ACL does not grant: %d", st)
	}
	g := dialFrom(t, addrA, f.nfs).as(1001, 1001, 42)
	masked := g.walk(root, "srv", "masked")
	if st, data := g.readAll(masked); st != 0 || data != "masked\n" {
		t.Fatalf("group 42 reads: %d %q", st, data)
	}
	if st, _ := g.write(masked, 0, []byte("x"), fileSync); st != stAccess {
		t.Fatalf("group 42 writes through an r-- mask: %d", st)
	}
	if _, bits := g.access(masked, access3Read|access3Modify); bits != access3Read {
		t.Fatalf("ACCESS through an r-- mask: %#x", bits)
	}
	grpdeny := g.walk(root, "srv", "grpdeny")
	if st, _ := g.read(grpdeny, 0, 10); st != stAccess {
		t.Fatalf("member of a named group with --- reads: %d", st)
	}
	stranger := dialFrom(t, addrA, f.nfs).as(1003, 1003)
	if st, _ := stranger.read(grpdeny, 0, 10); st != 0 {
		t.Fatalf("stranger reads with other r--: %d", st)
	}
	zero := dialFrom(t, addrA, f.nfs).as(1001, 1001)
	zm := zero.walk(root, "srv", "zeromask")
	if _, bits := zero.access(zm, access3Read|access3Modify); bits != access3Read {
		t.Fatalf("ACCESS with a --- mask and other r--: %#x", bits)
	}
	grp := dialFrom(t, addrA, f.nfs).as(1002, 0, 43)
	if st, _ := grp.read(grp.walk(root, "srv", "grp"), 0, 10); st != 0 {
		t.Fatalf("member of the owning group (---) and of named group 43 (r--) reads: %d", st)
	}
}

// TestDefaultACLInherited: CREATE and MKDIR in a directory with a default ACL give the new
// object the ACL limited by the mode the client sent, and the mode limited by the ACL
// (posix_acl_create, as knfsd's file systems do); a new directory also inherits the
// default ACL. Both for a default ACL set over NFS and one that came with the image.
func TestDefaultACLInherited(t *testing.T) {
	needRoot(t)
	f := &fixture{t: t, dir: t.TempDir(), boards: []string{"pi-a", "pi-b", "pi-c"}}
	f.lower = filepath.Join(f.dir, "lower")
	f.makeLower()
	deflt := []tACE{{aclUserObj, 0, 7}, {aclUser, 1001, 7}, {aclGroupObj, 0, 5}, {aclMask, 0, 7}, {aclOther, 0, 0}}
	imgDir := filepath.Join(f.lower, "srv/shared")
	must(t, os.Mkdir(imgDir, 0o777))
	must(t, os.Chmod(imgDir, 0o777))
	must(t, unix.Lsetxattr(imgDir, xattrACLDefault, kernelACLXattr(deflt...), 0))
	f.start()
	t.Cleanup(f.stop)
	_, root := f.client("pi-a")
	u := dialFrom(t, addrA, f.nfs).as(1000, 1000, 1000)
	o := dialFrom(t, addrA, f.nfs).as(1001, 1001, 1001)
	tmp := u.walk(root, "tmp")
	st, viaNFS, _ := u.mkdir(tmp, "shared", mode(0o777))
	wantStatus(t, "mkdir", st, 0)
	self := []tACE{{aclUserObj, 1000, 7}, {aclGroupObj, 1000, 7}, {aclOther, 0, 7}}
	wantStatus(t, "setacl default", u.setacl(viaNFS, nfsACL|nfsDfACL, self, deflt), 0)

	for _, c := range []struct {
		name  string
		dir   []byte
		upper string
	}{
		{"over NFS", viaNFS, "tmp/shared"},
		{"from the image", u.walk(root, "srv", "shared"), "srv/shared"},
	} {
		st, d := u.getacl(c.dir, nfsDfACL|nfsDfACLCnt)
		wantStatus(t, "getacl default "+c.name, st, 0)
		if !slicesEqual(anyOwner(d.deflt), []tACE{{aclUserObj, 0, 7}, {aclUser, 1001, 7}, {aclGroupObj, 0, 5}, {aclMask, 0, 7}, {aclOther, 0, 0}}) {
			t.Fatalf("default ACL %s: %+v", c.name, d.deflt)
		}
		// CREATE 0666: owner rw-, mask rwx&rw-, other ---&rw-: mode 0660.
		st, fh, a := u.create(c.dir, "f", 0, mode(0o666))
		wantStatus(t, "create "+c.name, st, 0)
		if a.FileMode != 0o660 {
			t.Fatalf("%s: created mode %o, want 660", c.name, a.FileMode)
		}
		_, acl := u.getacl(fh, nfsACL|nfsACLCnt)
		if !slicesEqual(acl.access, []tACE{{aclUserObj, 1000, 6}, {aclUser, 1001, 7}, {aclGroupObj, 1000, 5}, {aclMask, 0, 6}, {aclOther, 0, 0}}) {
			t.Fatalf("%s: inherited ACL %+v", c.name, acl.access)
		}
		if g := getfacl(t, filepath.Join(f.upper("pi-a"), c.upper, "f")); g != "user::rw-\nuser:1001:rwx\t#effective:rw-\ngroup::r-x\t#effective:r--\nmask::rw-\nother::---" {
			t.Fatalf("%s: on disk:\n%s", c.name, g)
		}
		if st, _ := o.write(fh, 0, []byte("by 1001"), fileSync); st != 0 {
			t.Fatalf("%s: named user writes the new file: %d", c.name, st)
		}
		// MKDIR 0755: mask rwx&r-x; the default ACL is inherited as is.
		st, sub, a := u.mkdir(c.dir, "d", mode(0o755))
		wantStatus(t, "mkdir "+c.name, st, 0)
		if a.FileMode != 0o750 {
			t.Fatalf("%s: mkdir mode %o, want 750", c.name, a.FileMode)
		}
		_, acl = u.getacl(sub, nfsACL|nfsDfACL)
		if !slicesEqual(acl.access, []tACE{{aclUserObj, 1000, 7}, {aclUser, 1001, 7}, {aclGroupObj, 1000, 5}, {aclMask, 0, 5}, {aclOther, 0, 0}}) || !slicesEqual(anyOwner(acl.deflt), anyOwner(d.deflt)) {
			t.Fatalf("%s: new dir's ACLs %+v", c.name, acl)
		}
		st, _, _ = u.symlink(c.dir, "ln", "f")
		wantStatus(t, "symlink "+c.name, st, 0) // a symlink gets no ACL
	}

	// A default ACL the mode says all of: the new file gets the mode only, no xattr.
	st, plain, _ := u.mkdir(tmp, "plain", mode(0o777))
	wantStatus(t, "mkdir plain", st, 0)
	wantStatus(t, "setacl minimal default", u.setacl(plain, nfsACL|nfsDfACL, self, []tACE{{aclUserObj, 0, 7}, {aclGroupObj, 0, 5}, {aclOther, 0, 0}}), 0)
	st, _, a := u.create(plain, "g", 0, mode(0o644))
	wantStatus(t, "create in plain", st, 0)
	if a.FileMode != 0o640 {
		t.Fatalf("mode under a minimal default ACL %o, want 640", a.FileMode)
	}
	if _, err := unix.Lgetxattr(filepath.Join(f.upper("pi-a"), "tmp/plain/g"), xattrACLAccess, nil); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("file under a minimal default ACL has an access ACL: %v", err)
	}
}

// FuzzNFSACLDecode feeds arbitrary bytes to SETACL's ACL decoder: it must stay within
// NFS_ACL_MAX_ENTRIES, and whatever it accepts as valid must survive the xattr format and
// the wire format unchanged.
func FuzzNFSACLDecode(f *testing.F) {
	f.Add(setaclArgs(nil, nfsACL|nfsDfACL, []tACE{{aclUserObj, 0, 6}, {aclUser, 7, 4}, {aclGroupObj, 0, 4}, {aclMask, 0, 6}, {aclOther, 0, 0}}, []tACE{{aclUserObj, 0, 7}, {aclGroupObj, 0, 5}, {aclOther, 0, 0}})[4:])
	f.Add(setaclArgs(nil, nfsACL, []tACE{{aclUserObj, 0, 6}, {aclGroupObj, 0, 4}, {aclMask, 0, 4}, {aclOther, 0, 0}}, nil)[4:])
	f.Add([]byte{0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &xdrReader{b: data}
		mask := r.u32()
		for _, want := range []bool{mask&nfsACL != 0, mask&nfsDfACL != 0} {
			acl, err := readNFSACL(r, want)
			if err != nil {
				return
			}
			if len(acl) > maxACLEntries || (!want && acl != nil) {
				t.Fatalf("decoded %d entries (asked: %v)", len(acl), want)
			}
			mode, _ := acl.equivMode(0o7777)
			_, _, _ = acl.createMasq(mode)
			_ = acl.permits(&cred{uid: 1, gid: 2, gids: []uint32{3}}, 2, mayRead)
			if acl == nil || acl.valid() != nil {
				continue
			}
			back, err := parseACLXattr(acl.xattr())
			if err != nil || !slicesEqualACL(back, acl) {
				t.Fatalf("xattr round trip: %v %+v -> %+v", err, acl, back)
			}
			child, _, _ := acl.createMasq(0o666)
			if child.valid() != nil {
				t.Fatalf("inherited ACL invalid: %+v", child)
			}
			w := xdrWriter{}
			w.nfsACL(acl, true, 0, &fstat{})
			again, err := readNFSACL(&xdrReader{b: w.b}, true)
			if err != nil {
				t.Fatalf("wire round trip: %v", err)
			}
			if !slicesEqualACL(again, acl) {
				t.Fatalf("wire round trip: %+v -> %+v", acl, again)
			}
		}
	})
}

func slicesEqualACL(a, b posixACL) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.tag != aclUser && x.tag != aclGroup {
			x.id, y.id = 0, 0
		}
		if x != y {
			return false
		}
	}
	return true
}

// FuzzACLXattr feeds arbitrary xattr values (a damaged image) to the xattr decoder.
func FuzzACLXattr(f *testing.F) {
	f.Add(kernelACLXattr(tACE{aclUserObj, 0, 6}, tACE{aclUser, 1000, 4}, tACE{aclGroupObj, 0, 0}, tACE{aclMask, 0, 4}, tACE{aclOther, 0, 0}))
	f.Add([]byte{2, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 0, 1, 0, 6, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		acl, err := parseACLXattr(data)
		if err != nil {
			return
		}
		if acl.valid() != nil || len(acl) > maxACLEntries {
			t.Fatalf("accepted an invalid ACL: %+v", acl)
		}
		if back, err := parseACLXattr(acl.xattr()); err != nil || !slicesEqualACL(back, acl) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzNFSACLArgs feeds arbitrary arguments to every NFS_ACL procedure of a live export.
func FuzzNFSACLArgs(f *testing.F) {
	fx := newFixture(f)
	_, root := fx.client("pi-a")
	var b bytes.Buffer
	b.Write(xdrOpaque(root))
	b.Write(be(nfsACL | nfsACLCnt | nfsDfACL | nfsDfACLCnt))
	f.Add(uint8(aclProcGetACL), b.Bytes())
	f.Add(uint8(aclProcSetACL), setaclArgs(root, nfsACL|nfsDfACL, []tACE{{aclUserObj, 0, 7}, {aclUser, 7, 4}, {aclGroupObj, 0, 5}, {aclMask, 0, 5}, {aclOther, 0, 5}}, []tACE{{aclUserObj, 0, 7}, {aclGroupObj, 0, 5}, {aclOther, 0, 0}}))
	f.Add(uint8(aclProcNull), []byte{})
	s := fx.srv
	cc := &conn{s: s, addr: addrA, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	f.Fuzz(func(t *testing.T, proc uint8, args []byte) {
		h := &rpcCallHdr{xid: 1, prog: progNFSACL, vers: 3, proc: uint32(proc), cred: cred{flavor: authSys}, args: args}
		rec := s.dispatch(cc, h, nil).rec
		if n := binary.BigEndian.Uint32(rec) & 0x7fffffff; int(n) != len(rec)-4 {
			t.Fatalf("record mark %d for %d bytes", n, len(rec)-4)
		}
	})
}
