package images

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchTree writes about mib MiB of files shaped like an OS root: many small files in a few
// hundred directories plus some large ones, half random (compressed binaries) and half
// repetitive (text), so xz has real work to do.
func benchTree(b *testing.B, dir string, mib int) {
	b.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	total := int64(mib) << 20
	var written int64
	chunk := make([]byte, 1<<20)
	for i := 0; written < total; i++ {
		size := int64(2 << 10 << rng.IntN(8)) // 2 KiB .. 256 KiB
		if i%200 == 0 {
			size = 8 << 20
		}
		size = min(size, total-written)
		p := filepath.Join(dir, fmt.Sprintf("usr/lib/d%03d/f%06d", i%300, i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		for left := size; left > 0; {
			n := min(left, int64(len(chunk)))
			half := n / 2
			for j := int64(0); j < half; j += 8 {
				v := rng.Uint64()
				for k := int64(0); k < 8 && j+k < half; k++ {
					chunk[j+k] = byte(v >> (8 * k))
				}
			}
			for j := half; j < n; j++ {
				chunk[j] = "pifleet text line\n"[j%18]
			}
			if _, err := f.Write(chunk[:n]); err != nil {
				b.Fatal(err)
			}
			left -= n
		}
		f.Close()
		written += size
	}
}

// BenchmarkImport1GiB imports a Pi OS-shaped .img.xz with about 1 GiB of files and compares
// it with the manual recipe: xz -dc | dd into an image file, mount -o loop both partitions,
// cp -a, sync (the import syncs too, so the comparison is like for like). It reports
// seconds for each and their ratio (pifleet/manual; below 1 means pifleet is faster).
// PIFLEET_BENCH_MIB changes the size.
func BenchmarkImport1GiB(b *testing.B) {
	needRoot(b)
	needTool(b, "mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk", "xz", "losetup", "mount", "cp", "dd")
	mib := 1024
	if s := os.Getenv("PIFLEET_BENCH_MIB"); s != "" {
		mib, _ = strconv.Atoi(s)
	}
	work := b.TempDir()
	src := filepath.Join(work, "src")
	fixtureTree(b, src, 2000)
	benchTree(b, src, mib)
	rootPart := filepath.Join(work, "root.ext4")
	rootMiB := mib + mib/5 + 64
	run(b, "mkfs.ext4", "-q", "-F", "-b", "4096", "-d", src, rootPart, fmt.Sprintf("%dM", rootMiB))
	bootPart := filepath.Join(work, "boot.fat")
	run(b, "mkfs.vfat", "-F", "32", "-S", "512", "-s", "1", "-C", bootPart, "40960")
	cfg := filepath.Join(work, "config.txt")
	os.WriteFile(cfg, []byte("arm_64bit=1\n"), 0o644)
	run(b, "mcopy", "-i", bootPart, cfg, "::/config.txt")
	img := filepath.Join(work, "bench.img")
	bootStart, bootSize := int64(8192), int64(40960*1024/512)
	rootStart, rootSize := bootStart+bootSize, int64(rootMiB)<<20/512
	f, err := os.Create(img)
	must(b, err)
	must(b, f.Truncate((rootStart+rootSize)*512))
	copyInto(b, f, bootPart, bootStart*512)
	copyInto(b, f, rootPart, rootStart*512)
	f.Close()
	if err := execIn(fmt.Sprintf("label: dos\nstart=%d, size=%d, type=c\nstart=%d, size=%d, type=83\n", bootStart, bootSize, rootStart, rootSize), "sfdisk", "-q", img); err != nil {
		b.Fatal(err)
	}
	xzPath := img + ".xz"
	xzFile(b, img, xzPath)
	if k := os.Getenv("PIFLEET_BENCH_KEEP"); k != "" {
		run(b, "cp", xzPath, k)
	}
	os.Remove(img)
	os.Remove(rootPart)
	os.RemoveAll(src)
	if err := exec.Command("sync").Run(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var ours, manual time.Duration
	for i := 0; i < b.N; i++ {
		st, err := OpenStore(filepath.Join(work, fmt.Sprintf("store%d", i)))
		must(b, err)
		t0 := time.Now()
		if _, err := st.Import(context.Background(), xzPath, "bench", ImportOptions{Logger: quietLog(), Prepare: true}); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(t0)
		b.StopTimer()
		must(b, os.RemoveAll(st.Dir()))
		dest := filepath.Join(work, fmt.Sprintf("manual%d", i))
		t1 := time.Now()
		manualImport(b, xzPath, filepath.Join(work, "manual.img"), dest, bootStart*512, bootSize*512, rootStart*512, rootSize*512)
		manual += time.Since(t1)
		must(b, os.RemoveAll(dest))
		b.StartTimer()
	}
	b.ReportMetric(ours.Seconds()/float64(b.N), "s/pifleet")
	b.ReportMetric(manual.Seconds()/float64(b.N), "s/manual")
	b.ReportMetric(ours.Seconds()/manual.Seconds(), "pifleet/manual")
}

// manualImport is what an admin does by hand: decompress with dd, loop-mount, cp -a. Without
// vfat in the kernel (as in some containers) the boot partition is copied with mcopy.
// Partitions are mounted by offset: containers often lack the loopNpM partition nodes.
func manualImport(b *testing.B, xzPath, img, dest string, bootOff, bootLen, rootOff, rootLen int64) {
	b.Helper()
	sh := `set -e
xz -dc -T0 "$1" | dd of="$2" bs=4M conv=sparse status=none
mkdir -p "$3" "$3.mnt"
mount -o ro,loop,offset=$6,sizelimit=$7 "$2" "$3.mnt"
trap 'umount "$3.mnt" 2>/dev/null || true' EXIT
cp -a "$3.mnt/." "$3/"
umount "$3.mnt"
if grep -qw vfat /proc/filesystems; then
  mount -o ro,loop,offset=$4,sizelimit=$5 "$2" "$3.mnt"
  cp -a "$3.mnt/." "$3/boot/firmware/"
  umount "$3.mnt"
else
  # no vfat in this kernel: copy the boot partition with mtools instead
  dd if="$2" of="$2.fat" bs=512 skip=$(($4/512)) count=$(($5/512)) status=none
  mcopy -s -p -m -i "$2.fat" "::/*" "$3/boot/firmware/"
  rm -f "$2.fat"
fi
rm -f "$2"
rmdir "$3.mnt"
sync -f "$3"
`
	out, err := exec.Command("sh", "-c", sh, "manual", xzPath, img, dest,
		strconv.FormatInt(bootOff, 10), strconv.FormatInt(bootLen, 10), strconv.FormatInt(rootOff, 10), strconv.FormatInt(rootLen, 10)).CombinedOutput()
	if err != nil {
		b.Fatalf("manual import: %v\n%s", err, strings.TrimSpace(string(out)))
	}
}
