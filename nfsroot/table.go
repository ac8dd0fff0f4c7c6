package nfsroot

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// The handle table maps an overlay FileID to the names it is known by, (parent FileID,
// name), so a handle that carries only the FileID can be turned back into a path after a
// restart, a rename of any parent or a copy-up. It lives in the board's state dir as an
// append-only log; a record is fsynced before the reply that hands out its handle, which
// is what keeps handles valid across a SIGKILL.

const (
	tableFile    = "handles.log"
	instanceFile = "instance"

	opAddLink    = 1 // fileid is also known as (parent, name)
	opRemoveLink = 2 // (parent, name) no longer names fileid
	opOnlyLink   = 3 // fileid (a directory) is now known only as (parent, name)

	maxDepth = 4096 // a path deeper than this is treated as a loop in the table
)

type link struct {
	parent uint64
	name   string
}

// handleTable is safe for concurrent use.
type handleTable struct {
	mu      sync.Mutex
	links   map[uint64][]link
	pending []byte // records not yet written
	seq     uint64 // records appended so far
	records int    // records in the log file, for compaction

	syncMu sync.Mutex // serialises writes+fsync; holders batch all pending records
	synced uint64     // seq written to the file
	dirty  bool       // written since the last fsync
	f      *os.File
}

// openTable loads (or creates) the instance id and the handle table in dir.
func openTable(dir string) (*handleTable, [8]byte, error) {
	var inst [8]byte
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, inst, fmt.Errorf("state dir: %w", err)
	}
	inst, err := loadInstance(dir)
	if err != nil {
		return nil, inst, err
	}
	t := &handleTable{links: make(map[uint64][]link)}
	path := filepath.Join(dir, tableFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, inst, fmt.Errorf("handle table: %w", err)
	}
	good, err := t.replay(f)
	if err != nil {
		f.Close()
		return nil, inst, fmt.Errorf("handle table %s: %w", path, err)
	}
	// A torn last record (killed mid-append) is cut off so new records follow good ones.
	if err := f.Truncate(good); err != nil {
		f.Close()
		return nil, inst, fmt.Errorf("handle table %s: truncate: %w", path, err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, inst, fmt.Errorf("handle table %s: %w", path, err)
	}
	t.f = f
	if t.records > 2*t.liveLinks()+1024 {
		if err := t.compact(dir); err != nil {
			f.Close()
			return nil, inst, err
		}
	}
	return t, inst, nil
}

// loadInstance reads the export instance id, creating it durably on first use. It changes
// only when the state dir is deleted (a board reset), which is what makes old handles STALE.
func loadInstance(dir string) ([8]byte, error) {
	var inst [8]byte
	path := filepath.Join(dir, instanceFile)
	b, err := os.ReadFile(path)
	if err == nil && len(b) == 8 {
		copy(inst[:], b)
		return inst, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return inst, fmt.Errorf("instance id: %w", err)
	}
	_, _ = rand.Read(inst[:])
	if err := writeDurably(path, inst[:]); err != nil {
		return inst, fmt.Errorf("instance id: %w", err)
	}
	return inst, nil
}

// writeDurably replaces path with data via a synced temp file and a synced directory.
func writeDurably(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// replay applies the log and returns the offset after the last whole record.
func (t *handleTable) replay(f *os.File) (int64, error) {
	r := bufio.NewReaderSize(f, 256<<10)
	var off int64
	var hdr [18]byte
	name := make([]byte, 255)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return off, nil // EOF or torn header
		}
		n := int(hdr[17])
		if _, err := io.ReadFull(r, name[:n]); err != nil {
			return off, nil
		}
		op := hdr[0]
		id := binary.BigEndian.Uint64(hdr[1:9])
		l := link{parent: binary.BigEndian.Uint64(hdr[9:17]), name: string(name[:n])}
		if op < opAddLink || op > opOnlyLink {
			return off, nil // garbage tail: treat like a torn write
		}
		t.apply(op, id, l)
		t.records++
		off += int64(len(hdr) + n)
	}
}

func (t *handleTable) apply(op byte, id uint64, l link) {
	ls := t.links[id]
	switch op {
	case opAddLink:
		for _, x := range ls {
			if x == l {
				return
			}
		}
		t.links[id] = append(ls, l)
	case opOnlyLink:
		t.links[id] = []link{l}
	case opRemoveLink:
		for i, x := range ls {
			if x == l {
				ls = append(ls[:i:i], ls[i+1:]...)
				break
			}
		}
		if len(ls) == 0 {
			delete(t.links, id)
		} else {
			t.links[id] = ls
		}
	}
}

func (t *handleTable) liveLinks() int {
	n := 0
	for _, ls := range t.links {
		n += len(ls)
	}
	return n
}

// compact rewrites the log with only the live links.
func (t *handleTable) compact(dir string) error {
	var buf []byte
	n := 0
	for id, ls := range t.links {
		for _, l := range ls {
			buf = appendRecord(buf, opAddLink, id, l)
			n++
		}
	}
	path := filepath.Join(dir, tableFile)
	if err := writeDurably(path, buf); err != nil {
		return fmt.Errorf("handle table %s: compact: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("handle table %s: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return fmt.Errorf("handle table %s: %w", path, err)
	}
	t.f.Close()
	t.f = f
	t.records = n
	return nil
}

func appendRecord(b []byte, op byte, id uint64, l link) []byte {
	b = append(b, op)
	b = binary.BigEndian.AppendUint64(b, id)
	b = binary.BigEndian.AppendUint64(b, l.parent)
	b = append(b, byte(len(l.name)))
	return append(b, l.name...)
}

// record changes the table and queues the log record; it returns the sequence number to
// pass to sync before the change may be relied on by a client. Known links cost nothing.
func (t *handleTable) record(op byte, id uint64, l link) uint64 {
	if len(l.name) == 0 || len(l.name) > maxNameLen {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ls := t.links[id]
	switch op {
	case opAddLink:
		for _, x := range ls {
			if x == l {
				return 0
			}
		}
	case opOnlyLink:
		if len(ls) == 1 && ls[0] == l {
			return 0
		}
	case opRemoveLink:
		found := false
		for _, x := range ls {
			found = found || x == l
		}
		if !found {
			return 0
		}
	}
	t.apply(op, id, l)
	t.pending = appendRecord(t.pending, op, id, l)
	t.seq++
	return t.seq
}

// sync writes every record up to seq to the log file before the caller replies. A write(2)
// is enough for a SIGKILL (the page cache outlives the process); fsync, which a power loss
// needs, is batched by durable: at every COMMIT and FILE_SYNC write of the board and once a
// second, the same promise the board's own file data gets. An fsync per new handle would
// cost a disk flush per LOOKUP.
func (t *handleTable) sync(seq uint64) error {
	if seq == 0 {
		return nil
	}
	t.syncMu.Lock()
	defer t.syncMu.Unlock()
	return t.writeLocked(seq)
}

func (t *handleTable) writeLocked(seq uint64) error {
	if t.synced >= seq {
		return nil
	}
	t.mu.Lock()
	buf, upto := t.pending, t.seq
	t.pending = nil
	t.mu.Unlock()
	if t.f == nil {
		return errors.New("handle table closed")
	}
	if _, err := t.f.Write(buf); err != nil {
		return fmt.Errorf("handle table: %w", err)
	}
	t.mu.Lock()
	t.records += int(upto - t.synced)
	t.mu.Unlock()
	t.synced = upto
	t.dirty = true
	return nil
}

// durable writes and fsyncs everything recorded so far.
func (t *handleTable) durable() error {
	t.syncMu.Lock()
	defer t.syncMu.Unlock()
	t.mu.Lock()
	seq := t.seq
	t.mu.Unlock()
	if err := t.writeLocked(seq); err != nil {
		return err
	}
	if !t.dirty || t.f == nil {
		return nil
	}
	if err := t.f.Sync(); err != nil {
		return fmt.Errorf("handle table: %w", err)
	}
	t.dirty = false
	return nil
}

// linksOf returns a copy of the names fileid is known by.
func (t *handleTable) linksOf(id uint64) []link {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]link(nil), t.links[id]...)
}

// dirPath walks the parents of a directory up to root; false if the chain breaks.
func (t *handleTable) dirPath(id, root uint64) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dirPathLocked(id, root)
}

func (t *handleTable) dirPathLocked(id, root uint64) (string, bool) {
	var names []string
	for depth := 0; id != root; depth++ {
		ls := t.links[id]
		if len(ls) == 0 || depth > maxDepth {
			return "", false
		}
		names = append(names, ls[0].name)
		id = ls[0].parent
	}
	p := "/"
	for i := len(names) - 1; i >= 0; i-- {
		p = joinPath(p, names[i])
	}
	return p, true
}

// candidates lists the paths that may name fileid now; the caller verifies each with
// Lstat, since another client could have changed the tree behind the table.
func (t *handleTable) candidates(id, root uint64) []string {
	if id == root {
		return []string{"/"}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, l := range t.links[id] {
		if dir, ok := t.dirPathLocked(l.parent, root); ok {
			out = append(out, joinPath(dir, l.name))
		}
	}
	return out
}

func (t *handleTable) close() error {
	t.syncMu.Lock()
	defer t.syncMu.Unlock()
	if t.f == nil {
		return nil
	}
	t.mu.Lock()
	buf := t.pending
	t.pending = nil
	t.mu.Unlock()
	_, werr := t.f.Write(buf)
	serr := t.f.Sync()
	cerr := t.f.Close()
	t.f = nil
	return errors.Join(werr, serr, cerr)
}

// joinPath joins a directory path from dirPath with one name.
func joinPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}
