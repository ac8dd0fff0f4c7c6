package images

import (
	"bytes"
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
	f.Add([]byte("files: -1\n"))
	f.Add([]byte("unknown: 1\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := parseInfo(b)
		if err == nil && (info.Files < 0 || info.Bytes < 0) {
			t.Fatalf("negative counts accepted: %+v", info)
		}
	})
}

func TestParseInfoRejects(t *testing.T) {
	for _, bad := range []string{"files: -1\n", "unknown_field: 1\n", "{", "files: [1]\n", strings.Repeat("#", maxInfoSize+1)} {
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
