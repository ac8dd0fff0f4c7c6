package images

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"strings"
	"testing"
)

func FuzzParseManifest(f *testing.F) {
	var good bytes.Buffer
	recs := []record{
		{Path: "", Mode: typeDir | 0o755, Mtime: 1},
		{Path: "etc/passwd", Mode: typeReg | 0o644, Size: 3, Data: strings.Repeat("ab", 32)},
		{Path: "usr/bin/sudo", Mode: typeReg | 0o4755, UID: 0, GID: 0, Size: 0, Data: strings.Repeat("0", 64), Xattrs: strings.Repeat("f", 64)},
		{Path: "usr/bin/perl", Link: "usr/bin/perl5.36"},
		{Path: "odd\tname\n", Mode: typeLnk | 0o777, Size: 6, Data: "target"},
		{Path: "dev/console", Mode: typeChr | 0o600, Data: "5:1"},
		{Path: "dev/initctl", Mode: typeFifo | 0o600},
		{Path: "etc/gone", Mode: typeChr, Data: whiteoutDev},
		{Path: "var/cache", Mode: typeDir | 0o755, Opaque: true, Xattrs: strings.Repeat("e", 64)},
	}
	if err := writeManifest(&good, recs); err != nil {
		f.Fatal(err)
	}
	f.Add(good.Bytes())
	f.Add([]byte(manifestHeader + "\n"))
	f.Add([]byte(""))
	f.Add([]byte(manifestHeader + "\nf\t644\t0\t0\t0\t0\tzz\t-\t\"a\"\n"))
	f.Add([]byte(manifestHeader + "\nh\t0\t0\t0\t0\t0\t\"../x\"\t-\t\"a\"\n"))
	f.Add([]byte(manifestHeader + "\nd\t755\t0\t0\t0\t0\t-\t-\t\"a\"\nd\t755\t0\t0\t0\t0\t-\t-\t\"a\"\n"))
	f.Add([]byte(manifestHeaderV1 + "\nc\t0\t0\t0\t0\t0\t0:0\t-\t\"a\"\nw\t0\t0\t0\t0\t0\t1:2\t-\t\"b\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := parseManifest(bytes.NewReader(b))
		if err != nil {
			return
		}
		// whatever parses must survive a round trip unchanged
		var out bytes.Buffer
		if err := writeManifest(&out, recs); err != nil {
			t.Fatal(err)
		}
		again, err := parseManifest(&out)
		if err != nil {
			t.Fatalf("re-parse of written manifest: %v\n%s", err, out.String())
		}
		if len(again) != len(recs) {
			t.Fatalf("round trip: %d records, then %d", len(recs), len(again))
		}
		byPath := map[string]record{}
		for _, r := range again {
			byPath[r.Path] = r
		}
		for _, r := range recs {
			if byPath[r.Path] != r {
				t.Fatalf("round trip changed %+v into %+v", r, byPath[r.Path])
			}
		}
		for _, r := range recs {
			if strings.HasPrefix(r.Path, "/") || strings.Contains("/"+r.Path+"/", "/../") {
				t.Fatalf("unsafe path %q accepted", r.Path)
			}
		}
	})
}

func TestManifestRoundTrip(t *testing.T) {
	recs := []record{
		{Path: "b", Mode: typeReg | 0o644, Size: 3, Data: strings.Repeat("ab", 32), Mtime: -5},
		{Path: "a", Mode: typeDir | 0o1777, UID: 7, GID: 8},
		{Path: "c", Link: "b"},
	}
	var buf bytes.Buffer
	if err := writeManifest(&buf, recs); err != nil {
		t.Fatal(err)
	}
	got, err := parseManifest(&buf)
	if err != nil {
		t.Fatal(err)
	}
	want := []record{recs[1], recs[0], recs[2]} // sorted by path
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("record %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{
		"",
		"# not a manifest\n",
		manifestHeader + "\nq\t644\t0\t0\t0\t0\t-\t-\t\"a\"\n",
		manifestHeader + "\nf\t99999\t0\t0\t0\t0\t-\t-\t\"a\"\n",
		manifestHeader + "\nl\t777\t0\t0\t0\t0\tnot-quoted\t-\t\"a\"\n",
		manifestHeader + "\nd\t755\t0\t0\t0\t0\t-\t-\t\"/abs\"\n",
		manifestHeader + "\n" + strings.Repeat("x", maxManifestLine+1) + "\n",
	} {
		if _, err := parseManifest(strings.NewReader(bad)); err == nil {
			t.Errorf("parseManifest accepted %.60q", bad)
		}
	}
}

func FuzzParseInfo(f *testing.F) {
	f.Add([]byte("name: x\nsource: a.img.xz\nformat: img.xz\nsha256: abc\nfiles: 3\nbytes: 10\nimported: 2024-11-19T10:00:00Z\nprepared: true\nchanges: [a, b]\n"))
	f.Add([]byte("name: k\nbase: x\nlayers: [" + strings.Repeat("a", 64) + ", " + strings.Repeat("b", 64) + "]\nsource: board pi-01\nfiles: 3\nbytes: 10\nimported: 2024-11-19T10:00:00Z\n"))
	f.Add([]byte("layers: [" + strings.Repeat("a", 64) + ", " + strings.Repeat("a", 64) + "]\n"))
	f.Add([]byte("files: -1\n"))
	f.Add([]byte("unknown: 1\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := parseInfo(b)
		if err != nil {
			return
		}
		if info.Files < 0 || info.Bytes < 0 {
			t.Fatalf("negative counts accepted: %+v", info)
		}
		if len(info.Layers) == 0 || firstDup(info.Layers) != "" {
			t.Fatalf("bad stack accepted: %v", info.Layers)
		}
		for _, d := range info.Layers {
			if CheckDigest(d) != nil {
				t.Fatalf("bad digest accepted: %q", d)
			}
		}
		if info.Base != "" && CheckName(info.Base) != nil {
			t.Fatalf("bad base accepted: %q", info.Base)
		}
	})
}

// FuzzParseLayerMeta fuzzes layer.yaml parsing: anyone with access to the state dir can edit it.
func FuzzParseLayerMeta(f *testing.F) {
	f.Add([]byte("files: 3\nbytes: 10\ncreated: 2024-11-19T10:00:00Z\ncomment: root of x.img\n"))
	f.Add([]byte("files: 0\n"))
	f.Add([]byte("digest: x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseLayerMeta(b)
		if err == nil && (m.Files < 1 || m.Bytes < 0) {
			t.Fatalf("bad counts accepted: %+v", m)
		}
	})
}

func TestParseInfoRejects(t *testing.T) {
	d := strings.Repeat("a", 64)
	for _, bad := range []string{"layers: [" + d + ", " + d + "]\n", "layers: []\n", "layers: [abc]\n",
		"layers: [" + d + "]\nbase: ../x\n", "files: -1\n", "unknown_field: 1\n", "{", "files: [1]\n", strings.Repeat("#", maxInfoSize+1)} {
		if _, err := parseInfo([]byte(bad)); err == nil {
			t.Errorf("parseInfo accepted %.40q", bad)
		}
	}
}

func FuzzSniffFormat(f *testing.F) {
	mbr := make([]byte, 512)
	mbr[510], mbr[511] = 0x55, 0xAA
	mbr[446+4], mbr[446+12] = 0x0c, 1
	f.Add(mbr)
	f.Add([]byte{0xFD, '7', 'z', 'X', 'Z', 0})
	f.Add([]byte{0x1F, 0x8B, 8})
	f.Add(tarHeader())
	f.Add([]byte("hello"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k := sniffFormat(b)
		switch k {
		case kindUnknown, kindXZ, kindGzip, kindTar, kindMBR:
		default:
			t.Fatalf("unknown kind %q", k)
		}
		if (k == kindMBR || k == kindTar) && len(b) < 512 {
			t.Fatalf("%s from %d bytes", k, len(b))
		}
	})
}

func tarHeader() []byte {
	var buf bytes.Buffer
	tw := newTestTar(&buf)
	tw.WriteHeader(tarFileHeader("a", 1))
	tw.Write([]byte("x"))
	tw.Close()
	return buf.Bytes()[:512]
}

func TestSniffFormat(t *testing.T) {
	mbr := make([]byte, 512)
	mbr[510], mbr[511] = 0x55, 0xAA
	if k := sniffFormat(mbr); k != kindUnknown {
		t.Errorf("boot signature without partitions: %q", k)
	}
	mbr[446+4], mbr[446+12] = 0x0c, 1
	if k := sniffFormat(mbr); k != kindMBR {
		t.Errorf("MBR: %q", k)
	}
	mbr[446] = 0x33
	if k := sniffFormat(mbr); k != kindUnknown {
		t.Errorf("bad status byte: %q", k)
	}
	if k := sniffFormat(tarHeader()); k != kindTar {
		t.Errorf("tar: %q", k)
	}
	h := tarHeader()
	h[0] ^= 1
	if k := sniffFormat(h); k != kindUnknown {
		t.Errorf("tar with bad checksum: %q", k)
	}
}

func FuzzExt4Superblock(f *testing.F) {
	sb := make([]byte, 1024)
	binary.LittleEndian.PutUint16(sb[0x38:], 0xEF53)
	binary.LittleEndian.PutUint32(sb[0x0:], 8192)
	binary.LittleEndian.PutUint32(sb[0x28:], 8192)
	binary.LittleEndian.PutUint32(sb[0x18:], 2)
	binary.LittleEndian.PutUint32(sb[0x4C:], 1)
	binary.LittleEndian.PutUint16(sb[0x58:], 256)
	f.Add(sb, int64(64<<20))
	f.Add(sb[:100], int64(1<<20))
	f.Fuzz(func(t *testing.T, b []byte, size int64) {
		p, err := parseExt4Superblock(b, size)
		if err != nil {
			return
		}
		if p.blockSize < 1024 || p.inodeSize < 128 || p.inodeSize > p.blockSize || p.ipg == 0 {
			t.Fatalf("accepted geometry %+v", p)
		}
		if int64((p.inodes+p.ipg-1)/p.ipg)*int64(p.descSize) > size {
			t.Fatal("group descriptor table larger than the partition accepted")
		}
	})
}

// FuzzExt4Extents feeds arbitrary inode bodies and blocks to the extent reader: it must
// return an error or data of exactly the inode's size, never panic or read past the partition.
func FuzzExt4Extents(f *testing.F) {
	part := make([]byte, 64*1024)
	ino := make([]byte, 256)
	binary.LittleEndian.PutUint16(ino[0:], uint16(typeReg|0o644))
	binary.LittleEndian.PutUint32(ino[0x4:], 5000)
	binary.LittleEndian.PutUint32(ino[0x20:], ext4InodeFlagExtents)
	blk := ino[0x28:]
	binary.LittleEndian.PutUint16(blk[0:], ext4ExtentMagic)
	binary.LittleEndian.PutUint16(blk[2:], 1)
	binary.LittleEndian.PutUint16(blk[4:], 4)
	e := blk[12:]
	binary.LittleEndian.PutUint32(e[0:], 1)  // logical block 1 (block 0 is a hole)
	binary.LittleEndian.PutUint16(e[4:], 2)  // 2 blocks
	binary.LittleEndian.PutUint32(e[8:], 10) // at physical block 10
	for i := range part[10*1024 : 12*1024] {
		part[10*1024+i] = 'x'
	}
	f.Add(ino, part[:16*1024])
	depth1 := append([]byte(nil), ino...)
	binary.LittleEndian.PutUint16(depth1[0x28+6:], 1)
	f.Add(depth1, part[:16*1024])
	f.Fuzz(func(t *testing.T, inode, data []byte) {
		if len(inode) < 128 || len(inode) > 1024 || len(data) > 1<<20 {
			return
		}
		p := &ext4Part{r: bytes.NewReader(data), size: int64(len(data)), blockSize: 1024}
		in := parseExt4Inode(12, inode)
		if in.size > 1<<20 {
			return
		}
		ext, err := p.extents(in)
		if err != nil {
			return
		}
		b, err := io.ReadAll(&extentReader{p: p, ext: ext, size: in.size})
		if err == nil && int64(len(b)) != in.size {
			t.Fatalf("read %d bytes of a %d-byte file", len(b), in.size)
		}
	})
}

func TestExtentReaderHolesAndUnwritten(t *testing.T) {
	data := make([]byte, 16*1024)
	for i := range data {
		data[i] = 0xAB // what a careless reader would return for holes
	}
	copy(data[2048:], bytes.Repeat([]byte("D"), 1024))
	p := &ext4Part{r: bytes.NewReader(data), size: int64(len(data)), blockSize: 1024}
	ext := []ext4Extent{{lblk: 1, length: 1, pblk: 2}, {lblk: 3, length: 2, pblk: 5, unwritten: true}}
	b, err := io.ReadAll(&extentReader{p: p, ext: ext, size: 6*1024 + 10})
	if err != nil {
		t.Fatal(err)
	}
	want := append(make([]byte, 1024), bytes.Repeat([]byte("D"), 1024)...)
	want = append(want, make([]byte, 4*1024+10)...)
	if !bytes.Equal(b, want) {
		t.Errorf("holes/unwritten not read as zeros")
	}
}

// FuzzFindPartitions sniffs partition contents (ext4 magic, FAT boot sectors) from arbitrary
// bytes and partition bounds: no panic, and nothing accepted past the end of the file.
func FuzzFindPartitions(f *testing.F) {
	disk := make([]byte, 8192)
	binary.LittleEndian.PutUint16(disk[4096+1024+0x38:], 0xEF53)
	copy(disk[512+0x52:], "FAT32")
	disk[512+510], disk[512+511] = 0x55, 0xAA
	f.Add(disk, int64(512), int64(1024), int64(4096), int64(4096))
	f.Add(disk[:100], int64(0), int64(8192), int64(-1), int64(5))
	f.Fuzz(func(t *testing.T, b []byte, s1, n1, s2, n2 int64) {
		parts := []struct{ start, size int64 }{{s1, n1}, {s2, n2}}
		l, err := findPartitions(bytes.NewReader(b), int64(len(b)), parts)
		if err != nil {
			return
		}
		if l.rootStart < 0 || l.rootStart+l.rootSize > int64(len(b)) || l.bootStart+l.bootSize > int64(len(b)) {
			t.Fatalf("layout %+v outside a %d-byte file", l, len(b))
		}
	})
}

// FuzzWalkTar: arbitrary bytes as a tar stream end in entries or an error, never a panic.
func FuzzWalkTar(f *testing.F) {
	var buf bytes.Buffer
	tw := newTestTar(&buf)
	h := tarFileHeader("etc/passwd", 5)
	h.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
	tw.WriteHeader(h)
	tw.Write([]byte("root\n"))
	tw.Close()
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:700])
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = walkTar(context.Background(), bytes.NewReader(b), func(e *entry) error {
			if e.Open != nil {
				r, err := e.Open()
				if err != nil {
					return err
				}
				_, err = io.Copy(io.Discard, r)
				return err
			}
			return nil
		})
	})
}

// FuzzPrepFilters: the fstab and cmdline rewriters keep every line/argument they do not drop.
func FuzzPrepFilters(f *testing.F) {
	f.Add("proc /proc proc defaults 0 0\nPARTUUID=ab-02 / ext4 defaults 0 1\n# c\n\n", "console=tty1 root=PARTUUID=ab-02 rootfstype=ext4 init=/usr/lib/raspberrypi-sys-mods/firstboot quiet")
	f.Fuzz(func(t *testing.T, fstab, cmdline string) {
		out, dropped := filterFstab(fstab)
		if dropped > strings.Count(fstab, "\n")+1 {
			t.Fatalf("dropped %d lines of %q", dropped, fstab)
		}
		if dropped == 0 && strings.TrimRight(out, "\n") != strings.TrimRight(strings.ReplaceAll(fstab, "\r\n", "\n"), "\n") && !strings.Contains(fstab, "\r") {
			t.Fatalf("nothing dropped but fstab changed: %q -> %q", fstab, out)
		}
		kept, gone := filterCmdline(cmdline)
		if len(strings.Fields(kept))+len(gone) != len(strings.Fields(cmdline)) {
			t.Fatalf("cmdline %q: kept %q dropped %q", cmdline, kept, gone)
		}
		for _, g := range gone {
			if strings.HasPrefix(g, "console=") {
				t.Fatalf("dropped %q", g)
			}
		}
	})
}

func TestPrepFilters(t *testing.T) {
	out, n := filterFstab("proc /proc proc defaults 0 0\nPARTUUID=ab-01 /boot/firmware vfat defaults 0 2\nPARTUUID=ab-02 / ext4 defaults,noatime 0 1\ntmpfs /tmp tmpfs defaults 0 0\n")
	if n != 2 || !strings.Contains(out, "proc /proc") || !strings.Contains(out, "tmpfs /tmp") || strings.Contains(out, "\nPARTUUID") {
		t.Errorf("fstab: %d dropped, %q", n, out)
	}
	kept, gone := filterCmdline("console=serial0,115200 console=tty1 root=PARTUUID=ab-02 rootfstype=ext4 fsck.repair=yes rootwait init=/usr/lib/raspberrypi-sys-mods/firstboot resize cfg80211.ieee80211_regdom=GB init=/sbin/myinit")
	if kept != "console=serial0,115200 console=tty1 rootwait cfg80211.ieee80211_regdom=GB init=/sbin/myinit" || len(gone) != 5 {
		t.Errorf("cmdline kept %q dropped %q", kept, gone)
	}
}

// FuzzACL: arbitrary bytes as an ext4 ACL, an xattr ACL or a text ACL end in an error or in
// an ACL that survives the xattr format unchanged; never a panic.
func FuzzACL(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 1, 0, 6, 0, 2, 0, 6, 0, 0xd2, 4, 0, 0, 4, 0, 4, 0, 0x10, 0, 6, 0, 0x20, 0, 4, 0})
	f.Add([]byte{2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 4, 0, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte("user::rw-,user:a:r--:1000,group::r--,mask::r--,other::r--"))
	f.Add([]byte("u::rwx\ng:adm:r-x #effective\nm::r\no::"))
	names := &nameDB{users: map[string]uint32{"a": 1}, groups: map[string]uint32{"adm": 4}}
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip := func(from string, acl []aclEntry) {
			x := encodeXattrACL(acl)
			back, err := parseXattrACL(x)
			if err != nil || !bytes.Equal(encodeXattrACL(back), x) {
				t.Fatalf("%s ACL %v does not survive the xattr format: %v", from, acl, err)
			}
			e := &entry{Mode: typeDir | 0o755, Xattrs: map[string][]byte{xattrACLAccess: x, xattrACLDefault: x}}
			if err := canonicalACLs(e); err == nil && checkACL(acl) != nil {
				t.Fatalf("%s ACL %v accepted though invalid", from, acl)
			}
		}
		if acl, err := parseExt4ACL(b); err == nil {
			roundTrip("ext4", acl)
		}
		if acl, err := parseXattrACL(b); err == nil {
			roundTrip("xattr", acl)
		}
		if acl, err := parseTextACL(string(b), names); err == nil {
			roundTrip("text", acl)
		}
	})
}

// FuzzParsePlan fuzzes the migration plan and layout 1's image.yaml, both read from disk.
func FuzzParsePlan(f *testing.F) {
	d := strings.Repeat("a", 64)
	f.Add([]byte("info:\n  name: x\n  layers: [" + d + "]\n  source: s\n  files: 1\n  bytes: 0\n  imported: 2024-11-19T10:00:00Z\nroot: " + d + "\n"))
	f.Add([]byte("root: " + d + "\nprep: " + d + "\n"))
	f.Add([]byte("name: x\nsource: a.img.xz\nformat: img.xz\nfiles: 3\nbytes: 10\nimported: 2024-11-19T10:00:00Z\nmanifest_sha256: abc\nprepared: true\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := parsePlan(b); err == nil {
			if CheckDigest(p.Root) != nil || p.Info.Layers[0] != p.Root || firstDup(p.Info.Layers) != "" {
				t.Fatalf("bad plan accepted: %+v", p)
			}
		}
		if v, err := parseV1Info(b); err == nil && (v.Files < 0 || v.Bytes < 0) {
			t.Fatalf("negative counts accepted: %+v", v)
		}
	})
}
