package images

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// piImage is a Pi OS-like disk image built for a test, and what it should import as.
type piImage struct {
	src      string            // the root tree mkfs.ext4 -d was given (plus debugfs's changes)
	bootSrc  string            // the files put on the FAT partition
	img      string            // the .img
	rootPart string            // the bare ext4 partition file
	debugfsd map[string]bool   // dirs debugfs touched (their mtimes differ from src)
	boot     map[string][]byte // FAT path -> content
}

const mtimeFixed = 1732010400 // 2024-11-19 10:00:00 UTC, Pi OS bookworm's release day

// buildPiImage makes an MBR disk image with a FAT32 boot partition and an ext4 root, the way
// Pi OS ships: mkfs.ext4 -d for the tree, debugfs -w for what mkfs cannot set (devices made
// after the fact, unwritten extents, xattrs, owners), e2fsck -D for htree directories,
// mkfs.vfat + mcopy for the boot partition and sfdisk for the partition table.
func buildPiImage(t testing.TB, bigDir int) *piImage {
	t.Helper()
	needRoot(t)
	needTool(t, "mkfs.ext4", "debugfs", "e2fsck", "mkfs.vfat", "mcopy", "mmd", "sfdisk", "xz")
	work := t.TempDir()
	pi := &piImage{src: filepath.Join(work, "src"), bootSrc: filepath.Join(work, "bootsrc"), debugfsd: map[string]bool{"dev": true, "var": true}}
	fixtureTree(t, pi.src, bigDir)
	// mkfs.ext4 -d keeps whole seconds only; one nanosecond mtime is set with debugfs below
	must(t, filepath.Walk(pi.src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		ts := unix.NsecToTimespec(fi.ModTime().Truncate(1e9).UnixNano())
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	}))
	var rootSt unix.Stat_t
	must(t, unix.Lstat(pi.src, &rootSt))

	// ext4 root
	pi.rootPart = filepath.Join(work, "root.ext4")
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "rootfs", "-d", pi.src, pi.rootPart, "96M")
	// htree directories
	if out, err := runErr("e2fsck", "-fyD", pi.rootPart); err != nil && !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("e2fsck -D: %v\n%s", err, out)
	}
	if bigDir > 0 {
		if out := run(t, "debugfs", "-R", "htree_dump /usr/share/big", pi.rootPart); !strings.Contains(out, "Root node dump") {
			t.Fatalf("/usr/share/big is not an htree directory:\n%.500s", out)
		}
	}
	cmds := fmt.Sprintf(`cd /dev
mknod ttyS0 c 4 64
sif /dev/ttyS0 mode 020660
sif /dev/ttyS0 gid 20
sif /dev/ttyS0 mtime @%[1]d
cd /
write /dev/null /var/prealloc
fallocate /var/prealloc 0 15
sif /var/prealloc size 65536
sif /var/prealloc mode 0100640
sif /var/prealloc uid 1000
sif /var/prealloc mtime @%[1]d
ea_set /usr/bin/wall user.debugfs set-by-debugfs
sif /usr/bin/wall uid 1234
sif /etc/fstab mtime_extra 0x1D6F3454
sif / mtime @%[2]d
`, mtimeFixed, rootSt.Mtim.Sec)
	cmdFile := filepath.Join(work, "debugfs.cmds")
	os.WriteFile(cmdFile, []byte(cmds), 0o644)
	if out := run(t, "debugfs", "-w", "-f", cmdFile, pi.rootPart); strings.Contains(out, "not found") || strings.Contains(out, "rror") {
		t.Fatalf("debugfs: %s", out)
	}
	// the same changes on the expected tree
	must(t, unix.Mknod(filepath.Join(pi.src, "dev/ttyS0"), unix.S_IFCHR|0o660, int(unix.Mkdev(4, 64))))
	must(t, os.Chown(filepath.Join(pi.src, "dev/ttyS0"), 0, 20))
	must(t, unix.Chmod(filepath.Join(pi.src, "dev/ttyS0"), 0o660))
	var fst unix.Stat_t
	must(t, unix.Lstat(filepath.Join(pi.src, "etc/fstab"), &fst))
	fstabTime := unix.NsecToTimespec(time.Unix(fst.Mtim.Sec, 123456789).UnixNano())
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(pi.src, "etc/fstab"), []unix.Timespec{fstabTime, fstabTime}, 0))
	must(t, os.WriteFile(filepath.Join(pi.src, "var/prealloc"), make([]byte, 65536), 0o640))
	must(t, os.Chown(filepath.Join(pi.src, "var/prealloc"), 1000, 0))
	for _, p := range []string{"dev/ttyS0", "var/prealloc"} {
		ts := unix.NsecToTimespec(mtimeFixed * 1e9)
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(pi.src, p), []unix.Timespec{ts, ts}, 0))
	}
	wall := filepath.Join(pi.src, "usr/bin/wall")
	var wst unix.Stat_t
	must(t, unix.Lstat(wall, &wst))
	must(t, unix.Setxattr(wall, "user.debugfs", []byte("set-by-debugfs"), 0))
	must(t, os.Chown(wall, 1234, int(wst.Gid)))
	must(t, unix.Chmod(wall, wst.Mode&0o7777))
	ts := []unix.Timespec{wst.Mtim, wst.Mtim}
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, wall, ts, 0))

	if out := run(t, "debugfs", "-R", "ex /var/many-extents", pi.rootPart); !strings.Contains(out, " 1/ 1 ") {
		t.Fatalf("/var/many-extents has no index level in its extent tree:\n%s", out)
	}
	// garbage in the blocks preallocated to /var/prealloc: a reader that ignores the
	// unwritten flag returns it instead of zeros
	ex := run(t, "debugfs", "-R", "ex /var/prealloc", pi.rootPart)
	m := regexp.MustCompile(`(\d+) -\s+(\d+)\s+\d+ Uninit`).FindStringSubmatch(ex)
	if m == nil {
		t.Fatalf("no unwritten extent on /var/prealloc:\n%s", ex)
	}
	first, _ := strconv.Atoi(m[1])
	last, _ := strconv.Atoi(m[2])
	rf, err := os.OpenFile(pi.rootPart, os.O_RDWR, 0)
	must(t, err)
	_, err = rf.WriteAt(bytes.Repeat([]byte{0xAB}, (last-first+1)*4096), int64(first)*4096)
	must(t, err)
	must(t, rf.Close())

	// FAT32 boot partition
	pi.boot = map[string][]byte{
		"config.txt":                []byte("arm_64bit=1\ndtoverlay=vc4-kms-v3d\n"),
		"cmdline.txt":               []byte("console=serial0,115200 console=tty1 root=PARTUUID=1234abcd-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot resize\n"),
		"start4.elf":                randomBytes(t, 300_000),
		"bcm2711-rpi-4-b.dtb":       randomBytes(t, 50_000),
		"overlays/vc4-kms-v3d.dtbo": randomBytes(t, 4000),
		"overlays/README":           []byte("overlays\n"),
	}
	pi.img = assembleDisk(t, work, pi.rootPart, pi.boot, 96<<20)
	return pi
}

// assembleDisk makes the Pi OS disk layout around an ext4 root partition file: an MBR (disk
// id 0x1234abcd) with a 4 MiB gap, a 20 MiB FAT32 boot partition holding boot (mkfs.vfat +
// mcopy) and the root partition of rootSize bytes.
func assembleDisk(t testing.TB, work, rootPart string, boot map[string][]byte, rootSize int64) string {
	t.Helper()
	bootSrc := filepath.Join(work, "bootsrc")
	bootPart := filepath.Join(work, "boot.fat")
	run(t, "mkfs.vfat", "-F", "32", "-S", "512", "-s", "1", "-n", "bootfs", "-C", bootPart, "40960")
	dirs := map[string]bool{}
	for name, data := range boot {
		p := filepath.Join(bootSrc, name)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, data, 0o644))
		if d := filepath.Dir(name); d != "." && !dirs[d] {
			dirs[d] = true
			run(t, "mmd", "-i", bootPart, "::/"+d)
		}
		run(t, "mcopy", "-i", bootPart, p, "::/"+name)
	}
	img := filepath.Join(work, "pios.img")
	const sector = 512
	bootStart, bootSize := int64(8192), int64(40960*1024/sector)
	rootStart := bootStart + bootSize
	rootSectors := rootSize / sector
	f, err := os.Create(img)
	must(t, err)
	must(t, f.Truncate((rootStart+rootSectors)*sector))
	copyInto(t, f, bootPart, bootStart*sector)
	copyInto(t, f, rootPart, rootStart*sector)
	must(t, f.Close())
	layout := fmt.Sprintf("label: dos\nlabel-id: 0x1234abcd\nstart=%d, size=%d, type=c\nstart=%d, size=%d, type=83\n", bootStart, bootSize, rootStart, rootSectors)
	if err := execIn(layout, "sfdisk", "-q", img); err != nil {
		t.Fatalf("sfdisk: %v", err)
	}
	return img
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		_, file, line, _ := runtime.Caller(1)
		t.Fatalf("%s:%d: %v", filepath.Base(file), line, err)
	}
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// copyInto copies a partition file into the disk image, keeping holes.
func copyInto(t testing.TB, dst *os.File, src string, off int64) {
	t.Helper()
	s, err := os.Open(src)
	must(t, err)
	defer s.Close()
	buf := make([]byte, 1<<20)
	zero := make([]byte, len(buf))
	for pos := int64(0); ; pos += int64(len(buf)) {
		n, err := s.ReadAt(buf, pos)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, werr := dst.WriteAt(buf[:n], off+pos); werr != nil {
				t.Fatal(werr)
			}
		}
		if err != nil {
			return
		}
	}
}

func xzFile(t testing.TB, src, dst string) {
	t.Helper()
	out, err := os.Create(dst)
	must(t, err)
	defer out.Close()
	if err := execOut(out, "xz", "-T0", "-1", "-c", src); err != nil {
		t.Fatal(err)
	}
}

// skipBoot leaves out what the FAT partition fills (checked separately) and lost+found.
func skipBoot(p string) bool {
	return p == "lost+found" || strings.HasPrefix(p, "boot/firmware/")
}

func checkPiImport(t *testing.T, st *Store, name string, pi *piImage) {
	t.Helper()
	root := st.RootDir(name)
	compareSnapshots(t, takeSnapshot(t, pi.src, skipBoot), takeSnapshot(t, root, skipBoot))
	compareACLs(t, pi.src, root)
	dirMtimes(t, pi.src, root, func(p string) bool { return skipBoot(p) || p == "boot/firmware" || pi.debugfsd[p] })
	for name, want := range pi.boot {
		got, err := os.ReadFile(filepath.Join(root, "boot/firmware", name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("/boot/firmware/%s: %d bytes, err %v; want the %d bytes put on the FAT partition", name, len(got), err, len(want))
		}
		var st unix.Stat_t
		unix.Lstat(filepath.Join(root, "boot/firmware", name), &st)
		if st.Mode != typeReg|0o644 || st.Uid != 0 {
			t.Errorf("/boot/firmware/%s: mode %o uid %d", name, st.Mode, st.Uid)
		}
	}
	// unwritten extents read as zeros, not the garbage in their blocks
	b, err := os.ReadFile(filepath.Join(root, "var/prealloc"))
	if err != nil || len(b) != 65536 || !bytes.Equal(b, make([]byte, 65536)) {
		t.Errorf("var/prealloc: %d bytes (err %v), not 64 KiB of zeros", len(b), err)
	}
	var sp unix.Stat_t
	must(t, unix.Stat(filepath.Join(root, "var/swap-like"), &sp))
	if sp.Blocks*512 > 1<<20 {
		t.Errorf("sparse file imported with %d bytes allocated", sp.Blocks*512)
	}
	a, _ := os.Stat(filepath.Join(root, "usr/bin/perl"))
	c, _ := os.Stat(filepath.Join(root, "usr/bin/perl5.36"))
	if !os.SameFile(a, c) {
		t.Error("hard link pair imported as two files")
	}
	if problems, err := st.Verify(context.Background(), name); err != nil || len(problems) > 0 {
		t.Errorf("verify after import: %v %v", problems, err)
	}
}

func TestImportPiImageXZ(t *testing.T) {
	pi := buildPiImage(t, 3000)
	xzPath := pi.img + ".xz"
	xzFile(t, pi.img, xzPath)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	var prog bytes.Buffer
	info, err := st.Import(context.Background(), xzPath, "pios", ImportOptions{Prepare: true, Progress: &prog, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	checkPiImport(t, st, "pios", pi)
	if info.Format != "img.xz" || info.Source != "pios.img.xz" || !strings.HasPrefix(run(t, "sha256sum", xzPath), info.SHA256+" ") {
		t.Errorf("info: %+v", info)
	}
	for _, want := range []string{"image pios: decompress", "image pios: copy"} {
		if !strings.Contains(prog.String(), want) {
			t.Errorf("progress output lacks %q:\n%s", want, prog.String())
		}
	}
	checkPrepLayer(t, st, "pios")
	// nothing of the temp work remains (disk.img in particular)
	if got := storeNames(t, st); !slices.Equal(got, []string{layersDirName, "pios"}) {
		t.Errorf("store holds %v", got)
	}
	if ls, _ := st.AllLayers(); len(ls) != 2 {
		t.Errorf("store has %d layers, want root and prep", len(ls))
	}
	if _, err := os.Stat(filepath.Join(st.Dir(), "pios", "disk.img")); err == nil {
		t.Error("decompressed disk.img left in the image dir")
	}
}

func TestImportPiImagePlain(t *testing.T) {
	pi := buildPiImage(t, 0)
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	info, err := st.Import(context.Background(), pi.img, "plain", ImportOptions{Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	checkPiImport(t, st, "plain", pi)
	if info.Format != "img" || !strings.HasPrefix(run(t, "sha256sum", pi.img), info.SHA256+" ") {
		t.Errorf("info: %+v", info)
	}
	if len(info.Layers) != 1 || info.Prepared {
		t.Error("prep layer written without Prepare")
	}
	// the same image gzipped, under a name that says nothing: content decides
	gz := filepath.Join(t.TempDir(), "download.bin")
	out, err := os.Create(gz)
	must(t, err)
	must(t, execOut(out, "gzip", "-1", "-c", pi.img))
	out.Close()
	info, err = st.Import(context.Background(), gz, "gzipped", ImportOptions{Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	checkPiImport(t, st, "gzipped", pi)
	if info.Format != "img.gz" {
		t.Errorf("format %q", info.Format)
	}
}

// TestImportBrokenImages: truncated, corrupt, needing journal recovery or not a disk image:
// a clear error naming the file, and nothing left in the store.
func TestImportBrokenImages(t *testing.T) {
	pi := buildPiImage(t, 0)
	dir := t.TempDir()
	xzPath := filepath.Join(dir, "good.img.xz")
	xzFile(t, pi.img, xzPath)
	good, _ := os.ReadFile(xzPath)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		must(t, os.WriteFile(p, b, 0o644))
		return p
	}
	corrupt := append([]byte(nil), good...)
	for i := len(corrupt) / 3; i < len(corrupt)/3+64; i++ {
		corrupt[i] ^= 0x5A
	}
	text := filepath.Join(dir, "text")
	must(t, os.WriteFile(text, bytes.Repeat([]byte("hello world\n"), 10000), 0o644))
	notDisk := filepath.Join(dir, "text.img.xz")
	xzFile(t, text, notDisk)
	img, _ := os.ReadFile(pi.img)
	truncImg := write("trunc.img", img[:len(img)/2])

	// an ext4 that was not cleanly unmounted
	dirty := append([]byte(nil), img...)
	rootOff := (8192 + 40960*1024/512) * 512
	sb := dirty[rootOff+1024:]
	binary.LittleEndian.PutUint32(sb[0x60:], binary.LittleEndian.Uint32(sb[0x60:])|ext4IncompatRecover)
	dirtyPath := write("dirty.img", dirty)

	cases := []struct{ name, path, want string }{
		{"truncated xz", write("half.img.xz", good[:len(good)/2]), "xz"},
		{"truncated xz tail", write("tail.img.xz", good[:len(good)-20]), "xz"},
		{"corrupt xz", write("corrupt.img.xz", corrupt), "xz"},
		{"not a disk image", notDisk, "not a disk image"},
		{"truncated img", truncImg, "truncated"},
		{"journal recovery", dirtyPath, "journal recovery"},
	}
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	must(t, err)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var prog strings.Builder
			_, err := st.Import(context.Background(), c.path, "broken", ImportOptions{Logger: quietLog(), Prepare: true, Progress: &prog})
			if err == nil {
				t.Fatal("import succeeded")
			}
			// The progress ends in "failed", never "done" (a truncated .xz is read to its
			// last byte before xz says it ends early).
			if out := prog.String(); strings.Contains(out, "done") || out != "" && !strings.Contains(out, "failed after") {
				t.Errorf("progress of a failed import:\n%s", prog.String())
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), filepath.Base(c.path)) {
				t.Errorf("error %q should mention %q and the file name", err, c.want)
			}
			assertEmptyStore(t, st)
		})
	}
}

func checkPrepLayer(t *testing.T, st *Store, name string) {
	t.Helper()
	layers, err := st.Layers(name)
	must(t, err)
	info, err := st.Info(name)
	must(t, err)
	if len(layers) != 2 || layers[0] != st.LayerTree(info.Layers[1]) || layers[1] != st.RootDir(name) {
		t.Fatalf("layers %v", layers)
	}
	prep := layers[0]
	fstab, err := os.ReadFile(filepath.Join(prep, "etc/fstab"))
	must(t, err)
	for _, line := range strings.Split(string(fstab), "\n") {
		if strings.HasPrefix(line, "PARTUUID=") {
			t.Errorf("fstab keeps SD-card line %q", line)
		}
	}
	if !strings.Contains(string(fstab), "proc") {
		t.Error("fstab lost the proc line")
	}
	cl, err := os.ReadFile(filepath.Join(prep, "boot/firmware/cmdline.txt"))
	must(t, err)
	want := "console=serial0,115200 console=tty1 rootwait quiet\n"
	if string(cl) != want {
		t.Errorf("cmdline.txt = %q, want %q", cl, want)
	}
	for _, u := range []string{"dphys-swapfile.service", "resize2fs_once.service"} {
		if tgt, err := os.Readlink(filepath.Join(prep, "etc/systemd/system", u)); err != nil || tgt != "/dev/null" {
			t.Errorf("%s not masked: %q %v", u, tgt, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(prep, "etc/systemd/system/regenerate_ssh_host_keys.service")); err == nil {
		t.Error("masked a unit the image does not have")
	}
	if b, err := os.ReadFile(filepath.Join(prep, "etc/NetworkManager/conf.d/90-pifleet-nfsroot.conf")); err != nil || !strings.Contains(string(b), "unmanaged-devices") {
		t.Errorf("NetworkManager config: %v", err)
	}
	// prep dirs carry the root's owners and modes (the overlay shows the upper's)
	var a, b unix.Stat_t
	must(t, unix.Lstat(filepath.Join(prep, "etc"), &a))
	must(t, unix.Lstat(filepath.Join(st.RootDir(name), "etc"), &b))
	if a.Mode != b.Mode || a.Uid != b.Uid || a.Mtim != b.Mtim {
		t.Errorf("prep/etc %o %d %v, root/etc %o %d %v", a.Mode, a.Uid, a.Mtim, b.Mode, b.Uid, b.Mtim)
	}
	info, _ = st.Info(name)
	if !info.Prepared || len(info.Changes) < 4 {
		t.Errorf("image.yaml changes: %v", info.Changes)
	}
	// the pristine root is untouched
	orig, _ := os.ReadFile(filepath.Join(st.RootDir(name), "etc/fstab"))
	if !strings.Contains(string(orig), "PARTUUID=") {
		t.Error("prepare changed the pristine root's fstab")
	}
}
