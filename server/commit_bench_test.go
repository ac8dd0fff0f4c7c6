package server

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/overlay"
	"github.com/pifleet/pifleet/test/require"
	"golang.org/x/sys/unix"
)

// BenchmarkCommit100MB commits a board that changed 100 MB (2000 files of 20 KB under
// /usr/lib/app, 3 files of 20 MB under /opt/data) over a small stored image, against cp -a
// of the same upper (with and without a sync: the commit syncs what it writes). The
// commit is overlay.Export (copy_file_range per data extent) plus images' AddLayer (which
// reads every byte once more to hash the layer) and CreateImage.
func BenchmarkCommit100MB(b *testing.B) {
	require.Root(b, "the commit keeps owners and writes whiteouts (CI runs as root)")
	dir := b.TempDir()
	state := filepath.Join(dir, "state")
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/os-release"), []byte("ID=bench\n"), 0o644)
	store := storeImageB(b, state, "img", root)
	upper := filepath.Join(dir, "upper")
	small := make([]byte, 20<<10)
	for i := range small {
		small[i] = byte(i * 7)
	}
	for i := range 2000 {
		p := filepath.Join(upper, "usr/lib/app", "d"+strconv.Itoa(i/100), "f"+strconv.Itoa(i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		small[0] = byte(i)
		small[1] = byte(i >> 8)
		if err := os.WriteFile(p, small, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 13)
	}
	os.MkdirAll(filepath.Join(upper, "opt/data"), 0o755)
	for i := range 3 {
		f, err := os.Create(filepath.Join(upper, "opt/data", "big"+strconv.Itoa(i)))
		if err != nil {
			b.Fatal(err)
		}
		for j := range 20 {
			big[0], big[1] = byte(i), byte(j)
			f.Write(big)
		}
		f.Close()
	}
	lowers, err := store.Layers("img")
	if err != nil {
		b.Fatal(err)
	}
	exec.Command("sync").Run()
	b.Run("commit", func(b *testing.B) {
		defer reportCPU(b)()
		b.SetBytes(100 << 20)
		for i := 0; b.Loop(); i++ {
			if _, err := commitUpper(store, upper, lowers, "bench", "img", "bench-"+strconv.Itoa(i), images.LayerExcludes()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			store.Remove("bench-"+strconv.Itoa(i), nil)
			exec.Command("sync").Run()
			b.StartTimer()
		}
	})
	b.Run("export", func(b *testing.B) {
		defer reportCPU(b)()
		b.SetBytes(100 << 20)
		ex, _ := overlay.ParseExcludes(images.LayerExcludes())
		for b.Loop() {
			dst := filepath.Join(dir, "export")
			os.Mkdir(dst, 0o755)
			if _, err := overlay.Export(upper, lowers, dst, ex); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			os.RemoveAll(dst)
			exec.Command("sync").Run()
			b.StartTimer()
		}
	})
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("cp-a/sync=%v", sync), func(b *testing.B) {
			b.SetBytes(100 << 20)
			defer reportCPU(b)()
			dst := filepath.Join(dir, "cp")
			for b.Loop() {
				if err := exec.Command("cp", "-a", upper, dst).Run(); err != nil {
					b.Fatal(err)
				}
				if sync {
					exec.Command("sync", "-f", dst).Run()
				}
				b.StopTimer()
				os.RemoveAll(dst)
				exec.Command("sync").Run()
				b.StartTimer()
			}
		})
	}
}

func storeImageB(b *testing.B, state, name, root string) *images.Store {
	st, err := images.OpenStore(filepath.Join(state, "images"))
	if err != nil {
		b.Fatal(err)
	}
	tmp, err := st.TempDir("bench")
	if err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", root+"/.", tmp).CombinedOutput(); err != nil {
		b.Fatalf("cp: %v %s", err, out)
	}
	l, err := st.AddLayer(tmp, "bench root")
	if err != nil {
		b.Fatal(err)
	}
	if err := st.CreateImage(name, "", []string{l.Digest}, images.ImageMeta{}); err != nil {
		b.Fatal(err)
	}
	return st
}

// reportCPU reports the CPU time (user+system, this process and its children: cp, sync)
// per op: on a machine shared with other jobs it varies much less than wall time. The
// untimed cleanup between ops is counted too (small: rm and sync).
func reportCPU(b *testing.B) func() {
	before := cpuNow()
	return func() { b.ReportMetric(float64(cpuNow()-before)/float64(b.N), "cpu-ns/op") }
}

func cpuNow() int64 {
	var total int64
	for _, who := range []int{unix.RUSAGE_SELF, unix.RUSAGE_CHILDREN} {
		var ru unix.Rusage
		if unix.Getrusage(who, &ru) == nil {
			total += ru.Utime.Nano() + ru.Stime.Nano()
		}
	}
	return total
}
