package server

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pifleet/pifleet/images"
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

// LayerExcludes is the exclude list of a new layer for cfg, `board commit`'s and `image
// shell`'s: images.LayerExcludes plus fleet.yaml's server.commit.exclude.
func LayerExcludes(cfg *Config) []string {
	return append(images.LayerExcludes(), cfg.Server.CommitExclude...)
}

// CommitResult is what `pifleet board commit` made.
type CommitResult struct {
	Board     string `json:"board"`
	Image     string `json:"image"`     // the new image
	Base      string `json:"base"`      // the board's image, which the new one stacks on
	Layer     string `json:"layer"`     // the new layer's digest (sha256 hex)
	Files     int64  `json:"files"`     // paths in the layer (whiteouts included)
	Bytes     int64  `json:"bytes"`     // file data in the layer
	Whiteouts int    `json:"whiteouts"` // deletions in the layer
	Excluded  int    `json:"excluded"`  // changes left out (excluded paths)
}

// ErrNotStored refuses a commit of a board whose image is a fleet.yaml path, not in the
// image store: a layer can only be stacked on a stored image.
var ErrNotStored = errors.New("not in the image store")

// commitUpper exports a board's upper (minus the excludes) over its image's layers as a
// new layer in store, and makes image as = base + that layer. The upper is only read.
// The new layer is left for the store's sweep if the image cannot be made.
func commitUpper(store *images.Store, upper string, imageLowers []string, board, base, as string, exclude []string) (CommitResult, error) {
	res := CommitResult{Board: board, Image: as, Base: base}
	fail := func(err error) (CommitResult, error) {
		return res, fmt.Errorf("board %s: commit as %s: %w", board, as, err)
	}
	if err := images.CheckName(as); err != nil {
		return fail(err)
	}
	if store.Exists(as) {
		return fail(fmt.Errorf("image %s %w (pick another name, or remove it first with `pifleet image rm %s`)", as, images.ErrExists, as))
	}
	if !store.Exists(base) {
		return fail(fmt.Errorf("its image %s is %w (a fleet.yaml path image?): only a stored image can have layers stacked on it", base, ErrNotStored))
	}
	if layers, err := store.Layers(base); err != nil {
		return fail(err)
	} else if !slices.Equal(layers, imageLowers) {
		return fail(fmt.Errorf("the board runs another stack than image %s has now (its image changed since it booted): reboot it first", base))
	}
	if _, err := os.Lstat(upper); errors.Is(err, fs.ErrNotExist) {
		return fail(errors.New("it has no upper dir (never booted, or reset since): nothing to commit"))
	}
	ex, err := overlay.ParseExcludes(exclude)
	if err != nil {
		return fail(err)
	}
	tmp, err := store.TempDir("commit-" + board)
	if err != nil {
		return fail(err)
	}
	stats, err := overlay.Export(upper, imageLowers, tmp, ex)
	if err != nil {
		os.RemoveAll(tmp)
		return fail(err)
	}
	res.Whiteouts, res.Excluded = stats.Whiteouts, stats.Excluded
	layer, err := store.AddLayer(tmp, fmt.Sprintf("board %s committed over %s", board, base))
	if err != nil {
		return fail(err)
	}
	res.Layer, res.Files, res.Bytes = layer.Digest, layer.Files, layer.Bytes
	meta := images.ImageMeta{Source: "board " + board, Format: "commit", Comment: fmt.Sprintf("pifleet board commit %s --as %s", board, as)}
	if err := store.CreateImage(as, base, []string{layer.Digest}, meta); err != nil {
		return fail(err)
	}
	return res, nil
}

// CommitBoard makes a new image from a board's changes over its image (see commitUpper)
// while the server runs. A board with its root mounted is refused unless force: its
// upper then changes while it is read, and the layer holds what was read when. The board
// itself is never changed.
func (s *Server) CommitBoard(name, as string, force bool) (CommitResult, error) {
	s.mu.Lock() // no reset or reload moves the upper meanwhile
	defer s.mu.Unlock()
	snap := s.fleet.cur.Load()
	b, ok := snap.boards[name]
	if !ok {
		return CommitResult{}, fmt.Errorf("board %s: not in the fleet", name)
	}
	if s.nfs.Mounted(name) && !force {
		return CommitResult{}, fmt.Errorf("board %s: %w: power it off first, or use --force (the layer then holds its files as they were when read)", name, ErrMounted)
	}
	// The base is the image the board runs (its changes were made over it), which may be
	// another than fleet.yaml names now while a switch is pending.
	res, err := commitUpper(s.store, s.state.Upper(name), b.run.Layers, name, b.run.Image, as, LayerExcludes(snap.cfg))
	if err != nil {
		return res, err
	}
	s.log.Info("board committed", "board", name, "mac", macString(b.cfg), "image", as, "base", res.Base, "layer", res.Layer, "forced", force)
	return res, nil
}

// OfflineCommit is CommitBoard straight on the state dir, for when no server runs (so no
// board has its root mounted). It holds the state dir's lock meanwhile.
func OfflineCommit(cfg *Config, name, as string) (CommitResult, error) {
	b, ok := boardByName(cfg, name)
	if !ok {
		return CommitResult{}, fmt.Errorf("board %s: not in %s", name, cfg.Path)
	}
	lock, err := LockOffline(cfg.Server.State)
	if err != nil {
		return CommitResult{}, fmt.Errorf("board %s: %w", name, err)
	}
	defer lock.Release()
	st := State{Dir: cfg.Server.State}
	store, err := OpenStore(st.Dir, lock, nil)
	if err != nil {
		return CommitResult{}, err
	}
	run, _, err := offlineStacks(cfg, b) // the image it ran last: its changes were made over that
	if err != nil {
		return CommitResult{}, err
	}
	return commitUpper(store, st.Upper(name), run.Layers, name, run.Image, as, LayerExcludes(cfg))
}
