package overlay

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/test/require"
	"golang.org/x/sys/unix"
)

// The differential test holds our overlay against the kernel's: the same seeded random
// operations go to our FS and to a kernel overlay mount (redirect_dir=on, so it can
// rename lower dirs too) of an identical upper over the same lowers, and after every
// step both merged views must match. At checkpoints the kernel also mounts the upper
// OUR code wrote and must show our view, and Changes of that upper must match the kernel
// (changes_test.go). Replay a failure with PIFLEET_OVERLAY_SEED=<seed>;
// PIFLEET_OVERLAY_SEEDS and PIFLEET_OVERLAY_OPS make longer runs.

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestDifferentialAgainstKernel(t *testing.T) {
	needRoot(t)
	probeKernelOverlay(t)
	old := unix.Umask(0)
	defer unix.Umask(old)
	ops := envInt("PIFLEET_OVERLAY_OPS", 500)
	if s := os.Getenv("PIFLEET_OVERLAY_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		must(t, err)
		runDifferential(t, seed, ops)
		return
	}
	for seed := range uint64(envInt("PIFLEET_OVERLAY_SEEDS", 7)) {
		t.Run(fmt.Sprintf("seed=%d", seed+1), func(t *testing.T) { runDifferential(t, seed+1, ops) })
	}
}

// probeKernelOverlay skips when this kernel cannot mount overlayfs (e.g. in a container).
func probeKernelOverlay(t *testing.T) {
	d := t.TempDir()
	for _, s := range []string{"l", "u", "w", "m"} {
		must(t, os.Mkdir(filepath.Join(d, s), 0o755))
	}
	if err := mountOverlay(filepath.Join(d, "m"), []string{filepath.Join(d, "l")}, filepath.Join(d, "u"), filepath.Join(d, "w")); err != nil {
		require.Missing(t, fmt.Sprintf("kernel overlayfs unavailable (%v): the differential test needs it as the oracle", err))
	}
	unix.Unmount(filepath.Join(d, "m"), 0)
}

func mountOverlay(mnt string, lowers []string, upper, work string) error {
	opts := "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + upper + ",workdir=" + work +
		",redirect_dir=on,index=off,metacopy=off,xino=off"
	return unix.Mount("overlay", mnt, "overlay", 0, opts)
}

func runDifferential(t *testing.T, seed uint64, nops int) {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	b := newBed(t, 2)
	for i, l := range b.lowers {
		genLower(t, rng, l, i)
	}
	lowerSum := treeDigest(t, b.lowers...)
	o := b.open(t)
	kUpper, kWork, mnt := filepath.Join(b.dir, "kupper"), filepath.Join(b.dir, "kwork"), filepath.Join(b.dir, "mnt")
	for _, d := range []string{kUpper, kWork, mnt} {
		must(t, os.Mkdir(d, 0o755))
	}
	must(t, mountOverlay(mnt, b.lowers, kUpper, kWork))
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(mnt, 0)
		}
	}()
	fail := func(step int, op *diffOp, format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d step %d op %v: %s\nreplay: PIFLEET_OVERLAY_SEED=%d PIFLEET_OVERLAY_OPS=%d go test ./overlay -run Differential -v",
			seed, step, op, fmt.Sprintf(format, args...), seed, step+1)
	}
	ours := snapshotOurs(t, o)
	for step := range nops {
		op := randomOp(rng, ours)
		locs := filesFound(t, o, ours)
		errO := op.applyOurs(o)
		errK := op.applyKernel(mnt)
		if os.Getenv("PIFLEET_OVERLAY_TRACE") != "" {
			t.Logf("step %d %v: ours %v kernel %v", step, op, errO, errK)
		}
		if errno(errO) != errno(errK) {
			fail(step, op, "ours: %v, kernel: %v", errO, errK)
		}
		ours = snapshotOurs(t, o)
		if d := diffSnap(ours, snapshotDir(t, mnt)); d != "" {
			fail(step, op, "merged views differ: %s", d)
		}
		if d := openLocsAgree(o, locs); d != "" {
			fail(step, op, "OpenLoc with a location found before the op: %s", d)
		}
		if step%150 == 149 || step == nops-1 {
			if d := kernelReadsOurUpper(t, b, o, ours); d != "" {
				fail(step, op, "kernel mount of our upper differs from our view: %s", d)
			}
			if d := changesVsKernel(t, b.dir, b.upper, b.lowers); d != "" {
				fail(step, op, "Changes of our upper differs from the kernel's view of it: %s", d)
			}
		}
	}
	must(t, unix.Unmount(mnt, 0))
	mounted = false
	if after := treeDigest(t, b.lowers...); after != lowerSum {
		t.Fatalf("seed %d: a lower dir changed during the workload", seed)
	}
}

// filesFound looks up every regular file of the merged view (snap) and returns where each
// was found, for openLocsAgree after the next operation.
func filesFound(t *testing.T, o *FS, snap map[string]string) map[string]Loc {
	locs := map[string]Loc{}
	for p, e := range snap {
		if !strings.HasPrefix(e, "f") {
			continue
		}
		fi, err := o.Lstat(p)
		must(t, err)
		loc, ok := LocOf(fi)
		if !ok {
			t.Fatalf("LocOf(Lstat(%s)): no location", p)
		}
		locs[p] = loc
	}
	return locs
}

// openLocsAgree opens each file with OpenLoc at a location found before the last operation
// and with Open, and reports the first difference: OpenLoc must never serve what a copy-up,
// whiteout or rename since then replaced (Open reads what the kernel shows, which the
// snapshots compare).
func openLocsAgree(o *FS, locs map[string]Loc) string {
	read := func(f *File, err error) string {
		if err != nil {
			return fmt.Sprintf("error %v", errno(err))
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return fmt.Sprintf("stat error %v", errno(err))
		}
		buf := make([]byte, fi.Size()+1)
		n, err := f.ReadAt(buf, 0)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Sprintf("read error %v", err)
		}
		return fmt.Sprintf("fileid %x data %x", fi.Sys().(*Stat).FileID, fnv(buf[:n]))
	}
	for p, loc := range locs {
		if got, want := read(o.OpenLoc(p, loc)), read(o.Open(p)); got != want {
			return fmt.Sprintf("%s: OpenLoc %s, Open %s", p, got, want)
		}
	}
	return ""
}

// kernelReadsOurUpper mounts our upper with the kernel and compares with our view.
func kernelReadsOurUpper(t *testing.T, b *testbed, o *FS, ours map[string]string) string {
	kw := filepath.Join(b.dir, "kwork-ours")
	m := filepath.Join(b.dir, "mnt-ours")
	os.RemoveAll(kw)
	must(t, os.MkdirAll(kw, 0o755))
	must(t, os.MkdirAll(m, 0o755))
	if err := mountOverlay(m, b.lowers, b.upper, kw); err != nil {
		return fmt.Sprintf("mount: %v", err)
	}
	defer unix.Unmount(m, 0) // also when a failed check ends the test here
	return diffSnap(ours, snapshotDir(t, m))
}

func errno(err error) unix.Errno {
	if err == nil {
		return 0
	}
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return unix.EIO
}

// genLower fills one lower with a small random tree: overlapping names across lowers,
// every file type, owners, special bits, xattrs and relative symlinks that stay inside.
func genLower(t *testing.T, rng *rand.Rand, root string, layer int) {
	var dirs = []string{""}
	for range 4 + rng.IntN(4) {
		parent := dirs[rng.IntN(len(dirs))]
		d := path.Join(parent, "d"+strconv.Itoa(rng.IntN(4)))
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err == nil {
			dirs = append(dirs, d)
		}
	}
	if layer == 0 {
		for _, d := range dirs[1:] {
			if rng.IntN(4) == 0 {
				must(t, unix.Setxattr(filepath.Join(root, d), xattrOpaque, []byte("y"), 0))
			}
		}
	}
	for range 10 + rng.IntN(10) {
		dir := dirs[rng.IntN(len(dirs))]
		p := filepath.Join(root, dir, "n"+strconv.Itoa(rng.IntN(6)))
		var err error
		switch k := rng.IntN(10); {
		case k < 6:
			err = writeNew(p, randData(rng, layer))
		case k < 8:
			err = os.Symlink(randName(rng), p)
		case k < 9 && layer == 0 && rng.IntN(2) == 0:
			// The top lower is itself in overlay format: its whiteouts hide the layer below.
			err = unix.Mknod(p, unix.S_IFCHR, 0)
			continue
		case k < 9:
			err = unix.Mkfifo(p, 0o640)
		default:
			err = unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3)))
		}
		if err != nil {
			continue
		}
		unix.Lchown(p, rng.IntN(3)*500, rng.IntN(3)*500)
		var st unix.Stat_t
		unix.Lstat(p, &st)
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			unix.Chmod(p, uint32(rng.IntN(0o10000)))
			if rng.IntN(3) == 0 {
				unix.Setxattr(p, "user.l", []byte(strconv.Itoa(layer)), 0)
			}
		}
	}
}

func randName(rng *rand.Rand) string {
	if rng.IntN(3) == 0 {
		return "d" + strconv.Itoa(rng.IntN(4)) + "/n" + strconv.Itoa(rng.IntN(6))
	}
	return "n" + strconv.Itoa(rng.IntN(6))
}

func randData(rng *rand.Rand, salt int) []byte {
	n := rng.IntN(64)
	if rng.IntN(10) == 0 {
		n = rng.IntN(70000)
	}
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = byte('a' + (i+salt+rng.IntN(3))%26)
	}
	return buf
}

type diffOp struct {
	kind      string
	a, b      string
	mode      uint32
	uid, gid  int
	off, size int64
	data      []byte
}

func (op *diffOp) String() string {
	return fmt.Sprintf("%s(%q,%q mode=%o uid=%d gid=%d off=%d size=%d len=%d)", op.kind, op.a, op.b, op.mode, op.uid, op.gid, op.off, op.size, len(op.data))
}

var opKinds = []string{"create", "write", "append", "truncate", "chmod", "lchown", "symlink", "link",
	"mkfifo", "mknod", "mkdir", "rmdir", "unlink", "rename", "renamedir", "setxattr", "removexattr"}

// randomOp picks an operation and its operands from the current merged view.
func randomOp(rng *rand.Rand, snap map[string]string) *diffOp {
	var all, dirs, files []string
	for p, e := range snap {
		all = append(all, p)
		if strings.HasPrefix(e, "d") {
			dirs = append(dirs, p)
		} else if strings.HasPrefix(e, "f") {
			files = append(files, p)
		}
	}
	sort.Strings(all)
	sort.Strings(dirs)
	sort.Strings(files)
	dirs = append(dirs, "")
	pick := func(list []string) string {
		if len(list) == 0 || rng.IntN(8) == 0 {
			return path.Join(dirs[rng.IntN(len(dirs))], randName(rng))
		}
		return list[rng.IntN(len(list))]
	}
	fresh := func() string {
		d := dirs[rng.IntN(len(dirs))]
		if rng.IntN(2) == 0 {
			return path.Join(d, "n"+strconv.Itoa(rng.IntN(6)))
		}
		return path.Join(d, "d"+strconv.Itoa(rng.IntN(4)))
	}
	op := &diffOp{kind: opKinds[rng.IntN(len(opKinds))]}
	switch op.kind {
	case "create":
		op.a, op.mode, op.data = fresh(), uint32(rng.IntN(0o1000)), randData(rng, 7)
		if rng.IntN(3) == 0 {
			op.a = pick(files)
		}
	case "write", "append":
		op.a, op.data, op.off = pick(files), randData(rng, 3), int64(rng.IntN(100))
	case "truncate":
		op.a, op.size = pick(files), int64(rng.IntN(200))
	case "chmod":
		op.a, op.mode = pick(all), uint32(rng.IntN(0o10000))
	case "lchown":
		op.a, op.uid, op.gid = pick(all), rng.IntN(3)*500, rng.IntN(3)*500
	case "symlink":
		op.a, op.b = randName(rng), fresh()
	case "link":
		op.a, op.b = pick(files), fresh()
	case "mkfifo", "mknod":
		op.a, op.mode = fresh(), uint32(rng.IntN(0o1000))
	case "mkdir":
		op.a, op.mode = fresh(), uint32(rng.IntN(0o10000))|0o700
	case "rmdir":
		op.a = pick(dirs)
	case "unlink":
		op.a = pick(all)
	case "rename":
		op.a, op.b = pick(all), fresh()
		if rng.IntN(3) == 0 {
			op.b = pick(all)
		}
	case "renamedir":
		op.kind = "rename"
		// The mount point itself cannot be renamed on the kernel side (EXDEV vs EBUSY).
		op.a, op.b = pick(dirs[:len(dirs)-1]), fresh()
		if rng.IntN(4) == 0 {
			op.b = pick(dirs[:len(dirs)-1])
		}
	case "setxattr", "removexattr":
		op.a, op.b, op.data = pick(all), "user.k"+strconv.Itoa(rng.IntN(2)), []byte(strconv.Itoa(rng.IntN(1000)))
	}
	return op
}

func (op *diffOp) applyOurs(o *FS) error {
	switch op.kind {
	case "create", "write", "append":
		flag := map[string]int{"create": os.O_WRONLY | os.O_CREATE | os.O_TRUNC, "write": os.O_WRONLY, "append": os.O_WRONLY | os.O_APPEND}[op.kind]
		// Only regular files: opening a fifo would block the kernel side, and we refuse
		// to open device nodes at all.
		if fi, err := o.Stat(op.a); err == nil && !fi.Mode().IsRegular() && !fi.IsDir() {
			return unix.ENXIO
		}
		f, err := o.OpenFile(op.a, flag, os.FileMode(op.mode))
		if err != nil {
			return err
		}
		defer f.Close()
		if op.kind == "write" {
			_, err = f.WriteAt(op.data, op.off)
		} else {
			_, err = f.Write(op.data)
		}
		return err
	case "truncate":
		return o.Truncate(op.a, op.size)
	case "chmod":
		return o.Chmod(op.a, fileMode(op.mode)&^os.ModeType)
	case "lchown":
		return o.Lchown(op.a, op.uid, op.gid)
	case "symlink":
		return o.Symlink(op.a, op.b)
	case "link":
		return o.Link(op.a, op.b)
	case "mkfifo":
		return o.Mknod(op.a, unix.S_IFIFO|op.mode, 0)
	case "mknod":
		return o.Mknod(op.a, unix.S_IFCHR|op.mode, unix.Mkdev(1, 3))
	case "mkdir":
		return o.Mkdir(op.a, fileMode(op.mode)&^os.ModeType)
	case "rmdir", "unlink":
		fi, err := o.Lstat(op.a)
		if err != nil {
			return err
		}
		if op.kind == "rmdir" && !fi.IsDir() {
			return unix.ENOTDIR
		}
		if op.kind == "unlink" && fi.IsDir() {
			return unix.EISDIR
		}
		return o.Remove(op.a)
	case "rename":
		return o.Rename(op.a, op.b)
	case "setxattr":
		return o.Setxattr(op.a, op.b, op.data, 0)
	case "removexattr":
		return o.Removexattr(op.a, op.b)
	}
	return fmt.Errorf("unknown op %s", op.kind)
}

func (op *diffOp) applyKernel(mnt string) error {
	a, b := filepath.Join(mnt, op.a), filepath.Join(mnt, op.b)
	switch op.kind {
	case "create", "write", "append":
		flag := map[string]int{"create": os.O_WRONLY | os.O_CREATE | os.O_TRUNC, "write": os.O_WRONLY, "append": os.O_WRONLY | os.O_APPEND}[op.kind]
		if fi, err := os.Stat(a); err == nil && !fi.Mode().IsRegular() && !fi.IsDir() {
			return unix.ENXIO
		}
		f, err := os.OpenFile(a, flag|unix.O_NONBLOCK, os.FileMode(op.mode))
		if err != nil {
			return err
		}
		defer f.Close()
		if op.kind == "write" {
			_, err = f.WriteAt(op.data, op.off)
		} else {
			_, err = f.Write(op.data)
		}
		return err
	case "truncate":
		return os.Truncate(a, op.size)
	case "chmod":
		return unix.Chmod(a, op.mode)
	case "lchown":
		return os.Lchown(a, op.uid, op.gid)
	case "symlink":
		return os.Symlink(op.a, b)
	case "link":
		return os.Link(a, b)
	case "mkfifo":
		return unix.Mknod(a, unix.S_IFIFO|op.mode, 0)
	case "mknod":
		return unix.Mknod(a, unix.S_IFCHR|op.mode, int(unix.Mkdev(1, 3)))
	case "mkdir":
		if err := unix.Mkdir(a, op.mode); err != nil {
			return err
		}
		return unix.Chmod(a, op.mode) // mkdir(2) drops setuid/setgid/sticky
	case "rmdir":
		return unix.Rmdir(a)
	case "unlink":
		return unix.Unlink(a)
	case "rename":
		return unix.Rename(a, b)
	case "setxattr":
		return unix.Lsetxattr(a, op.b, op.data, 0)
	case "removexattr":
		return unix.Lremovexattr(a, op.b)
	}
	return fmt.Errorf("unknown op %s", op.kind)
}

// A snapshot maps every path of a merged view to a string of what the test compares:
// type and mode, owner, nlink and size (not for dirs, whose values differ by design),
// rdev, contents, symlink target and user xattrs.
func describe(name string, st *Stat, data []byte, target string, xattrs []string) string {
	sort.Strings(xattrs)
	typ := map[uint32]string{unix.S_IFDIR: "d", unix.S_IFREG: "f", unix.S_IFLNK: "l", unix.S_IFIFO: "p", unix.S_IFCHR: "c", unix.S_IFBLK: "b", unix.S_IFSOCK: "s"}[st.Mode&unix.S_IFMT]
	s := fmt.Sprintf("%s mode=%o uid=%d gid=%d xattrs=%v", typ, st.Mode, st.Uid, st.Gid, xattrs)
	if typ != "d" {
		s += fmt.Sprintf(" nlink=%d size=%d rdev=%x target=%q data=%x", st.Nlink, st.Size, st.Rdev, target, fnv(data))
	}
	return s
}

func fnv(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return h
}

func snapshotOurs(t *testing.T, o *FS) map[string]string {
	snap := map[string]string{}
	var walk func(dir string)
	walk = func(dir string) {
		infos, err := o.ReadDir(dir)
		must(t, err)
		for _, fi := range infos {
			p := path.Join(dir, fi.Name())
			st := sysStat(t, fi)
			var data []byte
			var target string
			switch {
			case fi.Mode().IsRegular():
				data = []byte(readAll(t, o, p))
			case fi.Mode()&os.ModeSymlink != 0:
				target, err = o.Readlink(p)
				must(t, err)
			}
			xs, err := o.Listxattr(p)
			must(t, err)
			var xattrs []string
			for _, x := range xs {
				v, err := o.Getxattr(p, x)
				must(t, err)
				xattrs = append(xattrs, x+"="+string(v))
			}
			snap[p] = describe(p, st, data, target, xattrs)
			if fi.IsDir() {
				walk(p)
			}
		}
	}
	walk("")
	return snap
}

func snapshotDir(t *testing.T, root string) map[string]string {
	snap := map[string]string{}
	must(t, filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err == unix.ENOENT {
			// The kernel lists a lower whiteout that hides nothing (its dir is not merged)
			// but cannot look it up; we hide it in both. Not part of the view.
			return nil
		}
		must(t, unix.Lstat(p, &st))
		s := toStat(0, &st)
		var data []byte
		var target string
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err = os.ReadFile(p)
			must(t, err)
		case unix.S_IFLNK:
			target, err = os.Readlink(p)
			must(t, err)
		}
		names, err := listXattrs(p)
		must(t, err)
		var xattrs []string
		for _, x := range names {
			if privateXattr(x) {
				continue // a kernel mount of our upper shows our trusted.pifleet.fileid
			}
			v, err := getXattr(p, x)
			must(t, err)
			xattrs = append(xattrs, x+"="+string(v))
		}
		snap[rel] = describe(rel, &s, data, target, xattrs)
		return nil
	}))
	return snap
}

func diffSnap(ours, kernel map[string]string) string {
	var diffs []string
	for p, e := range ours {
		if k, ok := kernel[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s only in ours: %s", p, e))
		} else if k != e {
			diffs = append(diffs, fmt.Sprintf("%s:\n  ours   %s\n  kernel %s", p, e, k))
		}
	}
	for p, k := range kernel {
		if _, ok := ours[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s only in kernel: %s", p, k))
		}
	}
	sort.Strings(diffs)
	return strings.Join(diffs, "\n")
}

// treeDigest fingerprints dirs including ctime, which any write, chmod, chown, link
// or xattr change would bump.
func treeDigest(t *testing.T, roots ...string) string {
	var sb strings.Builder
	for _, root := range roots {
		must(t, filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			var st unix.Stat_t
			must(t, unix.Lstat(p, &st))
			fmt.Fprintf(&sb, "%s %o %d %d %d %d %d.%d %d.%d", p, st.Mode, st.Uid, st.Gid, st.Nlink, st.Size,
				st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
			if st.Mode&unix.S_IFMT == unix.S_IFREG {
				data, err := os.ReadFile(p)
				must(t, err)
				fmt.Fprintf(&sb, " %x", fnv(data))
			}
			xs, _ := listXattrs(p)
			sort.Strings(xs)
			fmt.Fprintf(&sb, " %v\n", xs)
			return nil
		}))
	}
	return fmt.Sprintf("%x", fnv([]byte(sb.String())))
}

// writeNew creates a file that must not exist yet: never through a symlink or into a fifo.
func writeNew(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
