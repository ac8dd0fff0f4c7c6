package server

import (
	"os"
	"path/filepath"
	"testing"
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
