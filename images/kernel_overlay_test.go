package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pifleet/pifleet/overlay"
)

// describe is one path of a merged tree as the comparison sees it.
func describe(mode, uid, gid uint32, rdev uint64, mtime int64, data string, xattrs map[string]string) string {
	names := make([]string, 0, len(xattrs))
	for n := range xattrs {
		names = append(names, n)
	}
	sort.Strings(names)
	var x []string
	for _, n := range names {
		x = append(x, n+"="+xattrs[n])
	}
	if mode&unix.S_IFMT == unix.S_IFDIR {
		mtime = 0 // a merged dir's time is the topmost one's in both; its size is not comparable
	}
	return fmt.Sprintf("mode=%o owner=%d:%d rdev=%d mtime=%d %s xattrs=[%s]", mode, uid, gid, rdev, mtime, data, strings.Join(x, " "))
}

func hashReader(r io.Reader) string {
	h := sha256.New()
	n, _ := io.Copy(h, r)
	return fmt.Sprintf("size=%d sha256=%s", n, hex.EncodeToString(h.Sum(nil))[:16])
}

// kernelWalk walks a mounted tree.
func kernelWalk(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	must(t, filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		must(t, unix.Lstat(p, &st))
		data := ""
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			f, err := os.Open(p)
			must(t, err)
			data = hashReader(f)
			f.Close()
		case unix.S_IFLNK:
			data, _ = os.Readlink(p)
		}
		x, err := readXattrs(p)
		must(t, err)
		xs := map[string]string{}
		for k, v := range x {
			xs[k] = fmt.Sprintf("%x", v)
		}
		rel, _ := filepath.Rel(root, p)
		out["/"+strings.TrimPrefix(rel, ".")] = describe(st.Mode, st.Uid, st.Gid, st.Rdev, st.Mtim.Nano(), data, xs)
		return nil
	}))
	return out
}

// overlayWalk walks package overlay's merged view, through the calls nfsroot makes.
func overlayWalk(t *testing.T, o *overlay.FS) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(rel string)
	walk = func(rel string) {
		fi, err := o.Lstat(rel)
		must(t, err)
		st := fi.Sys().(*overlay.Stat)
		data := ""
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			f, err := o.Open(rel)
			must(t, err)
			data = hashReader(f)
			f.Close()
		case unix.S_IFLNK:
			data, err = o.Readlink(rel)
			must(t, err)
		}
		names, err := o.Listxattr(rel)
		must(t, err)
		xs := map[string]string{}
		for _, n := range names {
			v, err := o.Getxattr(rel, n)
			must(t, err)
			xs[n] = fmt.Sprintf("%x", v)
		}
		key := "/" + strings.TrimPrefix(rel, ".")
		out[key] = describe(st.Mode, st.Uid, st.Gid, st.Rdev, st.Mtime.UnixNano(), data, xs)
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			ents, err := o.ReadDir(rel)
			must(t, err)
			for _, e := range ents {
				walk(path.Join(rel, e.Name()))
			}
		}
	}
	walk(".")
	return out
}

// TestKernelOverlayMatchesBoardView stacks a board's lowers as documented — identity, then
// the image's layers top to bottom, then its base's — and mounts them with the kernel's
// overlayfs: the tree is the one the board sees through package overlay.
func TestKernelOverlayMatchesBoardView(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	src := t.TempDir()
	fixtureTree(t, src, 20)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	if _, err := st.Import(ctx, src, "bookworm", ImportOptions{Prepare: true, Logger: quietLog()}); err != nil {
		t.Fatal(err)
	}
	layer := func(fill func(dir string)) string {
		dir, err := st.TempDir("test")
		must(t, err)
		fill(dir)
		l, err := st.AddLayer(dir, "test")
		must(t, err)
		return l.Digest
	}
	put := func(dir, rel, data string, mode os.FileMode, uid, gid int) {
		p := filepath.Join(dir, rel)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(data), mode))
		must(t, os.Chmod(p, mode))
		must(t, os.Lchown(p, uid, gid))
	}
	whiteout := func(dir, rel string) {
		must(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, rel)), 0o755))
		must(t, unix.Mknod(filepath.Join(dir, rel), unix.S_IFCHR, 0))
	}
	// kiosk on bookworm: a changed file, whiteouts of a file and of a dir, an opaque dir,
	// new files with owners, xattrs and a symlink
	kiosk := layer(func(d string) {
		put(d, "etc/fstab", "proc /proc proc defaults 0 0\n", 0o600, 0, 4)
		whiteout(d, "usr/bin/wall")
		whiteout(d, "var/log")
		put(d, "usr/lib/only", "only this in usr/lib\n", 0o644, 0, 0)
		must(t, unix.Lsetxattr(filepath.Join(d, "usr/lib"), opaqueXattr, []byte("y"), 0))
		put(d, "opt/app/run", "#!/bin/sh\n", 0o4750, 1000, 1000)
		must(t, unix.Lsetxattr(filepath.Join(d, "opt/app/run"), "user.kiosk", []byte("1"), 0))
		must(t, os.Symlink("/run/motd", filepath.Join(d, "etc/motd")))
	})
	must(t, st.CreateImage("kiosk", "bookworm", []string{kiosk}, ImageMeta{Source: "test"}))
	// kiosk2 on kiosk: brings back what kiosk whited out, as something else
	kiosk2 := layer(func(d string) {
		put(d, "usr/bin/wall", "new wall\n", 0o755, 0, 5)
		put(d, "var/log/fresh", "fresh\n", 0o640, 0, 4)
		must(t, unix.Lsetxattr(filepath.Join(d, "var/log"), opaqueXattr, []byte("y"), 0))
	})
	must(t, st.CreateImage("kiosk2", "kiosk", []string{kiosk2}, ImageMeta{Source: "test"}))

	layers, err := st.Layers("kiosk2")
	must(t, err)
	if len(layers) != 4 || layers[0] != st.LayerTree(kiosk2) || layers[1] != st.LayerTree(kiosk) || layers[3] != st.RootDir("bookworm") {
		t.Fatalf("Layers(kiosk2) = %v", layers)
	}
	dir := t.TempDir()
	identity := filepath.Join(dir, "identity")
	must(t, WriteIdentity(identity, Identity{Hostname: "pi-01", Serial: "12345678", Image: layers}))
	lowers := append([]string{identity}, layers...)

	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	must(t, os.MkdirAll(upper, 0o755))
	must(t, os.MkdirAll(work, 0o755))
	o, err := overlay.New(overlay.Options{Upper: upper, Work: work, Lowers: lowers})
	must(t, err)
	board := overlayWalk(t, o)

	mnt := filepath.Join(dir, "mnt")
	must(t, os.MkdirAll(mnt, 0o755))
	// the documented lowerdir list: identity, image layers top to bottom, base
	must(t, unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")))
	kernel := kernelWalk(t, mnt)
	must(t, unix.Unmount(mnt, 0))

	var diffs []string
	for p, k := range kernel {
		if b, ok := board[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: kernel %s, board: missing", p, k))
		} else if b != k {
			diffs = append(diffs, fmt.Sprintf("%s:\n  kernel %s\n  board  %s", p, k, b))
		}
	}
	for p, b := range board {
		if _, ok := kernel[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: board %s, kernel: missing", p, b))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("the kernel's overlay of the documented lowers differs from the board's view:\n%s", strings.Join(diffs, "\n"))
	}
	// and the stack is what it should be
	for p, want := range map[string]bool{"/usr/bin/wall": true, "/usr/lib/long-link": false, "/usr/lib/only": true,
		"/var/log/journal": false, "/var/log/fresh": true, "/opt/app/run": true, "/etc/machine-id": true, "/etc/motd": true} {
		if _, ok := kernel[p]; ok != want {
			t.Errorf("%s in the merged tree: %v, want %v", p, ok, want)
		}
	}
	if len(kernel) < 40 {
		t.Errorf("merged tree has only %d paths", len(kernel))
	}
}
