package overlay

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// The benchmarks compare the same call through the overlay and on a plain directory
// holding the same tree. With several lowers the files live in the bottom one and every
// layer has the directories, so each lookup has to pass all of them: the worst case.

const benchFiles = 100

func benchTree(b *testing.B, nLowers int) (plain string, o *FS) {
	b.Helper()
	needRoot(b)
	bed := newBed(b, nLowers)
	plain = filepath.Join(bed.dir, "plain")
	data := make([]byte, 4096)
	for _, root := range append([]string{plain}, bed.lowers[len(bed.lowers)-1]) {
		for i := range benchFiles {
			put(b, root, "usr/lib/pkg/file"+strconv.Itoa(i), string(data), 0o644)
		}
	}
	for i, l := range bed.lowers[:len(bed.lowers)-1] {
		put(b, l, "usr/lib/pkg/other"+strconv.Itoa(i), "x", 0o644)
	}
	return plain, bed.open(b)
}

func benchName(i int) string { return "usr/lib/pkg/file" + strconv.Itoa(i%benchFiles) }

func BenchmarkLstat(b *testing.B) {
	for _, n := range []int{1, 3, 10} {
		plain, o := benchTree(b, n)
		if n == 1 {
			b.Run("plain", func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					if _, err := os.Lstat(plain + "/" + benchName(i)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		b.Run(fmt.Sprintf("lowers=%d", n), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				if _, err := o.Lstat(benchName(i)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkOpenRead(b *testing.B) {
	buf := make([]byte, 4096)
	for _, n := range []int{1, 3, 10} {
		plain, o := benchTree(b, n)
		if n == 1 {
			b.Run("plain", func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					f, err := os.Open(plain + "/" + benchName(i))
					if err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(f, buf); err != nil {
						b.Fatal(err)
					}
					f.Close()
				}
			})
		}
		b.Run(fmt.Sprintf("lowers=%d", n), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				f, err := o.Open(benchName(i))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(f, buf); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
	}
}

func BenchmarkReadDir(b *testing.B) {
	for _, n := range []int{1, 3, 10} {
		plain, o := benchTree(b, n)
		if n == 1 {
			b.Run("plain", func(b *testing.B) {
				for b.Loop() {
					ents, err := os.ReadDir(plain + "/usr/lib/pkg")
					if err != nil {
						b.Fatal(err)
					}
					for _, e := range ents {
						if _, err := e.Info(); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
		b.Run(fmt.Sprintf("lowers=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := o.ReadDir("usr/lib/pkg"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCopyUp100MB times the copy-up of a 100 MB lower file (which includes an fsync
// before the rename) against cp of the same file, with and without a sync.
func BenchmarkCopyUp100MB(b *testing.B) {
	needRoot(b)
	bed := newBed(b, 1)
	big := filepath.Join(bed.lowers[0], "big")
	f, err := os.Create(big)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	for range 100 {
		f.Write(chunk)
	}
	f.Close()
	o := bed.open(b)
	b.Run("overlay", func(b *testing.B) {
		b.SetBytes(100 << 20)
		for b.Loop() {
			b.StopTimer()
			os.RemoveAll(bed.upper)
			os.MkdirAll(bed.upper, 0o755)
			o.dirs.clear()
			b.StartTimer()
			if err := o.Chmod("big", 0o600); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("cp/sync=%v", sync), func(b *testing.B) {
			b.SetBytes(100 << 20)
			dst := filepath.Join(bed.dir, "cpdst")
			for b.Loop() {
				b.StopTimer()
				os.Remove(dst)
				b.StartTimer()
				args := []string{"-p", big, dst}
				if err := exec.Command("cp", args...).Run(); err != nil {
					b.Fatal(err)
				}
				if sync {
					if err := exec.Command("sync", dst).Run(); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// The stack benchmarks compare an image of 10 layers with the same merged tree as one
// layer: lookups (Stat of deep paths, with the dir cache warm and cleared every time) and
// reads of files in the bottom layer. The nine layers above it hold the same deep dirs,
// either with a few files each ("sparse": small commits) or with 100 files each
// ("dense": an upgrade that replaced a library dir, so each copy of the dir is big).

const stackDirs = "usr/share/pkg/a/b/c"

func stackTree(b *testing.B, layers int, dense bool) *FS {
	b.Helper()
	needRoot(b)
	bed := newBed(b, layers)
	data := string(make([]byte, 4096))
	bottom := bed.lowers[len(bed.lowers)-1]
	perLayer := 3
	if dense {
		perLayer = 100
	}
	for i := range benchFiles {
		put(b, bottom, stackDirs+"/file"+strconv.Itoa(i), data, 0o644)
	}
	// the files of the layers above; with one layer they are all in it
	for l := 1; l < 10; l++ {
		root := bottom
		if layers > 1 {
			root = bed.lowers[l-1]
		}
		for j := range perLayer {
			put(b, root, stackDirs+"/l"+strconv.Itoa(l)+"-"+strconv.Itoa(j), "x", 0o644)
		}
	}
	return bed.open(b)
}

func stackName(i int) string { return stackDirs + "/file" + strconv.Itoa(i%benchFiles) }

func benchStack(b *testing.B, fn func(b *testing.B, o *FS)) {
	for _, c := range []struct {
		name   string
		layers int
		dense  bool
	}{{"layers=1", 1, false}, {"layers=10/sparse", 10, false}, {"layers=1/dense", 1, true}, {"layers=10/dense", 10, true}} {
		o := stackTree(b, c.layers, c.dense)
		b.Run(c.name, func(b *testing.B) {
			before := cpuTime()
			fn(b, o)
			b.ReportMetric(float64(cpuTime()-before)/float64(b.N), "cpu-ns/op")
		})
	}
}

func BenchmarkStackStat(b *testing.B) {
	benchStack(b, func(b *testing.B, o *FS) {
		for i := 0; b.Loop(); i++ {
			if _, err := o.Stat(stackName(i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkStackStatCold clears the dir cache before each Stat (any dir change on the
// board does), so the whole path is resolved through the layers again.
func BenchmarkStackStatCold(b *testing.B) {
	benchStack(b, func(b *testing.B, o *FS) {
		for i := 0; b.Loop(); i++ {
			o.dirs.clear()
			if _, err := o.Stat(stackName(i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkStackRead(b *testing.B) {
	buf := make([]byte, 4096)
	benchStack(b, func(b *testing.B, o *FS) {
		for i := 0; b.Loop(); i++ {
			f, err := o.Open(stackName(i))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.ReadAt(buf, 0); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
}

// cpuTime is the process's user+system CPU time in ns: on a machine shared with other
// jobs it varies much less than wall time.
func cpuTime() int64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
