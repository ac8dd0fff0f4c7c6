package overlay

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Changes is held against the kernel: the kernel mounts the upper over the lowers
// (read-only, the upper as the topmost lowerdir, so nothing is written into it) and the
// lowers alone; a path only in the first is A, only in the second D (once per deleted
// tree: its parent is still there), in both C when the kernel reports another inode for
// it, i.e. the merged object comes from the upper. The uppers are generated straight in
// the on-disk format (whiteouts, opaque dirs, dirs recreated over lower dirs, non-dirs
// over lower dirs) and also written by our FS in TestDifferentialAgainstKernel.

// TestChangesAgainstKernel runs PIFLEET_OVERLAY_SEEDS (default 40) generated uppers.
func TestChangesAgainstKernel(t *testing.T) {
	needRoot(t)
	probeKernelOverlay(t)
	if s := os.Getenv("PIFLEET_OVERLAY_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		must(t, err)
		runChanges(t, seed)
		return
	}
	for seed := range uint64(envInt("PIFLEET_OVERLAY_SEEDS", 40)) {
		t.Run(fmt.Sprintf("seed=%d", seed+1), func(t *testing.T) { runChanges(t, seed+1) })
	}
}

func runChanges(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x51ed270b27f4e3a1))
	b := newBed(t, 2+rng.IntN(2))
	for i, l := range b.lowers {
		genLower(t, rng, l, i)
	}
	must(t, os.Mkdir(b.upper, 0o755))
	genUpper(t, rng, b.upper, b.lowers)
	if d := changesVsKernel(t, b.dir, b.upper, b.lowers); d != "" {
		t.Fatalf("seed %d: Changes differs from the kernel (replay: PIFLEET_OVERLAY_SEED=%d go test ./overlay -run ChangesAgainstKernel -v):\n%s", seed, seed, d)
	}
}

// genUpper writes a random upper in the overlayfs format over lowers: names are drawn from
// the same small set as the lowers' so they collide often.
func genUpper(t *testing.T, rng *rand.Rand, upper string, lowers []string) {
	dirs := []string{""}
	for _, l := range lowers {
		must(t, filepath.WalkDir(l, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() && p != l {
				rel, _ := filepath.Rel(l, p)
				dirs = append(dirs, rel)
			}
			return err
		}))
	}
	for range 10 + rng.IntN(25) {
		parent := dirs[rng.IntN(len(dirs))]
		name := "n" + strconv.Itoa(rng.IntN(6))
		if rng.IntN(2) == 0 {
			name = "d" + strconv.Itoa(rng.IntN(4))
		}
		rel := path.Join(parent, name)
		if !upperParents(t, rng, upper, parent) {
			continue
		}
		p := filepath.Join(upper, rel)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		var err error
		switch k := rng.IntN(12); {
		case k < 4:
			err = writeNew(p, randData(rng, 11))
		case k < 6:
			err = unix.Mknod(p, unix.S_IFCHR, 0) // whiteout
		case k < 9:
			if err = os.Mkdir(p, 0o755); err == nil {
				dirs = append(dirs, rel)
				if rng.IntN(2) == 0 { // removed and made again
					err = unix.Setxattr(p, xattrOpaque, []byte("y"), 0)
				}
			}
		case k < 10:
			err = os.Symlink(randName(rng), p)
		case k < 11:
			err = unix.Mkfifo(p, 0o644)
		default:
			err = unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3)))
		}
		must(t, err)
	}
}

// upperParents makes the upper dirs above a new entry, as a copy-up would (or, at random,
// as a dir the board recreated: opaque); false when something else holds one of them.
func upperParents(t *testing.T, rng *rand.Rand, upper, dir string) bool {
	if dir == "" {
		return true
	}
	cur := ""
	for _, c := range strings.Split(dir, "/") {
		cur = path.Join(cur, c)
		p := filepath.Join(upper, cur)
		if fi, err := os.Lstat(p); err == nil {
			if !fi.IsDir() {
				return false
			}
			continue
		}
		must(t, os.Mkdir(p, 0o755))
		if rng.IntN(5) == 0 {
			must(t, unix.Setxattr(p, xattrOpaque, []byte("y"), 0))
		}
	}
	return true
}

// kernelEntry is what the oracle keeps of each path of a kernel mount.
type kernelEntry struct {
	typ fs.FileMode
	ino uint64
}

// changesVsKernel compares Changes(upper, lowers) with what the kernel shows.
func changesVsKernel(t *testing.T, dir, upper string, lowers []string) string {
	merged := kernelView(t, filepath.Join(dir, "chg-merged"), append([]string{upper}, lowers...))
	base := kernelView(t, filepath.Join(dir, "chg-lowers"), lowers)
	want := map[string]string{}
	for p, m := range merged {
		l, ok := base[p]
		switch {
		case !ok:
			want[p] = fmt.Sprintf("A %v", m.typ)
		case l.ino != m.ino:
			want[p] = fmt.Sprintf("C %v", m.typ)
		}
	}
	for p, l := range base {
		if _, ok := merged[p]; ok {
			continue
		}
		if _, ok := merged[path.Dir(p)]; ok || path.Dir(p) == "/" {
			want[p] = fmt.Sprintf("D %v", l.typ)
		}
	}
	changes, err := Changes(upper, lowers)
	must(t, err)
	got := map[string]string{}
	for i, c := range changes {
		if i > 0 && changes[i-1].Path >= c.Path {
			t.Errorf("not sorted: %s before %s", changes[i-1].Path, c.Path)
		}
		got[c.Path] = fmt.Sprintf("%v %v", c.Kind, c.Type)
		if c.Type.IsRegular() && c.Kind != Deleted {
			var st unix.Stat_t
			must(t, unix.Lstat(filepath.Join(upper, c.Path), &st))
			if c.Size != st.Blocks*512 {
				t.Errorf("%s: size %d, upper file takes %d", c.Path, c.Size, st.Blocks*512)
			}
		}
	}
	var diffs []string
	for p, w := range want {
		if g := got[p]; g != w {
			diffs = append(diffs, fmt.Sprintf("%s: Changes %q, kernel %q", p, g, w))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: Changes %q, kernel no change", p, g))
		}
	}
	sort.Strings(diffs)
	return strings.Join(diffs, "\n")
}

// kernelView mounts layers (topmost first) read-only with the kernel and records every
// path's type and inode. An empty dir is added below a single layer: overlayfs needs two
// lowerdirs without an upperdir.
func kernelView(t *testing.T, mnt string, layers []string) map[string]kernelEntry {
	if len(layers) == 1 {
		empty := mnt + "-empty"
		must(t, os.MkdirAll(empty, 0o755))
		layers = append(layers, empty)
	}
	must(t, os.MkdirAll(mnt, 0o755))
	must(t, unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(layers, ":")+",xino=off"))
	defer func() { must(t, unix.Unmount(mnt, 0)) }()
	view := map[string]kernelEntry{}
	must(t, filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == mnt {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err == unix.ENOENT {
			return nil // a whiteout in a dir that is not merged: listed, not there
		} else if err != nil {
			return err
		}
		rel, _ := filepath.Rel(mnt, p)
		view["/"+rel] = kernelEntry{typ: fileMode(st.Mode).Type(), ino: st.Ino}
		return nil
	}))
	return view
}

// TestChangesRecreatedDir is the case boardops.go got wrong: a lower dir the board removed
// and made again (opaque in the upper).
func TestChangesRecreatedDir(t *testing.T) {
	b := newBed(t, 1)
	put(t, b.lowers[0], "opt/app/old.conf", "old", 0o644)
	put(t, b.lowers[0], "opt/app/keep.conf", "lower", 0o644)
	put(t, b.lowers[0], "opt/app/sub/deep", "x", 0o644)
	put(t, b.lowers[0], "etc/hosts", "h", 0o644)
	o := b.open(t)
	for _, p := range []string{"opt/app/old.conf", "opt/app/keep.conf", "opt/app/sub/deep", "opt/app/sub", "opt/app"} {
		must(t, o.Remove(p))
	}
	must(t, o.Mkdir("opt/app", 0o755))
	f, err := o.Create("opt/app/keep.conf")
	must(t, err)
	f.Close()
	f, err = o.Create("opt/app/new.conf")
	must(t, err)
	f.Close()
	must(t, o.Remove("etc/hosts"))
	got, err := Changes(b.upper, b.lowers)
	must(t, err)
	var lines []string
	for _, c := range got {
		lines = append(lines, fmt.Sprintf("%v %s %v", c.Kind, c.Path, c.Type))
	}
	want := []string{
		"C /etc d---------",
		"D /etc/hosts ----------",
		"C /opt d---------",
		"C /opt/app d---------",
		"C /opt/app/keep.conf ----------",
		"A /opt/app/new.conf ----------",
		"D /opt/app/old.conf ----------",
		"D /opt/app/sub d---------",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("Changes:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if d := changesVsKernel(t, b.dir, b.upper, b.lowers); d != "" {
		t.Errorf("differs from the kernel:\n%s", d)
	}
}

// TestChangesMissingDirs: a board that never wrote has no upper, and a board's identity
// layer may not exist yet; neither is an error.
func TestChangesMissingDirs(t *testing.T) {
	dir := t.TempDir()
	lower := filepath.Join(dir, "lower")
	put(t, lower, "etc/hosts", "h", 0o644)
	got, err := Changes(filepath.Join(dir, "upper"), []string{lower})
	if err != nil || len(got) != 0 {
		t.Fatalf("no upper: %v, %v", got, err)
	}
	put(t, filepath.Join(dir, "upper"), "etc/hosts", "mine", 0o644)
	got, err = Changes(filepath.Join(dir, "upper"), []string{filepath.Join(dir, "identity"), lower})
	must(t, err)
	if len(got) != 2 || got[0].Kind != Changed || got[0].Path != "/etc" || got[1].Kind != Changed || got[1].Path != "/etc/hosts" {
		t.Fatalf("with a missing lower: %v", got)
	}
}
