package server

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pifleet/pifleet/overlay"
	"golang.org/x/sys/unix"
)

// ErrMounted refuses a reset of a board that is running off its root right now.
var ErrMounted = errors.New("board has an active NFS mount")

// resetBoardDir wipes a board's state crash-safely: the whole board dir (upper, work,
// NFS handle table, identity) is renamed into the trash in one step, then deleted. A
// crash before the rename leaves the board as it was; after it, the board is already
// reset and finishResets deletes the leftovers at the next start. It returns the trash
// path (already deleted unless keepTrash, which tests use to inject a crash).
func resetBoardDir(st State, board string, keepTrash bool) (string, error) {
	dir := st.Board(board)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return "", nil // never booted: nothing to wipe
	}
	if err := os.MkdirAll(st.Trash(), 0o700); err != nil {
		return "", fmt.Errorf("board %s: reset: %w", board, err)
	}
	trash := filepath.Join(st.Trash(), board+"."+strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := os.Rename(dir, trash); err != nil {
		return "", fmt.Errorf("board %s: reset: move aside: %w", board, err)
	}
	if err := syncDir(st.Boards()); err != nil {
		return "", fmt.Errorf("board %s: reset: %w", board, err)
	}
	if keepTrash {
		return trash, nil
	}
	if err := os.RemoveAll(trash); err != nil {
		return trash, fmt.Errorf("board %s: reset: delete %s: %w", board, trash, err)
	}
	return trash, nil
}

// finishResets deletes board dirs a reset moved aside but did not get to delete (the
// server or the CLI died in between).
func finishResets(st State, log *slog.Logger) error {
	ents, err := os.ReadDir(st.Trash())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(st.Trash(), e.Name())
		board, _, _ := strings.Cut(e.Name(), ".")
		log.Info("finishing an interrupted board reset", "board", board, "path", p)
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("board %s: finish reset: %w", board, err)
		}
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Change is one line of `pifleet board diff`: what a board changed against its image.
type Change struct {
	Kind string `json:"kind"` // "A" added, "C" changed, "D" deleted
	Path string `json:"path"` // absolute path in the board's root
	Size int64  `json:"size"` // the file's size in bytes (regular files and symlinks; 0 for D)
	Disk int64  `json:"disk"` // disk space the upper copy of a regular file takes (blocks)
}

// DiffBoard lists what a board changed against its lowers (identity, then image layers),
// as overlay.Changes reads it from the board's upper dir.
func DiffBoard(upper string, lowers []string) ([]Change, error) {
	changes, err := overlay.Changes(upper, lowers)
	if err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	// Never nil: a board with no changes is [] in the API, not null.
	out := make([]Change, len(changes))
	for i, c := range changes {
		out[i] = changeOf(upper, c)
	}
	return out, nil
}

// changeOf is one line of a diff: overlay reports the disk space, people read a file's
// size (a 5-byte file is "5 B", not the 4 KiB block it takes).
func changeOf(upper string, c overlay.Change) Change {
	ch := Change{Kind: c.Kind.String(), Path: c.Path, Disk: c.Size}
	var st unix.Stat_t
	if t := c.Type; (t.IsRegular() || t&fs.ModeSymlink != 0) && c.Kind != overlay.Deleted &&
		unix.Lstat(filepath.Join(upper, filepath.FromSlash(c.Path)), &st) == nil {
		ch.Size = st.Size
	}
	return ch
}

// DirSize is the disk space a tree takes (what a board's upper costs).
func DirSize(dir string) int64 {
	var total int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil {
			total += st.Blocks * 512
		}
		return nil
	})
	return total
}
