package nfsroot

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// The handle table maps an overlay FileID to the names it is known by, (parent FileID,
// name), so a handle that carries only the FileID can be turned back into a path after a
// restart, a rename of any parent or a copy-up. It lives in the board's state dir as an
// append-only log; a record is written before the reply that hands out its handle, which
// is what keeps handles valid across a SIGKILL.
//
// Log format 2: the 8-byte header tableMagic, then records framed so replay can resync
// past a damaged one: 0xF7 0x5A, u16 body length, body (op, FileID u64, parent u64, name),
// CRC-32C of length and body. A torn or corrupt record is skipped and the good records
// after it are kept. Format 1 (bare bodies with a one-byte name length, no header) is
// still read and rewritten as format 2.

const (
	tableFile    = "handles.log"
	instanceFile = "instance"

	opAddLink    = 1 // fileid is also known as (parent, name)
	opRemoveLink = 2 // (parent, name) no longer names fileid
	opOnlyLink   = 3 // fileid (a directory) is now known only as (parent, name)

	maxDepth = 4096 // a path deeper than this is treated as a loop in the table

	tableMagic = "PFHLOG2\n"
	recMagic0  = 0xF7
	recMagic1  = 0x5A
	recHeader  = 4  // magic + u16 body length
	recFixed   = 17 // op + FileID + parent
	recMax     = recHeader + recFixed + maxNameLen + 4
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

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
	off    int64 // end of the last whole record in f: where the next write goes

	skipped int // damaged records replay skipped, for the log line
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
	good, migrate, err := t.replay(f)
	if err != nil {
		f.Close()
		return nil, inst, fmt.Errorf("handle table %s: %w", path, err)
	}
	// A torn last record (killed mid-append) is cut off so new records follow good ones.
	if err := f.Truncate(good); err != nil {
		f.Close()
		return nil, inst, fmt.Errorf("handle table %s: truncate: %w", path, err)
	}
	if good == 0 {
		if _, err := f.WriteAt([]byte(tableMagic), 0); err != nil {
			f.Close()
			return nil, inst, fmt.Errorf("handle table %s: %w", path, err)
		}
		good = int64(len(tableMagic))
	}
	t.f, t.off = f, good
	if migrate || t.records > 2*t.liveLinks()+1024 {
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

// replay applies the log and returns the offset after the last whole record, and whether
// the log is in the old format (to be rewritten).
func (t *handleTable) replay(f *os.File) (int64, bool, error) {
	r := bufio.NewReaderSize(f, 256<<10)
	head, err := r.Peek(len(tableMagic))
	switch {
	case err == nil && string(head) == tableMagic:
	case len(head) == 0 || (err != nil && string(head) == tableMagic[:len(head)]):
		return 0, false, nil // new, or torn while its header was written
	default:
		good := t.replayV1(r)
		return good, good > 0, nil
	}
	_, _ = r.Discard(len(tableMagic))
	off := int64(len(tableMagic))
	good := off
	damaged := false
	for {
		rec, err := r.Peek(recHeader)
		if len(rec) < recHeader {
			if err != nil && !errors.Is(err, io.EOF) {
				return 0, false, err
			}
			return good, false, nil // EOF, or a torn header at the end
		}
		if op, id, l, n, ok := t.parseRecord(r); ok {
			t.apply(op, id, l)
			t.records++
			_, _ = r.Discard(n)
			off += int64(n)
			good = off
			damaged = false
			continue
		}
		// Torn or corrupt: skip a byte and look for the next record, so good records
		// written after it (after a short write, say) are not lost.
		if !damaged {
			t.skipped++
			damaged = true
		}
		_, _ = r.Discard(1)
		off++
	}
}

// parseRecord checks the record at the reader's position without consuming it.
func (t *handleTable) parseRecord(r *bufio.Reader) (op byte, id uint64, l link, n int, ok bool) {
	hdr, _ := r.Peek(recHeader)
	if hdr[0] != recMagic0 || hdr[1] != recMagic1 {
		return 0, 0, link{}, 0, false
	}
	size := int(binary.BigEndian.Uint16(hdr[2:]))
	if size <= recFixed || size > recFixed+maxNameLen {
		return 0, 0, link{}, 0, false
	}
	n = recHeader + size + 4
	rec, _ := r.Peek(n)
	if len(rec) < n {
		return 0, 0, link{}, 0, false
	}
	if crc32.Checksum(rec[2:n-4], crcTable) != binary.BigEndian.Uint32(rec[n-4:]) {
		return 0, 0, link{}, 0, false
	}
	body := rec[recHeader : n-4]
	op = body[0]
	if op < opAddLink || op > opOnlyLink {
		return 0, 0, link{}, 0, false
	}
	id = binary.BigEndian.Uint64(body[1:9])
	l = link{parent: binary.BigEndian.Uint64(body[9:17]), name: string(body[recFixed:])}
	return op, id, l, n, true
}

// replayV1 reads a format 1 log, up to its first damaged record (format 1 cannot resync).
func (t *handleTable) replayV1(r *bufio.Reader) int64 {
	var off int64
	var hdr [18]byte
	name := make([]byte, 255)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return off // EOF or torn header
		}
		n := int(hdr[17])
		if _, err := io.ReadFull(r, name[:n]); err != nil {
			return off
		}
		op := hdr[0]
		id := binary.BigEndian.Uint64(hdr[1:9])
		l := link{parent: binary.BigEndian.Uint64(hdr[9:17]), name: string(name[:n])}
		if op < opAddLink || op > opOnlyLink || n == 0 {
			return off // garbage tail: treat like a torn write
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
	buf := []byte(tableMagic)
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
	t.f.Close()
	t.f, t.off = f, int64(len(buf))
	t.records = n
	return nil
}

// appendRecord appends one framed record (format 2).
func appendRecord(b []byte, op byte, id uint64, l link) []byte {
	start := len(b)
	b = append(b, recMagic0, recMagic1)
	b = binary.BigEndian.AppendUint16(b, uint16(recFixed+len(l.name)))
	b = append(b, op)
	b = binary.BigEndian.AppendUint64(b, id)
	b = binary.BigEndian.AppendUint64(b, l.parent)
	b = append(b, l.name...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start+2:], crcTable))
}

// record changes the table and queues the log record; it returns the sequence number to
// pass to sync before the change may be relied on by a client. Known links cost nothing,
// unless records are still waiting to be written (a write failed, say on a full disk):
// the known link may be among them, so the caller must get them written first.
func (t *handleTable) record(op byte, id uint64, l link) uint64 {
	if len(l.name) == 0 || len(l.name) > maxNameLen {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	known := t.seq
	if len(t.pending) == 0 {
		known = 0
	}
	ls := t.links[id]
	switch op {
	case opAddLink:
		for _, x := range ls {
			if x == l {
				return known
			}
		}
	case opOnlyLink:
		if len(ls) == 1 && ls[0] == l {
			return known
		}
	case opRemoveLink:
		found := false
		for _, x := range ls {
			found = found || x == l
		}
		if !found {
			return known
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
	if t.f == nil {
		return errors.New("handle table closed")
	}
	t.mu.Lock()
	buf, upto := t.pending, t.seq
	t.mu.Unlock()
	// Records stay pending until they are in the file: a failed write (a full disk) is
	// retried by the next sync, and a known link is not trusted before (see record).
	// record appends to pending only beyond buf, so buf is not changed meanwhile.
	if n, err := t.f.WriteAt(buf, t.off); err != nil {
		if n > 0 {
			// Cut the partial record: the next write goes to t.off anyway, and a restart
			// before it should find the log ending on a whole record.
			_ = t.f.Truncate(t.off)
		}
		return fmt.Errorf("handle table: %w", err)
	}
	t.off += int64(len(buf))
	t.mu.Lock()
	if len(t.pending) == len(buf) {
		t.pending = t.pending[:0]
	} else {
		t.pending = append([]byte(nil), t.pending[len(buf):]...)
	}
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
	seq := t.seq
	t.mu.Unlock()
	werr := t.writeLocked(seq)
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
