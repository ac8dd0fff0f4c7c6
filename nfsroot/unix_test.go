package nfsroot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/willscott/go-nfs"
	nfsc "github.com/willscott/go-nfs-client/nfs"
	"golang.org/x/sys/unix"
)

const (
	stOK       = 0
	stPerm     = 1
	stNoEnt    = 2
	stAccess   = 13
	stExist    = 17
	stNotDir   = 20
	stIsDir    = 21
	stNotEmpty = 66
	stStale    = 70
)

func TestSpecialModeBits(t *testing.T) {
	f := newFixture(t)
	c, root := f.client("pi-a")
	sudo := c.walk(root, "usr", "bin", "sudo")
	if _, a := c.getattr(sudo); a.FileMode != 0o4755 {
		t.Fatalf("sudo mode %o, want 4755", a.FileMode)
	}
	if _, a := c.getattr(c.walk(root, "tmp")); a.FileMode != 0o1777 || a.Type != nfsc.NF3Dir {
		t.Fatalf("tmp mode %o type %d", a.FileMode, a.Type)
	}
	tmp := c.walk(root, "tmp")
	st, fh, a := c.create(tmp, "sgid", 0, mode(0o2755))
	wantStatus(t, "create 2755", st, 0)
	if a.FileMode != 0o2755 {
		t.Fatalf("created mode %o", a.FileMode)
	}
	wantStatus(t, "chmod 4711", c.setattr(fh, mode(0o4711)), 0)
	if _, a := c.getattr(fh); a.FileMode != 0o4711 {
		t.Fatalf("after SETATTR mode %o", a.FileMode)
	}
	st, d, a := c.mkdir(tmp, "shared", mode(0o3775))
	wantStatus(t, "mkdir 3775", st, 0)
	if a.FileMode != 0o3775 {
		t.Fatalf("mkdir mode %o", a.FileMode)
	}
	// The bits are real on disk, as an admin's `mount -t overlay` would show them.
	fi, err := os.Stat(filepath.Join(f.upper("pi-a"), "tmp/sgid"))
	must(t, err)
	if fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("upper file mode %v", fi.Mode())
	}
	// A subdirectory of a setgid directory inherits the group and the bit.
	wantStatus(t, "chgrp shared", c.setattr(d, nfsc.Sattr3{GID: nfsc.SetUID{SetIt: true, UID: 50}}), 0)
	st, _, a = c.mkdir(d, "sub", mode(0o755))
	wantStatus(t, "mkdir sub", st, 0)
	if a.GID != 50 || a.FileMode&0o2000 == 0 {
		t.Fatalf("sub of setgid dir: gid %d mode %o", a.GID, a.FileMode)
	}
}

func TestChownChmodUtimes(t *testing.T) {
	f := newFixture(t)
	c, root := f.client("pi-a")
	host := c.walk(root, "etc", "hostname")
	wantStatus(t, "chown", c.setattr(host, nfsc.Sattr3{UID: nfsc.SetUID{SetIt: true, UID: 1000}, GID: nfsc.SetUID{SetIt: true, UID: 100}}), 0)
	wantStatus(t, "chmod", c.setattr(host, mode(0o600)), 0)
	at := nfsc.NFS3Time{Seconds: 1000000000, Nseconds: 5}
	mt := nfsc.NFS3Time{Seconds: 1100000000, Nseconds: 7}
	wantStatus(t, "utimes", c.setattr(host, nfsc.Sattr3{
		Atime: nfsc.SetTime{SetIt: nfsc.SetToClientTime, Time: at},
		Mtime: nfsc.SetTime{SetIt: nfsc.SetToClientTime, Time: mt},
	}), 0)
	_, a := c.getattr(host)
	if a.UID != 1000 || a.GID != 100 || a.FileMode != 0o600 || a.Atime != at || a.Mtime != mt {
		t.Fatalf("attrs after setattr: %+v", a)
	}
	// The lower file is untouched: the change is in pi-a's upper only.
	fi, err := os.Stat(filepath.Join(f.lower, "etc/hostname"))
	must(t, err)
	if fi.Sys().(*syscall.Stat_t).Uid != 0 || fi.Mode().Perm() != 0o644 {
		t.Fatal("SETATTR changed the lower file")
	}
	// Truncate through SETATTR size.
	wantStatus(t, "truncate", c.setattr(host, nfsc.Sattr3{Size: nfsc.SetSize{SetIt: true, Size: 2}}), 0)
	if st, data := c.readAll(host); st != 0 || data != "ba" {
		t.Fatalf("after truncate: %q", data)
	}
	// Another board sees the base file, not pi-a's.
	b, rootB := f.client("pi-b")
	if _, a := b.getattr(b.walk(rootB, "etc", "hostname")); a.UID != 0 || a.FileMode != 0o644 {
		t.Fatalf("pi-b sees pi-a's change: %+v", a)
	}
}

func TestLinkSymlinkMknod(t *testing.T) {
	f := newFixture(t)
	c, root := f.client("pi-a")
	tmp := c.walk(root, "tmp")
	sh := c.walk(root, "bin", "sh")
	wantStatus(t, "link lower file", c.link(sh, tmp, "sh2"), 0)
	wantStatus(t, "link again", c.link(sh, tmp, "sh3"), 0)
	if _, a := c.getattr(sh); a.Nlink != 3 {
		t.Fatalf("nlink %d after two links, want 3", a.Nlink)
	}
	_, sh2, a2 := c.lookup(tmp, "sh2")
	_, a := c.getattr(sh)
	if a2.Fileid != a.Fileid || string(sh2) != string(sh) {
		t.Fatalf("hard link has another identity: %d vs %d", a2.Fileid, a.Fileid)
	}
	wantStatus(t, "remove original", c.remove(c.walk(root, "bin"), "sh"), 0)
	if st, data := c.readAll(sh); st != 0 || data != "#!binary\n" {
		t.Fatalf("handle after removing one link: %d %q", st, data)
	}
	if _, a := c.getattr(sh); a.Nlink != 2 {
		t.Fatalf("nlink %d after unlink, want 2", a.Nlink)
	}

	st, ln, la := c.symlink(tmp, "ln", "../bin/sh")
	wantStatus(t, "symlink", st, 0)
	if la.Type != nfsc.NF3Lnk {
		t.Fatalf("symlink type %d", la.Type)
	}
	st2, r := c.nfs(5, ln)
	wantStatus(t, "readlink", st2, 0)
	res := read[struct {
		Attr nfsc.PostOpAttr
		Path string
	}](t, r)
	if res.Path != "../bin/sh" {
		t.Fatalf("readlink %q", res.Path)
	}

	for _, n := range []struct {
		name         string
		typ          uint32
		major, minor uint32
		ifmt         uint32
	}{{"null", nf3Chr, 1, 3, syscall.S_IFCHR}, {"sda", nf3Blk, 8, 0, syscall.S_IFBLK}, {"fifo", nf3Fifo, 0, 0, syscall.S_IFIFO}, {"sock", nf3Sock, 0, 0, syscall.S_IFSOCK}} {
		st, _, a := c.mknod(tmp, n.name, n.typ, mode(0o666), n.major, n.minor)
		wantStatus(t, "mknod "+n.name, st, 0)
		if a.Type != n.typ || a.SpecData != [2]uint32{n.major, n.minor} || a.FileMode != 0o666 {
			t.Fatalf("mknod %s: %+v", n.name, a)
		}
		var sst syscall.Stat_t
		must(t, syscall.Lstat(filepath.Join(f.upper("pi-a"), "tmp", n.name), &sst))
		if sst.Mode&syscall.S_IFMT != n.ifmt {
			t.Fatalf("mknod %s on disk: mode %o", n.name, sst.Mode)
		}
	}
	// Devices need root; fifos do not.
	u := dialFrom(t, addrA, f.nfs).as(1000, 1000, 1000)
	st, _, _ = u.mknod(tmp, "evil", nf3Chr, mode(0o666), 1, 1)
	wantStatus(t, "mknod chr as uid 1000", st, stPerm)
	st, _, a = u.mknod(tmp, "myfifo", nf3Fifo, mode(0o600), 0, 0)
	wantStatus(t, "mknod fifo as uid 1000", st, 0)
	if a.UID != 1000 || a.GID != 1000 {
		t.Fatalf("fifo owner %d:%d", a.UID, a.GID)
	}
}

func TestCreateExclusiveAndRenameOver(t *testing.T) {
	f := newFixture(t)
	c, root := f.client("pi-a")
	tmp := c.walk(root, "tmp")
	verf := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	st, fh, _ := c.createExclusive(tmp, "lock", verf)
	wantStatus(t, "create exclusive", st, 0)
	// A retransmission with the same verifier succeeds with the same file.
	st, fh2, _ := c.createExclusive(tmp, "lock", verf)
	wantStatus(t, "retransmitted create exclusive", st, 0)
	if string(fh) != string(fh2) {
		t.Fatal("retransmission returned another file")
	}
	// Another verifier means another client: EXIST.
	st, _, _ = c.createExclusive(tmp, "lock", [8]byte{9})
	wantStatus(t, "create exclusive by another", st, stExist)
	st, _, _ = c.create(tmp, "lock", createGuarded, mode(0o644))
	wantStatus(t, "create guarded on existing", st, stExist)

	// Rename over an existing file replaces it; the old target's handle goes stale.
	st, a, _ := c.create(tmp, "a", 0, mode(0o644))
	wantStatus(t, "create a", st, 0)
	c.write(a, 0, []byte("new"), fileSync)
	st, b, _ := c.create(tmp, "b", 0, mode(0o644))
	wantStatus(t, "create b", st, 0)
	c.write(b, 0, []byte("old"), fileSync)
	wantStatus(t, "rename a over b", c.rename(tmp, "a", tmp, "b"), 0)
	if st, _, _ := c.lookup(tmp, "a"); st != stNoEnt {
		t.Fatalf("a still there: %d", st)
	}
	st, bb, _ := c.lookup(tmp, "b")
	if st != 0 || string(bb) != string(a) {
		t.Fatal("b is not a's file after rename")
	}
	if st, data := c.readAll(a); st != 0 || data != "new" {
		t.Fatalf("read a's handle: %d %q", st, data)
	}
	if st, _ := c.getattr(b); st != stStale {
		t.Fatalf("replaced file's handle: %d, want STALE", st)
	}
	// Directories: rmdir of a non-empty dir fails; remove of a dir is ISDIR.
	st, d, _ := c.mkdir(tmp, "d", mode(0o755))
	wantStatus(t, "mkdir", st, 0)
	c.create(d, "x", 0, mode(0o644))
	wantStatus(t, "rmdir non-empty", func() uint32 { s, _ := c.nfs(13, nfsc.Diropargs3{FH: tmp, Filename: "d"}); return s }(), stNotEmpty)
	wantStatus(t, "remove dir", c.remove(tmp, "d"), stIsDir)
	wantStatus(t, "mkdir existing", func() uint32 { s, _, _ := c.mkdir(tmp, "d", mode(0o755)); return s }(), stExist)
}

// The Linux client renames an open file to .nfsXXXX instead of removing it; a client that
// removes it anyway still reads it through the handle while the server has it open.
func TestRemovedWhileOpenStaysReadable(t *testing.T) {
	f := newFixture(t)
	c, root := f.client("pi-a")
	tmp := c.walk(root, "tmp")
	st, fh, _ := c.create(tmp, "open", 0, mode(0o644))
	wantStatus(t, "create", st, 0)
	c.write(fh, 0, []byte("still here"), unstable)
	// Silly rename, as the Linux client does.
	wantStatus(t, "silly rename", c.rename(tmp, "open", tmp, ".nfs0001"), 0)
	if st, data := c.readAll(fh); st != 0 || data != "still here" {
		t.Fatalf("after silly rename: %d %q", st, data)
	}
	// Outright removal while the server holds it open.
	wantStatus(t, "remove", c.remove(tmp, ".nfs0001"), 0)
	if st, data := c.readAll(fh); st != 0 || data != "still here" {
		t.Fatalf("after remove: %d %q", st, data)
	}
}

func TestPermissions(t *testing.T) {
	f := newFixture(t)
	_, root := f.client("pi-a")
	u := dialFrom(t, addrA, f.nfs).as(1000, 1000, 1000)
	host := u.walk(root, "etc", "hostname")
	st, _ := u.write(host, 0, []byte("x"), fileSync)
	wantStatus(t, "uid 1000 writes root's 0644 file", st, stAccess)
	if st, data := u.readAll(host); st != 0 || data != "base\n" {
		t.Fatalf("uid 1000 reads 0644: %d %q", st, data)
	}
	st = u.setattr(host, mode(0o666))
	wantStatus(t, "uid 1000 chmods root's file", st, stPerm)
	st = u.setattr(host, nfsc.Sattr3{UID: nfsc.SetUID{SetIt: true, UID: 1000}})
	wantStatus(t, "uid 1000 chowns root's file", st, stPerm)
	st, _, _ = u.create(u.walk(root, "etc"), "new", 0, mode(0o644))
	wantStatus(t, "uid 1000 creates in /etc", st, stAccess)
	wantStatus(t, "uid 1000 removes from /etc", u.remove(u.walk(root, "etc"), "hostname"), stAccess)

	secret := u.walk(root, "home", "user", "secret")
	if st, data := u.readAll(secret); st != 0 || data != "user's secret\n" {
		t.Fatalf("owner reads own 0600: %d %q", st, data)
	}
	o := dialFrom(t, addrA, f.nfs).as(1001, 1001, 1001)
	st, _ = o.read(secret, 0, 100)
	wantStatus(t, "uid 1001 reads uid 1000's 0600", st, stAccess)
	// Group membership counts through the gids list: /etc/shadow is 0640 root:42.
	shadow := o.walk(root, "etc", "shadow")
	st, _ = o.read(shadow, 0, 100)
	wantStatus(t, "uid 1001 reads shadow", st, stAccess)
	g := dialFrom(t, addrA, f.nfs).as(1001, 1001, 1001, 42)
	st, _ = g.read(shadow, 0, 100)
	wantStatus(t, "member of group 42 reads shadow", st, 0)

	// ACCESS answers the truth.
	all := uint32(access3Read | access3Lookup | access3Modify | access3Extend | access3Delete | access3Execute)
	if _, got := u.access(host, all); got != access3Read {
		t.Fatalf("ACCESS uid 1000 on 0644 root file: %#x", got)
	}
	if _, got := o.access(secret, all); got != 0 {
		t.Fatalf("ACCESS uid 1001 on other's 0600: %#x", got)
	}
	if _, got := u.access(secret, all); got != access3Read|access3Modify|access3Extend {
		t.Fatalf("ACCESS owner on 0600: %#x", got)
	}
	r := dialFrom(t, addrA, f.nfs).as(0, 0)
	if _, got := r.access(host, all); got != access3Read|access3Modify|access3Extend {
		t.Fatalf("ACCESS root on 0644 file: %#x", got)
	}
	if _, got := r.access(root, all); got != access3Read|access3Lookup|access3Modify|access3Extend|access3Delete {
		t.Fatalf("ACCESS root on /: %#x", got)
	}

	// Sticky /tmp: uid 1001 cannot remove uid 1000's file, uid 1000 can.
	tmp := u.walk(root, "tmp")
	st, _, a := u.create(tmp, "mine", 0, mode(0o644))
	wantStatus(t, "uid 1000 creates in /tmp", st, 0)
	if a.UID != 1000 || a.GID != 1000 {
		t.Fatalf("new file owner %d:%d", a.UID, a.GID)
	}
	wantStatus(t, "uid 1001 removes other's file in sticky /tmp", o.remove(tmp, "mine"), stAccess)
	wantStatus(t, "uid 1001 renames other's file in sticky /tmp", o.rename(tmp, "mine", tmp, "x"), stAccess)
	wantStatus(t, "owner removes own file", u.remove(tmp, "mine"), 0)

	// uid 0 is root (no squash by default).
	st, _ = r.write(host, 0, []byte("B"), fileSync)
	wantStatus(t, "root writes", st, 0)
}

func TestRootSquash(t *testing.T) {
	needRoot(t)
	f := &fixture{t: t, dir: t.TempDir(), boards: []string{"pi-a"}, squash: true}
	f.lower = filepath.Join(f.dir, "lower")
	f.makeLower()
	f.start()
	t.Cleanup(f.stop)
	c, root := f.client("pi-a")
	host := c.walk(root, "etc", "hostname")
	st, _ := c.write(host, 0, []byte("x"), fileSync)
	wantStatus(t, "squashed root writes root's 0644", st, stAccess)
	tmp := c.walk(root, "tmp")
	st, fh, a := c.create(tmp, "f", 0, mode(0o644))
	wantStatus(t, "squashed root creates in /tmp", st, 0)
	if a.UID != nobody || a.GID != nobody {
		t.Fatalf("squashed root's file owner %d:%d", a.UID, a.GID)
	}
	// A squashed root is nobody for NFS_ACL too: it sets ACLs only on nobody's files.
	acl := []tACE{{aclUserObj, 0, 6}, {aclUser, 5, 6}, {aclGroupObj, 0, 4}, {aclMask, 0, 6}, {aclOther, 0, 4}}
	wantStatus(t, "squashed root sets an ACL on root's file", c.setacl(host, nfsACL, acl, nil), stPerm)
	wantStatus(t, "squashed root sets an ACL on its own file", c.setacl(fh, nfsACL, acl, nil), 0)
}

// TestWriteAndTruncateClearSetuid: a WRITE or a size change by anyone but root clears
// setuid, and setgid when group-exec is set or the caller is outside the group, as the
// kernel does for a caller without CAP_FSETID (the server itself holds it, so the kernel
// would not do it for us). Root keeps the bits.
func TestWriteAndTruncateClearSetuid(t *testing.T) {
	f := newFixture(t)
	r, root := f.client("pi-a")
	tmp := r.walk(root, "tmp")
	u := dialFrom(t, addrA, f.nfs).as(1000, 1000, 1000, 50)
	mk := func(name string, m uint32) []byte {
		t.Helper()
		st, fh, _ := r.create(tmp, name, 0, nfsc.Sattr3{Mode: nfsc.SetMode{SetIt: true, Mode: m}, GID: nfsc.SetUID{SetIt: true, UID: 50}})
		wantStatus(t, "create "+name, st, 0)
		if _, a := r.getattr(fh); a.FileMode != m {
			t.Fatalf("%s: mode %o, want %o", name, a.FileMode, m)
		}
		return fh
	}
	modeOf := func(fh []byte) uint32 { _, a := r.getattr(fh); return a.FileMode }
	for _, c := range []struct {
		name      string
		mode      uint32
		by        *client
		truncate  bool
		wantAfter uint32
	}{
		{"suid written by uid 1000", 0o4777, u, false, 0o777},
		{"suid truncated by uid 1000", 0o4777, u, true, 0o777},
		{"sgid+g+x written by a group member", 0o2777, u, false, 0o777},
		{"sgid without g+x written by a group member", 0o2767, u, false, 0o2767},
		{"sgid without g+x written by a stranger", 0o2767, dialFrom(t, addrA, f.nfs).as(1001, 1001), false, 0o767},
		{"suid written by root", 0o4777, r, false, 0o4777},
		{"suid truncated by root", 0o4777, r, true, 0o4777},
	} {
		fh := mk(fmt.Sprintf("f%o%v", c.mode, c.truncate)+fmt.Sprint(c.by.uid), c.mode)
		if c.truncate {
			wantStatus(t, c.name, c.by.setattr(fh, nfsc.Sattr3{Size: nfsc.SetSize{SetIt: true, Size: 1}}), 0)
		} else {
			st, res := c.by.write(fh, 0, []byte("x"), fileSync)
			wantStatus(t, c.name, st, 0)
			if res.Wcc.After.Attr.FileMode != c.wantAfter {
				t.Fatalf("%s: WRITE's post-op mode %o, want %o", c.name, res.Wcc.After.Attr.FileMode, c.wantAfter)
			}
		}
		if got := modeOf(fh); got != c.wantAfter {
			t.Fatalf("%s: mode %o, want %o", c.name, got, c.wantAfter)
		}
		if c.by == r && !c.truncate {
			// Root's WRITE left the file open read-write: uid 1000's WRITE goes through
			// that descriptor and still clears the bits.
			if st, _ := u.write(fh, 0, []byte("y"), unstable); st != 0 || modeOf(fh) != 0o777 {
				t.Fatalf("%s, then by uid 1000 through the open file: %d, mode %o", c.name, st, modeOf(fh))
			}
		}
	}
}

// TestChownSameOwnerClearsSetuid: chown(2) clears setuid (and setgid with group-exec) on a
// non-directory even when root gives it the owner it already has.
func TestChownSameOwnerClearsSetuid(t *testing.T) {
	f := newFixture(t)
	r, root := f.client("pi-a")
	sudo := r.walk(root, "usr", "bin", "sudo")
	wantStatus(t, "chown root sudo", r.setattr(sudo, nfsc.Sattr3{UID: nfsc.SetUID{SetIt: true, UID: 0}}), 0)
	if _, a := r.getattr(sudo); a.FileMode != 0o755 {
		t.Fatalf("sudo after chown to its owner: %o, want 755", a.FileMode)
	}
	tmp := r.walk(root, "tmp")
	for _, c := range []struct{ mode, want uint32 }{{0o2755, 0o755}, {0o2745, 0o2745}, {0o6711, 0o711}} {
		name := fmt.Sprintf("f%o", c.mode)
		st, fh, _ := r.create(tmp, name, 0, mode(c.mode))
		wantStatus(t, "create", st, 0)
		wantStatus(t, "chgrp to the same group", r.setattr(fh, nfsc.Sattr3{GID: nfsc.SetUID{SetIt: true, UID: 0}}), 0)
		if _, a := r.getattr(fh); a.FileMode != c.want {
			t.Fatalf("%o after chgrp to its group: %o, want %o", c.mode, a.FileMode, c.want)
		}
	}
	// File capabilities go too (setcap'd ping chowned to root loses them, as on a disk).
	st, capped, _ := r.create(tmp, "ping", 0, mode(0o755))
	wantStatus(t, "create ping", st, 0)
	upper := filepath.Join(f.upper("pi-a"), "tmp/ping")
	vfsCap := []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // v2, cap_net_raw permitted
	must(t, unix.Lsetxattr(upper, "security.capability", vfsCap, 0))
	wantStatus(t, "chown ping to its owner", r.setattr(capped, nfsc.Sattr3{UID: nfsc.SetUID{SetIt: true, UID: 0}}), 0)
	if _, err := unix.Lgetxattr(upper, "security.capability", nil); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("file capabilities after chown: %v", err)
	}
	// Directories keep their bits; a mode asked for with the owner is what the file gets.
	var d []byte
	st, d, _ = r.mkdir(tmp, "d", mode(0o2775))
	wantStatus(t, "mkdir", st, 0)
	wantStatus(t, "chown dir", r.setattr(d, nfsc.Sattr3{UID: nfsc.SetUID{SetIt: true, UID: 0}}), 0)
	if _, a := r.getattr(d); a.FileMode != 0o2775 {
		t.Fatalf("dir after chown: %o", a.FileMode)
	}
	st, fh, _ := r.create(tmp, "both", 0, mode(0o4755))
	wantStatus(t, "create", st, 0)
	wantStatus(t, "chown+chmod", r.setattr(fh, nfsc.Sattr3{UID: nfsc.SetUID{SetIt: true, UID: 0}, Mode: nfsc.SetMode{SetIt: true, Mode: 0o4750}}), 0)
	if _, a := r.getattr(fh); a.FileMode != 0o4750 {
		t.Fatalf("chown with mode 4750: %o", a.FileMode)
	}
}

// TestProtectedHardlinks: LINK of a file the caller neither owns nor may read and write is
// refused, as with fs.protected_hardlinks=1; so is one of a setuid file or a setgid
// executable. Root and the owner may link anything.
func TestProtectedHardlinks(t *testing.T) {
	f := newFixture(t)
	r, root := f.client("pi-a")
	tmp := r.walk(root, "tmp")
	o := dialFrom(t, addrA, f.nfs).as(1001, 1001, 1001)
	u := dialFrom(t, addrA, f.nfs).as(1000, 1000, 1000)
	host := r.walk(root, "etc", "hostname")
	wantStatus(t, "uid 1001 links root's 0644 file", o.link(host, tmp, "h"), stPerm)
	wantStatus(t, "uid 1001 links root's 0640 shadow", o.link(r.walk(root, "etc", "shadow"), tmp, "s"), stPerm)
	st, rw, _ := r.create(tmp, "rw", 0, mode(0o666))
	wantStatus(t, "create", st, 0)
	wantStatus(t, "uid 1001 links root's 0666 file", o.link(rw, tmp, "rw2"), 0)
	st, suid, _ := r.create(tmp, "suid", 0, mode(0o4777))
	wantStatus(t, "create", st, 0)
	wantStatus(t, "uid 1001 links a 4777 file", o.link(suid, tmp, "suid2"), stPerm)
	st, sgid, _ := r.create(tmp, "sgid", 0, mode(0o2777))
	wantStatus(t, "create", st, 0)
	wantStatus(t, "uid 1001 links a 2777 file", o.link(sgid, tmp, "sgid2"), stPerm)
	wantStatus(t, "owner links own 0600 file", u.link(u.walk(root, "home", "user", "secret"), tmp, "mine"), 0)
	wantStatus(t, "root links root's file", r.link(host, tmp, "h"), 0)
}

// TestReservedHandleBytes: a handle that differs from one the server made only in its
// reserved bytes is BADHANDLE, not the file.
func TestReservedHandleBytes(t *testing.T) {
	f := newFixture(t)
	c, root := f.client("pi-a")
	host := c.walk(root, "etc", "hostname")
	for _, i := range []int{3, 28, 31} {
		fh := append([]byte(nil), host...)
		fh[i] = 1
		if st, _ := c.getattr(fh); st != uint32(nfs.NFSStatusBadHandle) {
			t.Fatalf("handle with reserved byte %d set: status %d, want BADHANDLE", i, st)
		}
	}
	if st, _ := c.getattr(host); st != 0 {
		t.Fatalf("the handle itself: %d", st)
	}
}
