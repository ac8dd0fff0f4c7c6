package images

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ext4ACLHex is what mkfs.ext4 -d wrote for "user::rw- user:1234:rw- group::r-- group:4:r--
// mask::rw- other::r--" (debugfs ea_get -r), and xattrACLHex what getxattr returns for it.
const (
	ext4ACLHex  = "01000000 0100 0600 0200 0600 d2040000 0400 0400 0800 0400 04000000 1000 0600 2000 0400"
	xattrACLHex = "02000000 01000600ffffffff 02000600d2040000 04000400ffffffff 0800040004000000 10000600ffffffff 20000400ffffffff"
)

func TestACLFormats(t *testing.T) {
	acl, err := parseExt4ACL(unhex(t, ext4ACLHex))
	if err != nil {
		t.Fatal(err)
	}
	if got := encodeXattrACL(acl); !bytes.Equal(got, unhex(t, xattrACLHex)) {
		t.Errorf("ext4 -> xattr:\n got %x\nwant %x", got, unhex(t, xattrACLHex))
	}
	if err := checkACL(acl); err != nil {
		t.Errorf("valid ACL refused: %v", err)
	}
	back, err := parseXattrACL(unhex(t, xattrACLHex))
	if err != nil || !bytes.Equal(encodeXattrACL(back), unhex(t, xattrACLHex)) {
		t.Errorf("xattr round trip: %v", err)
	}
	for _, text := range []string{
		"user::rw-\nuser:1234:rw-\ngroup::r--\ngroup:adm:r--\nmask::rw-\nother::r--\n",    // GNU tar --acls
		"user::rw-,user:someone:rw-:1234,group::r--,group:adm:r--:4,mask::rw-,other::r--", // star, bsdtar
		"u::rw,u:1234:rw- #effective:rw-\ng::r,g:4:r,m::rw,o::r",                          // setfacl's short forms
	} {
		got, err := parseTextACL(text, &nameDB{users: map[string]uint32{}, groups: map[string]uint32{"adm": 4}})
		if err != nil {
			t.Errorf("%q: %v", text, err)
			continue
		}
		if !bytes.Equal(encodeXattrACL(got), unhex(t, xattrACLHex)) {
			t.Errorf("%q:\n got %x\nwant %s", text, encodeXattrACL(got), xattrACLHex)
		}
	}
	if _, err := parseTextACL("user::rw-,user:ghost:r--,group::r--,mask::r--,other::r--", &nameDB{}); err == nil || !strings.Contains(err.Error(), `"ghost"`) {
		t.Errorf("unknown user name: %v", err)
	}

	// what the kernel would refuse (or mangle) is refused with a reason
	bad := map[string][]byte{
		"short header":     {1, 0},
		"ext4 version 2":   unhex(t, "02000000 0100 0600"),
		"cut entry":        unhex(t, "01000000 0200 0600 d204"),
		"unknown tag":      unhex(t, "01000000 4000 0600"),
		"trailing byte":    unhex(t, "01000000 0100 0600 20"),
		"long entry short": unhex(t, "01000000 0100 0600 0800 0400"),
	}
	for name, b := range bad {
		if _, err := parseExt4ACL(b); err == nil {
			t.Errorf("ext4 %s: accepted", name)
		}
	}
	for name, acl := range map[string][]aclEntry{
		"no mask with named": {{aclUserObj, 6, 0}, {aclUser, 6, 1}, {aclGroupObj, 4, 0}, {aclOther, 4, 0}},
		"other first":        {{aclOther, 4, 0}, {aclUserObj, 6, 0}, {aclGroupObj, 4, 0}},
		"two owners":         {{aclUserObj, 6, 0}, {aclUserObj, 6, 0}, {aclGroupObj, 4, 0}, {aclOther, 4, 0}},
		"entry after other":  {{aclUserObj, 6, 0}, {aclGroupObj, 4, 0}, {aclOther, 4, 0}, {aclOther, 4, 0}},
		"no other":           {{aclUserObj, 6, 0}, {aclGroupObj, 4, 0}},
		"perm bits":          {{aclUserObj, 8, 0}, {aclGroupObj, 4, 0}, {aclOther, 4, 0}},
		"undefined id":       {{aclUserObj, 6, 0}, {aclUser, 6, aclUndefinedID}, {aclGroupObj, 4, 0}, {aclMask, 6, 0}, {aclOther, 4, 0}},
	} {
		if err := checkACL(acl); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}

	// an access ACL sets the mode's group class from its mask; one that only repeats the
	// mode is no xattr at all, as the kernel stores it
	e := &entry{Mode: typeReg | 0o4640, Xattrs: map[string][]byte{xattrACLAccess: unhex(t, xattrACLHex), "user.x": []byte("y")}}
	if err := canonicalACLs(e); err != nil || e.Mode != typeReg|0o4664 || len(e.Xattrs) != 2 {
		t.Errorf("mask: mode %o xattrs %d, err %v", e.Mode, len(e.Xattrs), err)
	}
	minimal := encodeXattrACL([]aclEntry{{aclUserObj, 7, 0}, {aclGroupObj, 5, 0}, {aclOther, 1, 0}})
	e = &entry{Mode: typeDir | 0o700, Xattrs: map[string][]byte{xattrACLAccess: minimal, xattrACLDefault: minimal}}
	if err := canonicalACLs(e); err != nil || e.Mode != typeDir|0o751 || len(e.Xattrs) != 1 || e.Xattrs[xattrACLDefault] == nil {
		t.Errorf("minimal: mode %o xattrs %v, err %v", e.Mode, e.Xattrs, err)
	}
	for name, e := range map[string]*entry{
		"default ACL on a file": {Mode: typeReg | 0o644, Xattrs: map[string][]byte{xattrACLDefault: minimal}},
		"ACL on a symlink":      {Mode: typeLnk | 0o777, Xattrs: map[string][]byte{xattrACLAccess: minimal}},
		"ext4 format":           {Mode: typeReg | 0o644, Xattrs: map[string][]byte{xattrACLAccess: unhex(t, ext4ACLHex)}},
	} {
		if err := canonicalACLs(e); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestImportTarballTextACLs: GNU tar --acls without --xattrs carries ACLs as text only, with
// names; they resolve against the image's own /etc/passwd and /etc/group.
func TestImportTarballTextACLs(t *testing.T) {
	needRoot(t)
	needTool(t, "tar")
	src := t.TempDir()
	fixtureTree(t, src, 0)
	tarball := filepath.Join(t.TempDir(), "root.tar")
	run(t, "tar", "--acls", "--numeric-owner", "-cp", "-f", tarball, "-C", src, ".")
	if raw, _ := os.ReadFile(tarball); !bytes.Contains(raw, []byte("SCHILY.acl.default")) || bytes.Contains(raw, []byte("SCHILY.xattr.system.posix_acl")) {
		t.Fatal("tar did not write the ACLs as text only")
	}
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	if _, err := st.Import(context.Background(), tarball, "text", ImportOptions{Logger: quietLog()}); err != nil {
		t.Fatal(err)
	}
	compareACLs(t, src, st.RootDir("text"))
	if problems, err := st.Verify(context.Background(), "text"); err != nil || len(problems) > 0 {
		t.Errorf("verify: %v %v", problems, err)
	}

	// a name the image does not know is an error naming the file and the name
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	h := tarFileHeader("srv/data", 0)
	h.PAXRecords = map[string]string{"SCHILY.acl.access": "user::rw-\nuser:ghost:r--\ngroup::r--\nmask::r--\nother::r--\n"}
	must(t, tw.WriteHeader(h))
	must(t, tw.Close())
	bad := filepath.Join(t.TempDir(), "ghost.tar")
	must(t, os.WriteFile(bad, buf.Bytes(), 0o644))
	_, err = st.Import(context.Background(), bad, "ghost", ImportOptions{Logger: quietLog()})
	if err == nil || !strings.Contains(err.Error(), "/srv/data") || !strings.Contains(err.Error(), `"ghost"`) {
		t.Errorf("import with an unknown ACL name: %v", err)
	}
	if st.Exists("ghost") {
		t.Error("failed import left an image")
	}
}

// TestImportExt4BadACL: a malformed ACL in an ext4 image (written raw with debugfs) is an
// error naming the file and the attribute, and the store is left empty.
func TestImportExt4BadACL(t *testing.T) {
	needRoot(t)
	needTool(t, "mkfs.ext4", "debugfs", "mkfs.vfat", "mcopy", "mmd", "sfdisk")
	work := t.TempDir()
	src := filepath.Join(work, "src")
	writeTree(t, src, map[string]string{"etc/hostname": "pi\n", "boot/firmware/.keep": ""})
	rootPart := filepath.Join(work, "root.ext4")
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-d", src, rootPart, "16M")
	bad := filepath.Join(work, "bad-acl")
	// version 1, user::rw-, then a USER entry cut off before its id
	must(t, os.WriteFile(bad, []byte{1, 0, 0, 0, 1, 0, 6, 0, 2, 0, 6, 0}, 0o644))
	run(t, "debugfs", "-w", "-R", "ea_set -r -f "+bad+" /etc/hostname system.posix_acl_access", rootPart)
	img := assembleDisk(t, work, rootPart, map[string][]byte{"config.txt": []byte("arm_64bit=1\n")}, 16<<20)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	_, err = st.Import(context.Background(), img, "bad", ImportOptions{Logger: quietLog()})
	if err == nil || !strings.Contains(err.Error(), "/etc/hostname") || !strings.Contains(err.Error(), "system.posix_acl_access") {
		t.Fatalf("import of a malformed ACL: %v", err)
	}
	assertEmptyStore(t, st)
}
