package overlay

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
)

// TestConcurrentReadersSeeStableFiles reads untouched files while other goroutines copy
// up, rename and remove their siblings and parent dirs' neighbours: a reader must never
// see a missing or half-copied file. Run with -race to check the locking as well.
func TestConcurrentReadersSeeStableFiles(t *testing.T) {
	b := newBed(t, 2)
	for i := range 20 {
		put(t, b.lowers[1], fmt.Sprintf("etc/d%d/keep", i%4), "keep"+strconv.Itoa(i%4), 0o644)
		put(t, b.lowers[i%2], fmt.Sprintf("etc/d%d/f%d", i%4, i), "data", 0o644)
	}
	o := b.open(t)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				d := fmt.Sprintf("etc/d%d", i%4)
				f := fmt.Sprintf("%s/f%d", d, (i+w)%20)
				switch i % 5 {
				case 0:
					o.Chmod(f, 0o600)
				case 1:
					o.Rename(f, f+"x")
				case 2:
					o.Remove(f + "x")
				case 3:
					if fh, err := o.Create(fmt.Sprintf("%s/new%d-%d", d, w, i)); err == nil {
						fh.Close()
					}
				case 4:
					o.Rename(fmt.Sprintf("etc/d%d", (i+w)%4), "etc/tmp"+strconv.Itoa(w))
					o.Rename("etc/tmp"+strconv.Itoa(w), fmt.Sprintf("etc/d%d", (i+w)%4))
				}
			}
		}()
	}
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(1, 2))
			for range 400 {
				n := rng.IntN(4)
				// A dir may be mid-rename (it moves away and back); the file must then be
				// either absent or whole, never different.
				f, err := o.Open(fmt.Sprintf("etc/d%d/keep", n))
				if err != nil {
					if !os.IsNotExist(err) {
						errs <- err
					}
					continue
				}
				buf := make([]byte, 16)
				k, _ := f.Read(buf)
				f.Close()
				if string(buf[:k]) != "keep"+strconv.Itoa(n) {
					errs <- fmt.Errorf("etc/d%d/keep read %q", n, buf[:k])
				}
				if _, err := o.ReadDir("etc"); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for n := range 4 {
		if got := readAll(t, o, fmt.Sprintf("etc/d%d/keep", n)); got != "keep"+strconv.Itoa(n) {
			t.Fatalf("d%d/keep = %q after the storm", n, got)
		}
	}
}

// TestRandomWorkloadLeavesLowersUntouched runs the differential test's random operations
// on our overlay alone (no kernel mount needed) and checks the lowers byte for byte,
// metadata and ctime included.
func TestRandomWorkloadLeavesLowersUntouched(t *testing.T) {
	b := newBed(t, 2)
	rng := rand.New(rand.NewPCG(42, 7))
	for i, l := range b.lowers {
		genLower(t, rng, l, i)
	}
	before := treeDigest(t, b.lowers...)
	o := b.open(t)
	snap := snapshotOurs(t, o)
	for i := range 1500 {
		randomOp(rng, snap).applyOurs(o)
		if i%50 == 0 {
			snap = snapshotOurs(t, o)
		}
	}
	if after := treeDigest(t, b.lowers...); after != before {
		t.Fatal("the workload changed a lower dir")
	}
}
