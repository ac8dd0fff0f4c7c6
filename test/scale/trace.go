package scale

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The NFS workload is a CAPTURED boot: testdata/bookworm-boot.trace.gz holds the NFS and
// NFS_ACL calls one board made while booting stock Debian bookworm in the QEMU e2e
// (TestDistroBookworm), from its MNT to its login prompt, in the order they arrived, with
// every file handle turned into the path it stood for, each call's AUTH_SYS credential and
// which earlier calls had been answered when it arrived, and the metadata (type, mode,
// owner, size, link target) of every image file the boot looked at or listed. The
// simulator builds an image tree from that metadata and replays the calls per board with
// the captured concurrency (trace_replay.go). How to capture a new one: README.md, "Scale".

// traceFile is the trace the simulator replays, relative to this package.
const traceFile = "testdata/bookworm-boot.trace.gz"

// traceMagic is the first line of a trace file.
const traceMagic = "pifleet-nfs-trace 2"

// rawTraceVersion is the record version of the server's PIFLEET_NFS_TRACE file that
// readRawTrace reads (server/nfstrace.go).
const rawTraceVersion = 2

// Procedure numbers of NFSv3 (RFC 1813) that the trace holds.
var nfsProcs = map[string]uint32{"getattr": 1, "setattr": 2, "lookup": 3, "access": 4, "readlink": 5, "read": 6,
	"write": 7, "create": 8, "mkdir": 9, "symlink": 10, "mknod": 11, "remove": 12, "rmdir": 13, "rename": 14,
	"link": 15, "readdir": 16, "readdirplus": 17, "fsstat": 18, "fsinfo": 19, "pathconf": 20, "commit": 21}

// aclProcs are the NFS_ACL v3 procedures (program 100227, Linux's nfsacl.h) the trace holds.
var aclProcs = map[string]uint32{"getacl": 1, "setacl": 2}

// procNames and aclProcNames invert nfsProcs and aclProcs.
var procNames, aclProcNames = invert(nfsProcs), invert(aclProcs)

func invert(m map[string]uint32) map[uint32]string {
	r := map[uint32]string{}
	for k, v := range m {
		r[v] = k
	}
	return r
}

// NFSv3 file types (ftype3).
const (
	nf3Reg = 1
	nf3Dir = 2
	nf3Lnk = 5
)

// treeEntry is one file of the image the trace ran on.
type treeEntry struct {
	typ      uint32 // nf3Reg, nf3Dir, nf3Lnk (others are skipped)
	mode     uint32 // permission bits with setuid, setgid and sticky
	uid, gid uint32
	size     int64  // regular files
	target   string // symlinks ("" when the boot never read it)
}

// traceCred is a caller's AUTH_SYS identity.
type traceCred struct {
	uid, gid uint32
	gids     []uint32
}

// traceOp is one call: its program (NFS or NFS_ACL) and procedure, the status the real
// server answered, the caller's credential (an index into Trace.creds), the earlier calls
// (indexes) that were answered when it arrived and had not been when the call before it
// arrived, the path of its (first) handle or, for procedures that take a directory and a
// name, the path they name; path2 is RENAME's and LINK's target; tail is the arguments
// after those (XDR), for WRITE without the data (offset, count, stable).
type traceOp struct {
	prog   uint32
	proc   uint32
	status uint32
	cred   int
	after  []int
	path   string
	path2  string
	tail   []byte
}

// name is the procedure's name in the trace ("getattr", "getacl").
func (op traceOp) name() string {
	if op.prog == progACL {
		return aclProcNames[op.proc]
	}
	return procNames[op.proc]
}

// Trace is a captured boot: the image tree it saw and its calls, in the order they came.
// Call i was sent once every call in ops[k].after for k <= i had been answered: the calls
// answered before it arrived in the capture. So calls that overlapped there overlap in
// the replay, at most maxInFlight at once.
type Trace struct {
	Comment     string
	tree        map[string]treeEntry
	ops         []traceOp
	creds       []traceCred
	read        map[string]bool // files the boot READs: written with content, the rest sparse
	maxInFlight int             // the most calls the capture had outstanding at once
}

// MaxInFlight is the most calls the captured boot had outstanding at once.
func (t *Trace) MaxInFlight() int { return t.maxInFlight }

// Files is the number of entries in the trace's image tree.
func (t *Trace) Files() int { return len(t.tree) }

// Steps is the number of calls the trace replays per board.
func (t *Trace) Steps() int { return len(t.ops) }

// LoadTrace reads a trace file (gzip).
func LoadTrace(p string) (*Trace, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("trace %s: %w", p, err)
	}
	t, err := parseTrace(zr)
	if err != nil {
		return nil, fmt.Errorf("trace %s: %w", p, err)
	}
	return t, nil
}

// parseTrace reads a trace's text: the magic line, "# comment" lines, then one record a
// line: "d PATH MODE OWNER", "f PATH MODE OWNER SIZE [r]", "l PATH OWNER TARGET" (OWNER is
// "UID:GID", MODE octal), or "PROC STATUS CRED WAIT PATH [PATH2] [HEXTAIL]" for a call:
// CRED is "UID:GID[:GID,GID...]", WAIT "-" or the comma-separated distances back to the
// earlier calls it waits for (traceOp.after), PATH2 for rename and link. Paths are
// Go-quoted when they hold anything but printable ASCII without spaces.
func parseTrace(r io.Reader) (*Trace, error) {
	t := &Trace{tree: map[string]treeEntry{}, read: map[string]bool{}}
	credIndex := map[string]int{}
	var waited []bool // per call: another call waits for it
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	if !sc.Scan() || sc.Text() != traceMagic {
		return nil, errors.New("not a pifleet NFS trace (version 2)")
	}
	for n := 2; sc.Scan(); n++ {
		line := sc.Text()
		if c, ok := strings.CutPrefix(line, "# "); ok {
			t.Comment += c + "\n"
			continue
		}
		f := strings.Fields(line)
		bad := func(err error) error { return fmt.Errorf("line %d %q: %w", n, line, err) }
		if len(f) < 3 {
			return nil, bad(errors.New("too few fields"))
		}
		if len(f[0]) == 1 {
			p, err := unquotePath(f[1])
			if err != nil {
				return nil, bad(err)
			}
			e, err := parseTreeEntry(f)
			if err != nil {
				return nil, bad(err)
			}
			if f[0] == "f" && len(f) > 5 && f[5] == "r" {
				t.read[p] = true
			}
			t.tree[p] = e
			continue
		}
		if len(f) < 5 {
			return nil, bad(errors.New("too few fields for a call"))
		}
		op := traceOp{prog: progNFS}
		var ok bool
		if op.proc, ok = nfsProcs[f[0]]; !ok {
			if op.proc, ok = aclProcs[f[0]]; !ok {
				return nil, bad(errors.New("unknown procedure"))
			}
			op.prog = progACL
		}
		st, err := strconv.ParseUint(f[1], 10, 32)
		if err != nil {
			return nil, bad(err)
		}
		op.status = uint32(st)
		cr, err := parseCred(f[2])
		if err != nil {
			return nil, bad(err)
		}
		i, ok := credIndex[f[2]]
		if !ok {
			i = len(t.creds)
			credIndex[f[2]] = i
			t.creds = append(t.creds, cr)
		}
		op.cred = i
		if f[3] != "-" {
			for _, w := range strings.Split(f[3], ",") {
				d, err := strconv.Atoi(w)
				if err != nil || d < 1 || d > len(t.ops) || waited[len(t.ops)-d] {
					return nil, bad(fmt.Errorf("wait %q: not an earlier call nobody waited for yet", w))
				}
				op.after = append(op.after, len(t.ops)-d)
				waited[len(t.ops)-d] = true
			}
		}
		rest := f[4:]
		if op.path, err = unquotePath(rest[0]); err != nil {
			return nil, bad(err)
		}
		rest = rest[1:]
		if op.prog == progNFS && (op.proc == nfsProcs["rename"] || op.proc == nfsProcs["link"]) {
			if len(rest) == 0 {
				return nil, bad(errors.New("no second path"))
			}
			if op.path2, err = unquotePath(rest[0]); err != nil {
				return nil, bad(err)
			}
			rest = rest[1:]
		}
		if len(rest) > 0 {
			if op.tail, err = hex.DecodeString(rest[0]); err != nil {
				return nil, bad(err)
			}
		}
		t.ops = append(t.ops, op)
		waited = append(waited, false)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(t.ops) == 0 {
		return nil, errors.New("no calls")
	}
	t.maxInFlight = inFlight(t.ops)
	return t, nil
}

// inFlight is the most calls outstanding at once when each call is sent as soon as the
// calls it waits for were answered, and the calls it does not wait for are not yet.
func inFlight(ops []traceOp) int {
	most, answered := 0, 0
	for i, op := range ops {
		answered += len(op.after)
		most = max(most, i+1-answered)
	}
	return most
}

// parseTreeEntry reads a "d", "f" or "l" record's fields.
func parseTreeEntry(f []string) (treeEntry, error) {
	var e treeEntry
	var err error
	switch f[0] {
	case "d", "f":
		if len(f) < 4 {
			return e, errors.New("no owner")
		}
		mode, err := strconv.ParseUint(f[2], 8, 32)
		if err != nil || mode > 0o7777 {
			return e, fmt.Errorf("mode %q", f[2])
		}
		e.typ, e.mode = nf3Dir, uint32(mode)
		if e.uid, e.gid, err = parseOwner(f[3]); err != nil {
			return e, err
		}
		if f[0] == "f" {
			if len(f) < 5 {
				return e, errors.New("no size")
			}
			e.typ = nf3Reg
			if e.size, err = strconv.ParseInt(f[4], 10, 64); err != nil || e.size < 0 || e.size > 1<<30 {
				return e, fmt.Errorf("size %q", f[4])
			}
		}
	case "l":
		if len(f) < 4 {
			return e, errors.New("no target")
		}
		e.typ, e.mode = nf3Lnk, 0o777
		if e.uid, e.gid, err = parseOwner(f[2]); err != nil {
			return e, err
		}
		if e.target, err = unquotePath(f[3]); err != nil {
			return e, err
		}
	default:
		return e, errors.New("unknown record")
	}
	return e, nil
}

// parseOwner reads "UID:GID".
func parseOwner(s string) (uid, gid uint32, err error) {
	u, g, ok := strings.Cut(s, ":")
	a, err1 := strconv.ParseUint(u, 10, 32)
	b, err2 := strconv.ParseUint(g, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("owner %q", s)
	}
	return uint32(a), uint32(b), nil
}

// parseCred reads "UID:GID" or "UID:GID:GID,GID...".
func parseCred(s string) (traceCred, error) {
	var c traceCred
	f := strings.SplitN(s, ":", 3)
	if len(f) < 2 {
		return c, fmt.Errorf("credential %q", s)
	}
	var err error
	if c.uid, c.gid, err = parseOwner(f[0] + ":" + f[1]); err != nil {
		return c, fmt.Errorf("credential: %w", err)
	}
	if len(f) == 3 {
		for _, g := range strings.Split(f[2], ",") {
			v, err := strconv.ParseUint(g, 10, 32)
			if err != nil || len(c.gids) == 16 {
				return c, fmt.Errorf("credential %q: groups", s)
			}
			c.gids = append(c.gids, uint32(v))
		}
	}
	return c, nil
}

// String is the credential as parseCred reads it.
func (c traceCred) String() string {
	s := fmt.Sprintf("%d:%d", c.uid, c.gid)
	for i, g := range c.gids {
		sep := ","
		if i == 0 {
			sep = ":"
		}
		s += fmt.Sprintf("%s%d", sep, g)
	}
	return s
}

// quotePath writes p as one field.
func quotePath(p string) string {
	for i := 0; i < len(p); i++ {
		if p[i] <= ' ' || p[i] > '~' || p[i] == '"' {
			return strconv.Quote(p)
		}
	}
	return p
}

func unquotePath(s string) (string, error) {
	if strings.HasPrefix(s, `"`) {
		return strconv.Unquote(s)
	}
	return s, nil
}

// Write writes the trace as parseTrace reads it (not compressed).
func (t *Trace) Write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, traceMagic)
	for _, c := range strings.Split(strings.TrimSpace(t.Comment), "\n") {
		fmt.Fprintf(bw, "# %s\n", c)
	}
	paths := make([]string, 0, len(t.tree))
	for p := range t.tree {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		e := t.tree[p]
		switch e.typ {
		case nf3Dir:
			fmt.Fprintf(bw, "d %s %o %d:%d\n", quotePath(p), e.mode, e.uid, e.gid)
		case nf3Reg:
			r := ""
			if t.read[p] {
				r = " r"
			}
			fmt.Fprintf(bw, "f %s %o %d:%d %d%s\n", quotePath(p), e.mode, e.uid, e.gid, e.size, r)
		case nf3Lnk:
			target := e.target
			if target == "" {
				target = "unknown-target"
			}
			fmt.Fprintf(bw, "l %s %d:%d %s\n", quotePath(p), e.uid, e.gid, quotePath(target))
		}
	}
	for i, op := range t.ops {
		wait := "-"
		if len(op.after) > 0 {
			d := make([]string, len(op.after))
			for k, j := range op.after {
				d[k] = strconv.Itoa(i - j)
			}
			wait = strings.Join(d, ",")
		}
		fmt.Fprintf(bw, "%s %d %s %s %s", op.name(), op.status, t.creds[op.cred], wait, quotePath(op.path))
		if op.path2 != "" {
			fmt.Fprintf(bw, " %s", quotePath(op.path2))
		}
		if len(op.tail) > 0 {
			fmt.Fprintf(bw, " %x", op.tail)
		}
		fmt.Fprintln(bw)
	}
	return bw.Flush()
}

// WriteTree lays the trace's image tree out under root: directories and symlinks as
// they were, owners and modes too, regular files at their sizes (the files the boot reads
// hold filler, the others are sparse: only their size and listing matter).
func (t *Trace) WriteTree(root string) error {
	paths := make([]string, 0, len(t.tree))
	for p := range t.tree {
		paths = append(paths, p)
	}
	slices.Sort(paths) // parents before children
	filler := make([]byte, 1<<20)
	for i := range filler {
		filler[i] = byte(i*7 + i>>9)
	}
	for _, p := range paths {
		e := t.tree[p]
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return fmt.Errorf("trace tree: %w", err)
		}
		var err error
		switch e.typ {
		case nf3Dir:
			err = os.MkdirAll(full, 0o755)
		case nf3Lnk:
			err = os.Symlink(e.target, full)
		case nf3Reg:
			err = writeSized(full, e.size, t.read[p], filler)
		}
		// The owner as captured (the replay's callers are not all root, and the server
		// checks their permissions), then the mode with its setuid, setgid and sticky bits
		// (raw: os.Chmod would drop them; after the chown, which clears setuid).
		if err == nil {
			err = os.Lchown(full, int(e.uid), int(e.gid))
		}
		if err == nil && e.typ != nf3Lnk {
			err = syscall.Chmod(full, e.mode&0o7777)
		}
		if err != nil {
			return fmt.Errorf("trace tree %s: %w", p, err)
		}
	}
	return nil
}

// writeSized creates p with size bytes: filler when content, else a hole.
func writeSized(p string, size int64, content bool, filler []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	for off := int64(0); content && off < size; off += int64(len(filler)) {
		if _, err := f.Write(filler[:min(int64(len(filler)), size-off)]); err != nil {
			f.Close()
			return err
		}
	}
	if !content {
		err = f.Truncate(size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// rawCall is one record of the server's PIFLEET_NFS_TRACE file (server/nfstrace.go).
type rawCall struct {
	arrived, at time.Time // the call's arrival and its reply
	prog, proc  uint32
	cred        traceCred
	board       string
	args, reply []byte
}

// readRawTrace reads a PIFLEET_NFS_TRACE file; a truncated last record is dropped.
func readRawTrace(r io.Reader) ([]rawCall, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	var calls []rawCall
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return calls, nil
			}
			return nil, err
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > 8<<20 {
			return nil, fmt.Errorf("raw trace: record of %d bytes", n)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return calls, nil
		}
		d := &dec{b: b}
		if v := d.u32(); v != rawTraceVersion {
			return nil, fmt.Errorf("raw trace: record %d has version %d, not %d (captured by an older server? capture again)", len(calls), v, rawTraceVersion)
		}
		c := rawCall{arrived: time.Unix(0, int64(d.u64())), at: time.Unix(0, int64(d.u64())), prog: d.u32(), proc: d.u32()}
		c.cred.uid, c.cred.gid = d.u32(), d.u32()
		ngids := d.u32()
		if ngids > 16 {
			return nil, fmt.Errorf("raw trace: record %d: %d groups", len(calls), ngids)
		}
		for range ngids {
			c.cred.gids = append(c.cred.gids, d.u32())
		}
		c.board = string(d.take(int(d.u32())))
		c.args = d.take(int(d.u32()))
		c.reply = d.take(int(d.u32()))
		if d.err != nil {
			return nil, fmt.Errorf("raw trace: record %d: %w", len(calls), d.err)
		}
		calls = append(calls, c)
	}
}

// attr is the part of an fattr3 the tree keeps.
type attr struct {
	typ, mode, uid, gid uint32
	size                uint64
}

func (d *dec) attr() attr {
	a := attr{typ: d.u32(), mode: d.u32()}
	d.u32() // nlink
	a.uid, a.gid = d.u32(), d.u32()
	a.size = d.u64()
	d.take(84 - 28) // used, rdev, fsid, fileid, atime, mtime, ctime
	return a
}

func (d *dec) postAttr() (attr, bool) {
	if d.u32() == 0 {
		return attr{}, false
	}
	return d.attr(), true
}

// pad4 is n rounded up to XDR's 4 bytes.
func pad4(n int) int { return (n + 3) &^ 3 }

// converter turns one board's raw calls into a Trace.
type converter struct {
	t       *Trace
	paths   map[string]string // handle -> path
	created map[string]bool   // paths the boot made (not in the image)
	skipped map[string]int    // why calls were left out
	creds   map[string]int    // credential -> index in t.creds
}

// convertTrace makes a Trace of board's calls that arrived from its MNT of /boards/<board>
// until span after it (0: to the end), in the order they arrived (the raw file has them
// in the order they were answered).
func convertTrace(calls []rawCall, board string, span time.Duration) (*Trace, error) {
	c := &converter{t: &Trace{tree: map[string]treeEntry{}, read: map[string]bool{}},
		paths: map[string]string{}, created: map[string]bool{}, skipped: map[string]int{}, creds: map[string]int{}}
	var start time.Time
	var mine []rawCall
	for _, rc := range calls {
		if rc.prog == progMount && rc.proc == 1 && start.IsZero() {
			d := &dec{b: rc.args}
			if string(d.opaque()) != "/boards/"+board {
				continue
			}
			r := &dec{b: rc.reply[min(len(rc.reply), 28):]}
			if r.u32() != 0 {
				continue
			}
			fh := r.opaque()
			if r.err != nil {
				return nil, fmt.Errorf("MNT reply: %w", r.err)
			}
			c.paths[string(fh)] = "/"
			start = rc.at
			continue
		}
		if start.IsZero() || rc.board != board || rc.arrived.Before(start) {
			continue
		}
		if span > 0 && rc.arrived.Sub(start) > span {
			continue
		}
		mine = append(mine, rc)
	}
	if start.IsZero() {
		return nil, fmt.Errorf("no MNT of /boards/%s in the trace", board)
	}
	slices.SortStableFunc(mine, func(a, b rawCall) int { return a.arrived.Compare(b.arrived) })
	var kept []rawCall
	for _, rc := range mine {
		if (rc.prog != progNFS && rc.prog != progACL) || rc.proc == 0 {
			c.skipped[fmt.Sprintf("program %d procedure %d", rc.prog, rc.proc)]++
			continue
		}
		if err := c.add(rc); err != nil {
			c.skipped[err.Error()]++
			continue
		}
		kept = append(kept, rc)
	}
	dependencies(c.t.ops, kept)
	c.t.maxInFlight = inFlight(c.t.ops)
	c.t.tree["/"] = treeEntry{typ: nf3Dir, mode: 0o755}
	for p := range c.t.read {
		if e, ok := c.t.tree[p]; !ok || e.typ != nf3Reg {
			delete(c.t.read, p)
		}
	}
	var why []string
	for k, n := range c.skipped {
		why = append(why, fmt.Sprintf("%d × %s", n, k))
	}
	slices.Sort(why)
	if len(why) > 0 {
		c.t.Comment = "left out: " + strings.Join(why, "; ")
	}
	return c.t, nil
}

// dependencies fills ops[i].after from the capture's times (calls[i] is ops[i], in order
// of arrival): call i waits for the calls answered before it arrived and after the call
// before it arrived (those answered earlier, call i-1 already waited for).
func dependencies(ops []traceOp, calls []rawCall) {
	byReply := make([]int, len(calls))
	for i := range byReply {
		byReply[i] = i
	}
	slices.SortStableFunc(byReply, func(a, b int) int { return calls[a].at.Compare(calls[b].at) })
	next := 0
	for i := range ops {
		for next < len(byReply) && calls[byReply[next]].at.Before(calls[i].arrived) {
			if j := byReply[next]; j < i { // always, unless a record's clock went backwards
				ops[i].after = append(ops[i].after, j)
			}
			next++
		}
		slices.Sort(ops[i].after)
	}
}

// see records p's attributes as the image's, unless the boot made p or it is known.
func (c *converter) see(p string, a attr) {
	if c.created[p] {
		return
	}
	if _, ok := c.t.tree[p]; ok {
		return
	}
	switch a.typ {
	case nf3Reg, nf3Dir, nf3Lnk:
		c.t.tree[p] = treeEntry{typ: a.typ, mode: a.mode & 0o7777, uid: a.uid, gid: a.gid, size: int64(a.size)}
	}
}

// add converts one NFS or NFS_ACL call.
func (c *converter) add(rc rawCall) error {
	op := traceOp{prog: rc.prog, proc: rc.proc}
	name := op.name()
	if name == "" {
		return fmt.Errorf("program %d procedure %d", rc.prog, rc.proc)
	}
	if len(rc.reply) < 32 {
		return fmt.Errorf("%s without a status", name)
	}
	if binary.BigEndian.Uint32(rc.reply[12:]) != 0 || binary.BigEndian.Uint32(rc.reply[24:]) != 0 {
		return fmt.Errorf("%s refused at the RPC level", name)
	}
	st := binary.BigEndian.Uint32(rc.reply[28:])
	r := &dec{b: rc.reply[32:]}
	a := &dec{b: rc.args}
	fh := a.opaque()
	p, known := c.paths[string(fh)]
	if a.err != nil || !known {
		return fmt.Errorf("%s on a handle the trace never saw", name)
	}
	op.status, op.path = st, p
	key := rc.cred.String()
	i, ok := c.creds[key]
	if !ok {
		i = len(c.t.creds)
		c.creds[key] = i
		c.t.creds = append(c.t.creds, rc.cred)
	}
	op.cred = i
	if rc.prog == progACL { // GETACL, SETACL: the handle, then a mask and the ACLs
		op.tail = append([]byte(nil), a.b...)
		c.t.ops = append(c.t.ops, op)
		return nil
	}
	switch rc.proc {
	case 3, 8, 9, 10, 11, 12, 13, 14: // diropargs first
		n := string(a.opaque())
		if a.err != nil || n == "" || strings.Contains(n, "/") {
			return fmt.Errorf("%s with a bad name", name)
		}
		op.path = path.Join(p, n)
	}
	switch rc.proc {
	case 14: // RENAME: to diropargs
		fh2 := a.opaque()
		p2, ok := c.paths[string(fh2)]
		n := string(a.opaque())
		if !ok || a.err != nil {
			return errors.New("rename to a handle the trace never saw")
		}
		op.path2 = path.Join(p2, n)
	case 15: // LINK: file, then diropargs
		fh2 := a.opaque()
		p2, ok := c.paths[string(fh2)]
		n := string(a.opaque())
		if !ok || a.err != nil {
			return errors.New("link into a handle the trace never saw")
		}
		op.path2 = path.Join(p2, n)
	case 7: // WRITE: offset, count, stable; the data is made up again
		b := a.take(16)
		if a.err != nil {
			return errors.New("write with short arguments")
		}
		op.tail = append([]byte(nil), b...)
	default:
		op.tail = append([]byte(nil), a.b...)
	}
	// What the reply tells about the tree and the handles.
	if st == 0 {
		switch rc.proc {
		case 1: // GETATTR
			c.see(p, r.attr())
		case 3: // LOOKUP
			h := r.opaque()
			if oa, ok := r.postAttr(); ok && r.err == nil {
				c.see(op.path, oa)
			}
			if r.err == nil {
				c.paths[string(h)] = op.path
			}
		case 5: // READLINK
			r.postAttr()
			target := string(r.opaque())
			if e, ok := c.t.tree[p]; ok && e.typ == nf3Lnk && r.err == nil && e.target == "" {
				e.target = target
				c.t.tree[p] = e
			}
		case 6: // READ
			c.t.read[p] = true
		case 8, 9, 10, 11: // CREATE, MKDIR, SYMLINK, MKNOD
			if _, ok := c.t.tree[op.path]; !ok {
				c.created[op.path] = true
			}
			if r.u32() != 0 {
				h := r.opaque()
				if r.err == nil {
					c.paths[string(h)] = op.path
				}
			}
		case 14: // RENAME: handles under the old name now stand for the new one
			c.created[op.path2] = true
			for h, q := range c.paths {
				if q == op.path || strings.HasPrefix(q, op.path+"/") {
					c.paths[h] = op.path2 + q[len(op.path):]
				}
			}
		case 15:
			c.created[op.path2] = true
		case 16, 17: // READDIR(PLUS): every entry is in the image's listing
			r.postAttr()
			r.take(8) // verifier
			for r.u32() != 0 && r.err == nil {
				r.u64()
				n := string(r.opaque())
				r.u64()
				if rc.proc == 16 {
					if n != "." && n != ".." {
						c.see(path.Join(p, n), attr{typ: nf3Reg, mode: 0o644}) // type unknown: a file
					}
					continue
				}
				ea, hasAttr := r.postAttr()
				var h []byte
				if r.u32() != 0 {
					h = r.opaque()
				}
				if r.err != nil || n == "." || n == ".." || n == "" || strings.Contains(n, "/") {
					continue
				}
				q := path.Join(p, n)
				if hasAttr {
					c.see(q, ea)
				}
				if h != nil {
					c.paths[string(h)] = q
				}
			}
		}
	}
	c.t.ops = append(c.t.ops, op)
	return nil
}
