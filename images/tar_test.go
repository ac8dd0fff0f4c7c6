package images

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newTestTar(w io.Writer) *tar.Writer { return tar.NewWriter(w) }

func tarFileHeader(name string, size int64) *tar.Header {
	return &tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}
}

// TestImportTarball packs the fixture with GNU tar (xattrs included) in each compression and
// checks the import against the fixture itself.
func TestImportTarball(t *testing.T) {
	needRoot(t)
	needTool(t, "tar", "xz", "gzip")
	src := t.TempDir()
	fixtureTree(t, src, 50)
	want := takeSnapshot(t, src, nil)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	for _, c := range []struct{ file, flag, format string }{
		{"root.tar", "", "tar"}, {"root.tar.gz", "-z", "tar.gz"}, {"root.tar.xz", "-J", "tar.xz"},
	} {
		t.Run(c.format, func(t *testing.T) {
			tarball := filepath.Join(out, c.file)
			args := []string{"--xattrs", "--xattrs-include=*", "--numeric-owner", "-cp", "-f", tarball, "-C", src}
			if c.flag != "" {
				args = append(args, c.flag)
			}
			run(t, "tar", append(args, ".")...)
			name := strings.ReplaceAll(c.format, ".", "-")
			info, err := st.Import(context.Background(), tarball, name, ImportOptions{Logger: quietLog()})
			if err != nil {
				t.Fatal(err)
			}
			got := takeSnapshot(t, st.RootDir(name), nil)
			compareSnapshots(t, want, got)
			compareACLs(t, src, st.RootDir(name))
			dirMtimes(t, src, st.RootDir(name), nil)
			if info.Format != c.format || len(info.SHA256) != 64 {
				t.Errorf("info %+v", info)
			}
			if sum := run(t, "sha256sum", tarball); !strings.HasPrefix(sum, info.SHA256) {
				t.Errorf("sha256 %s, sha256sum says %s", info.SHA256, sum)
			}
		})
	}
}

// TestImportTruncatedTarball: a cut-off archive is an error, and nothing is left behind.
func TestImportTruncatedTarball(t *testing.T) {
	needRoot(t)
	needTool(t, "tar", "xz")
	src := t.TempDir()
	fixtureTree(t, src, 50)
	dir := t.TempDir()
	full := filepath.Join(dir, "root.tar.xz")
	run(t, "tar", "-cJf", full, "-C", src, ".")
	b, _ := os.ReadFile(full)
	st, _ := OpenStore(filepath.Join(t.TempDir(), "images"))
	for _, n := range []int{len(b) / 2, len(b) - 10} {
		cut := filepath.Join(dir, "cut.tar.xz")
		os.WriteFile(cut, b[:n], 0o644)
		_, err := st.Import(context.Background(), cut, "cut", ImportOptions{Logger: quietLog()})
		if err == nil {
			t.Fatalf("truncated to %d of %d bytes: import succeeded", n, len(b))
		}
		if !strings.Contains(err.Error(), "cut.tar.xz") {
			t.Errorf("error does not name the file: %v", err)
		}
		assertEmptyStore(t, st)
	}
	// a plain tar cut mid-file
	plain := filepath.Join(dir, "root.tar")
	if out, err := exec.Command("tar", "-cf", plain, "-C", src, ".").CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	pb, _ := os.ReadFile(plain)
	os.WriteFile(plain, pb[:len(pb)/2+100], 0o644)
	if _, err := st.Import(context.Background(), plain, "cut", ImportOptions{Logger: quietLog()}); err == nil {
		t.Fatal("truncated plain tar imported")
	}
	assertEmptyStore(t, st)
}

// TestImportHostileTarball: entries that would write outside the root, directly or through a
// symlink or a hard link the archive itself planted, are refused and nothing is left.
func TestImportHostileTarball(t *testing.T) {
	needRoot(t)
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	must(t, os.WriteFile(victim, []byte("untouched"), 0o644))
	mk := func(name string, hdrs ...*tar.Header) string {
		p := filepath.Join(t.TempDir(), name)
		f, err := os.Create(p)
		must(t, err)
		tw := tar.NewWriter(f)
		for _, h := range hdrs {
			must(t, tw.WriteHeader(h))
			if h.Typeflag == tar.TypeReg {
				tw.Write(make([]byte, h.Size))
			}
		}
		must(t, tw.Close())
		f.Close()
		return p
	}
	dir := func(n string) *tar.Header { return &tar.Header{Name: n, Typeflag: tar.TypeDir, Mode: 0o755} }
	link := func(n, target string) *tar.Header {
		return &tar.Header{Name: n, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}
	}
	cases := map[string]string{
		"dotdot":          mk("a.tar", tarFileHeader("../escape", 1)),
		"through symlink": mk("b.tar", link("evil", outside), tarFileHeader("evil/victim", 4)),
		"deep symlink":    mk("c.tar", dir("d"), link("d/up", outside), tarFileHeader("d/up/victim", 4)),
		"hard link out":   mk("d.tar", link("s", outside), &tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "s/victim"}),
	}
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	for name, p := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := st.Import(context.Background(), p, "hostile", ImportOptions{Logger: quietLog()}); err == nil {
				t.Error("hostile tarball imported")
			}
			assertEmptyStore(t, st)
			if b, _ := os.ReadFile(victim); string(b) != "untouched" {
				t.Fatalf("file outside the root was changed: %q", b)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Fatalf("files appeared outside the root: %v", ents)
			}
		})
	}
}
