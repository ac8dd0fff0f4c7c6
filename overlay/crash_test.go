package overlay

import (
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestCopyUpSurvivesKill kills a process in the middle of copying up a large file and
// checks what a crash may leave: the upper has either no copy or the complete one, and
// the next New() clears the half-written temp file from Work.
func TestCopyUpSurvivesKill(t *testing.T) {
	if dir := os.Getenv("PIFLEET_OVERLAY_CRASH_CHILD"); dir != "" {
		o, err := New(Options{Upper: filepath.Join(dir, "upper"), Work: filepath.Join(dir, "work"), Lowers: []string{filepath.Join(dir, "lower0")}})
		if err != nil {
			os.Exit(2)
		}
		o.Chmod("big", 0o600)
		os.Exit(0)
	}
	b := newBed(t, 1)
	data := bytes.Repeat([]byte("0123456789abcdef"), 2<<20) // 32 MiB: copy-up takes a while
	put(t, b.lowers[0], "big", string(data), 0o644)
	want := sha256.Sum256(data)
	caught := false
	for attempt := 0; attempt < 5 && !caught; attempt++ {
		os.RemoveAll(b.upper)
		os.RemoveAll(b.work)
		cmd := exec.Command(os.Args[0], "-test.run=^TestCopyUpSurvivesKill$")
		cmd.Env = append(os.Environ(), "PIFLEET_OVERLAY_CRASH_CHILD="+b.dir)
		must(t, cmd.Start())
		// Kill as soon as the temp copy shows up in Work.
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			ents, _ := os.ReadDir(b.work)
			if len(ents) > 0 {
				caught = true
				break
			}
			if _, err := os.Stat(filepath.Join(b.upper, "big")); err == nil {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
		cmd.Process.Kill()
		cmd.Wait()

		// Whatever the upper holds under the real name is complete.
		if f, err := os.Open(filepath.Join(b.upper, "big")); err == nil {
			h := sha256.New()
			io.Copy(h, f)
			f.Close()
			if !bytes.Equal(h.Sum(nil), want[:]) {
				t.Fatal("a killed copy-up left a partial file visible in the upper")
			}
		}
		o := b.open(t)
		if ents, _ := os.ReadDir(b.work); len(ents) != 0 {
			t.Fatalf("New left crash leftovers in Work: %v", ents)
		}
		f, err := o.Open("big")
		must(t, err)
		h := sha256.New()
		_, err = io.Copy(h, f)
		must(t, err)
		f.Close()
		if !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatal("merged view of big changed after a crash")
		}
		must(t, o.Chmod("big", 0o600))
		if fi, _ := o.Stat("big"); fi.Mode().Perm() != 0o600 || fi.Size() != int64(len(data)) {
			t.Fatal("copy-up after recovery failed")
		}
	}
	if !caught {
		t.Log("the child finished every copy-up before it could be killed; only the after-state was checked")
	}
}
