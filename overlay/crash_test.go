package overlay

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// midCopyLine is what the crash child prints when it stands at the mid-copy failpoint.
const midCopyLine = "pifleet-overlay: mid-copy "

// TestCopyUpSurvivesKill kills a process in the middle of copying up a large file, at a
// failpoint halfway through the file's data (FS.midCopy), and checks what a crash there
// leaves: the upper has no copy under the real name, the merged view still shows the
// lower's complete file, and the next New() clears the half-written temp file from Work.
func TestCopyUpSurvivesKill(t *testing.T) {
	if dir := os.Getenv("PIFLEET_OVERLAY_CRASH_CHILD"); dir != "" {
		o, err := New(Options{Upper: filepath.Join(dir, "upper"), Work: filepath.Join(dir, "work"), Lowers: []string{filepath.Join(dir, "lower0")}})
		if err != nil {
			os.Exit(2)
		}
		o.midCopy = func(tmp string) {
			fmt.Println(midCopyLine + tmp)
			for {
				time.Sleep(time.Hour) // wait here for the parent's SIGKILL
			}
		}
		o.Chmod("big", 0o600)
		fmt.Println("pifleet-overlay: copy-up finished")
		os.Exit(0)
	}
	b := newBed(t, 1)
	data := bytes.Repeat([]byte("0123456789abcdef"), 2<<20) // 32 MiB
	put(t, b.lowers[0], "big", string(data), 0o644)
	want := sha256.Sum256(data)

	cmd := exec.Command(os.Args[0], "-test.run=^TestCopyUpSurvivesKill$")
	cmd.Env = append(os.Environ(), "PIFLEET_OVERLAY_CRASH_CHILD="+b.dir)
	out, err := cmd.StdoutPipe()
	must(t, err)
	cmd.Stderr = os.Stderr
	must(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) // if the test fails before the kill
	reached := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if tmp, ok := strings.CutPrefix(sc.Text(), midCopyLine); ok {
				reached <- tmp
				return
			}
			t.Logf("child: %s", sc.Text())
		}
		close(reached)
	}()
	var tmp string
	select {
	case tmp = <-reached:
	case <-time.After(2 * time.Minute): // a bound, not a measurement
		t.Fatal("the child never reached the mid-copy failpoint")
	}
	if tmp == "" {
		t.Fatal("the child ended without reaching the mid-copy failpoint")
	}

	// The child stands at the failpoint: half the data is in the temp file, nothing is in
	// the upper under the real name. Kill it there.
	if filepath.Dir(tmp) != b.work {
		t.Fatalf("copy-up temp %s is not in Work %s", tmp, b.work)
	}
	fi, err := os.Stat(tmp)
	must(t, err)
	if fi.Size() != int64(len(data)/2) {
		t.Fatalf("at the failpoint the temp holds %d bytes, want half of %d", fi.Size(), len(data))
	}
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of the SIGKILL: %v", cmd.ProcessState)
	}

	// What the crash left: the half temp file in Work, no copy in the upper.
	if _, err := os.Stat(tmp); err != nil {
		t.Fatalf("the killed copy-up's temp file is gone before recovery: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(b.upper, "big")); !os.IsNotExist(err) {
		t.Fatalf("a copy-up killed mid-copy left big in the upper (err %v)", err)
	}

	// Recovery: New clears Work, the merged view is the lower's file, copy-up works again.
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
	up, err := os.ReadFile(filepath.Join(b.upper, "big"))
	must(t, err)
	if sha256.Sum256(up) != want {
		t.Fatal("the upper's copy after recovery is not the lower's data")
	}
}
