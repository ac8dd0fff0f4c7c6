package images

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestVerifyFindsChanges(t *testing.T) {
	needRoot(t)
	src := t.TempDir()
	fixtureTree(t, src, 10)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	if _, err := st.Import(context.Background(), src, "v", ImportOptions{Logger: quietLog()}); err != nil {
		t.Fatal(err)
	}
	root := st.RootDir("v")
	p := func(rel string) string { return filepath.Join(root, rel) }
	must(t, os.WriteFile(p("etc/hostname"), []byte("changed\n"), 0o644))
	must(t, unix.Chmod(p("usr/bin/sudo"), 0o755))
	must(t, os.WriteFile(p("etc/init.d/resize2fs_once"), []byte("#!/bin/ab\n"), 0o755)) // same size
	must(t, os.Lchown(p("home/pi"), 0, 0))
	must(t, os.Remove(p("dev/initctl")))
	must(t, os.WriteFile(p("etc/new-file"), nil, 0o644))
	must(t, unix.Removexattr(p("usr/bin/ping"), "security.capability"))
	must(t, os.Remove(p("usr/bin/perl")))
	must(t, os.WriteFile(p("usr/bin/perl"), []byte("perl interpreter\n"), 0o755))
	must(t, os.Remove(p("usr/lib/long-link")))
	must(t, os.Symlink("/elsewhere", p("usr/lib/long-link")))
	problems, err := st.Verify(context.Background(), "v")
	must(t, err)
	all := strings.Join(problems, "\n")
	for _, want := range []string{
		"/etc/hostname: size 8, manifest says 12",
		"/usr/bin/sudo: mode 0755, manifest says 4755",
		"/etc/init.d/resize2fs_once: content changed",
		"/home/pi: owner 0:0, manifest says 1000:1000",
		"/dev/initctl: missing",
		"/etc/new-file: not in the manifest",
		"/usr/bin/ping: xattrs changed",
		"/usr/bin/perl",
		"/usr/lib/long-link",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("verify did not report %q; got:\n%s", want, all)
		}
	}
	// an edited manifest is noticed too
	vi, err := st.Info("v")
	must(t, err)
	mf := filepath.Join(st.layerDir(vi.Layers[0]), manifestName)
	b, _ := os.ReadFile(mf)
	must(t, os.WriteFile(mf, append(b, []byte("d\t755\t0\t0\t0\t0\t-\t-\t\"zzz\"\n")...), 0o644))
	problems, err = st.Verify(context.Background(), "v")
	must(t, err)
	if !strings.Contains(strings.Join(problems, "\n"), "manifest edited") {
		t.Errorf("edited manifest not reported: %v", problems)
	}
	// an unreadable manifest is an error, not a clean bill of health
	must(t, os.WriteFile(mf, []byte("garbage"), 0o644))
	if _, err := st.Verify(context.Background(), "v"); err == nil || !strings.Contains(err.Error(), "manifest") {
		t.Errorf("garbage manifest: %v", err)
	}
	if _, err := st.Verify(context.Background(), "missing"); err == nil || !strings.Contains(err.Error(), "pifleet image import") {
		t.Errorf("missing image: %v", err)
	}
}

// TestImportPureGoXZ imports with github.com/ulikunitz/xz, as on a machine without xz(1).
func TestImportPureGoXZ(t *testing.T) {
	pi := buildPiImage(t, 0)
	xzPath := pi.img + ".xz"
	xzFile(t, pi.img, xzPath)
	// No xz binary to find; getfacl stays reachable for checkPiImport's ACL comparison.
	bin := t.TempDir()
	if getfacl, err := exec.LookPath("getfacl"); err == nil {
		must(t, os.Symlink(getfacl, filepath.Join(bin, "getfacl")))
	}
	t.Setenv("PATH", bin)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	if _, err := st.Import(context.Background(), xzPath, "purego", ImportOptions{Logger: quietLog()}); err != nil {
		t.Fatal(err)
	}
	checkPiImport(t, st, "purego", pi)
	// and a truncated file is refused by the Go decoder as well
	b, _ := os.ReadFile(xzPath)
	cut := filepath.Join(t.TempDir(), "cut.img.xz")
	must(t, os.WriteFile(cut, b[:len(b)*2/3], 0o644))
	if _, err := st.Import(context.Background(), cut, "cut", ImportOptions{Logger: quietLog()}); err == nil {
		t.Fatal("truncated xz imported with the Go decoder")
	}
	if st.Exists("cut") {
		t.Error("failed import left an image")
	}
}

// TestImportCorruptMetadata damages the ext4 metadata of a good image in many places: each
// import must end in success or an error, never a panic, and a failure leaves nothing.
func TestImportCorruptMetadata(t *testing.T) {
	pi := buildPiImage(t, 0)
	img, err := os.ReadFile(pi.img)
	must(t, err)
	rootOff := (8192 + 40960*1024/512) * 512
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	dir := t.TempDir()
	// the superblock, group descriptors and the first inode table blocks
	for i, off := range []int{1024 + 0x18, 1024 + 0x28, 1024 + 0x58, 4096 + 8, 4096 + 0x28, 5 * 4096, 40 * 4096, 41 * 4096, 60 * 4096, 100 * 4096} {
		bad := append([]byte(nil), img...)
		for j := 0; j < 64; j++ {
			bad[rootOff+off+j] ^= byte(0xA5 + j)
		}
		p := filepath.Join(dir, "bad.img")
		must(t, os.WriteFile(p, bad, 0o644))
		name := "bad" + string(rune('a'+i))
		_, err := st.Import(context.Background(), p, name, ImportOptions{Logger: quietLog()})
		if err != nil {
			if st.Exists(name) {
				t.Errorf("offset %d: failed import left the image", off)
			}
			continue
		}
		must(t, st.Remove(name, nil))
	}
	assertEmptyStore(t, st)
}

func TestProgressLines(t *testing.T) {
	var b strings.Builder
	p := newProgress(&b, "pios")
	now := p.now()
	p.now = func() time.Time { return now }
	p.begin("copy", 1000<<20)
	now = now.Add(10 * time.Second)
	p.add(250 << 20)
	p.end()
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("lines %q", lines)
	}
	if lines[0] != "image pios: copy 250.0 MiB / 1000.0 MiB (25%) 25.0 MiB/s ETA 0:30" {
		t.Errorf("progress line %q", lines[0])
	}
	if lines[1] != "image pios: copy 250.0 MiB / 1000.0 MiB (25%) 25.0 MiB/s done in 10s" {
		t.Errorf("final line %q", lines[1])
	}
	var nop *progress
	nop.add(1) // a nil progress (no writer) is a no-op
	// on a terminal one line is redrawn in place and ended once
	b.Reset()
	p.tty = true
	p.begin("decompress", 0)
	now = now.Add(5 * time.Second)
	p.add(10 << 20)
	p.end()
	if got := b.String(); got != "\r\x1b[Kimage pios: decompress 10.0 MiB 2.0 MiB/s\r\x1b[Kimage pios: decompress 10.0 MiB 2.0 MiB/s done in 5s\n" {
		t.Errorf("terminal output %q", got)
	}
}
