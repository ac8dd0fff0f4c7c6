package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/overlay"
)

// TestResetCrashBetweenMoveAndDelete: a reset that dies after moving the board dir
// aside leaves a consistent, already-reset board; the next start deletes the leftovers.
func TestResetCrashBetweenMoveAndDelete(t *testing.T) {
	st := State{Dir: t.TempDir()}
	if err := os.MkdirAll(filepath.Join(st.Upper("pi-01"), "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(st.Upper("pi-01"), "etc", "hostname"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	trash, err := resetBoardDir(st, "pi-01", true) // "crash" right after the rename
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(st.Board("pi-01")); !os.IsNotExist(err) {
		t.Fatalf("board dir still there after the move-aside: %v", err)
	}
	if _, err := os.Stat(filepath.Join(trash, "upper", "etc", "hostname")); err != nil {
		t.Fatalf("the moved-aside dir lost its contents: %v", err)
	}
	if err := finishResets(st, discardLogger()); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(st.Trash()); len(ents) != 0 {
		t.Fatalf("trash not emptied at start: %v", ents)
	}
	// Resetting a board that never booted is a no-op, not an error.
	if _, err := resetBoardDir(st, "pi-02", false); err != nil {
		t.Fatal(err)
	}
}

// TestDiffRecreatedDir: a board removes a lower dir and makes it again (an opaque dir in
// its upper). What it put back is C, what is new A, and what the image had there and the
// board did not put back is D, listed once per removed tree.
func TestDiffRecreatedDir(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	lower := filepath.Join(dir, "lower")
	for name, data := range map[string]string{"opt/app/old.conf": "old", "opt/app/keep.conf": "k", "opt/app/sub/deep": "d"} {
		p := filepath.Join(lower, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	upper := filepath.Join(dir, "upper")
	fsys, err := overlay.New(overlay.Options{Upper: upper, Work: filepath.Join(dir, "work"), Lowers: []string{lower}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"opt/app/old.conf", "opt/app/keep.conf", "opt/app/sub/deep", "opt/app/sub", "opt/app"} {
		if err := fsys.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := fsys.Mkdir("opt/app", 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"opt/app/keep.conf", "opt/app/new.conf"} {
		f, err := fsys.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	changes, err := DiffBoard(upper, []string{lower})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range changes {
		got = append(got, c.Kind+" "+c.Path)
	}
	want := []string{"C /opt", "C /opt/app", "C /opt/app/keep.conf", "A /opt/app/new.conf", "D /opt/app/old.conf", "D /opt/app/sub"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
