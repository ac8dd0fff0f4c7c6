package scale

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Capturing a boot trace (README.md, "Scale"): the QEMU e2e with PIFLEET_NFS_TRACE set
// writes the server's raw trace; this test, with PIFLEET_SIM_RAWTRACE naming it, turns
// one board's boot into testdata/bookworm-boot.trace.gz.
const (
	rawTraceEnv   = "PIFLEET_SIM_RAWTRACE"    // the server's PIFLEET_NFS_TRACE file
	traceBoardEnv = "PIFLEET_SIM_TRACE_BOARD" // the board whose boot to keep (board1)
	traceSpanEnv  = "PIFLEET_SIM_TRACE_SPAN"  // how long after its MNT (the e2e's login prompt)
)

// TestMakeBootTrace converts a raw capture into the trace file; without
// PIFLEET_SIM_RAWTRACE it has nothing to do.
func TestMakeBootTrace(t *testing.T) {
	raw := os.Getenv(rawTraceEnv)
	if raw == "" {
		// A regeneration tool, not a check (TestTraceFile checks the committed trace):
		// nothing is missing when it is not asked for, so this is no skip.
		t.Log("set " + rawTraceEnv + " to a PIFLEET_NFS_TRACE capture to regenerate " + traceFile)
		return
	}
	board := os.Getenv(traceBoardEnv)
	if board == "" {
		board = "board1"
	}
	var span time.Duration
	if v := os.Getenv(traceSpanEnv); v != "" {
		var err error
		if span, err = time.ParseDuration(v); err != nil {
			t.Fatalf("%s: %v", traceSpanEnv, err)
		}
	}
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	calls, err := readRawTrace(f)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := convertTrace(calls, board, span)
	if err != nil {
		t.Fatal(err)
	}
	note := fmt.Sprintf("board %s of TestDistroBookworm (stock Debian bookworm arm64, systemd), from its MNT", board)
	if span > 0 {
		note += fmt.Sprintf(" to %s after it (the login prompt)", span)
	}
	tr.Comment = note + "\n" + tr.Comment
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err := tr.Write(zw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(traceFile, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d bytes, %d calls, %d tree entries\n%s\n%s", traceFile, buf.Len(), tr.Steps(), tr.Files(), tr.Comment, traceStats(tr))
}

// traceStats counts a trace's calls per procedure and the bytes it reads and writes.
func traceStats(tr *Trace) string {
	n, creds := map[string]int{}, map[string]int{}
	var rd, wr, size int64
	for _, op := range tr.ops {
		n[op.name()]++
		creds[tr.creds[op.cred].String()]++
		d := &dec{b: op.tail}
		switch {
		case op.prog != progNFS:
		case op.proc == 6:
			d.u64()
			rd += int64(d.u32())
		case op.proc == 7:
			d.u64()
			wr += int64(d.u32())
		}
	}
	for _, e := range tr.tree {
		size += e.size
	}
	var names []string
	for k, v := range n {
		names = append(names, fmt.Sprintf("%s %d", k, v))
	}
	slices.Sort(names)
	var callers []string
	for k, v := range creds {
		callers = append(callers, fmt.Sprintf("%s %d", k, v))
	}
	slices.Sort(callers)
	return fmt.Sprintf("calls: %s\ncallers (uid:gid:groups): %s\nat most %d calls in flight\nREAD asked %.1f MiB, WRITE %.1f MiB; tree %.1f MiB in %d entries, %d files read\n",
		strings.Join(names, ", "), strings.Join(callers, ", "), tr.maxInFlight,
		float64(rd)/(1<<20), float64(wr)/(1<<20), float64(size)/(1<<20), len(tr.tree), len(tr.read))
}

// TestTraceFile checks the shipped trace: it parses, it writes back identically, and its
// tree is laid out with the captured sizes, owners and modes.
func TestTraceFile(t *testing.T) {
	tr, err := LoadTrace(traceFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", traceStats(tr))
	var buf bytes.Buffer
	if err := tr.Write(&buf); err != nil {
		t.Fatal(err)
	}
	text := slices.Clone(buf.Bytes())
	back, err := parseTrace(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if back.Steps() != tr.Steps() || back.Files() != tr.Files() || back.MaxInFlight() != tr.MaxInFlight() {
		t.Fatalf("round trip: %d calls, %d entries, %d in flight; want %d, %d, %d",
			back.Steps(), back.Files(), back.MaxInFlight(), tr.Steps(), tr.Files(), tr.MaxInFlight())
	}
	var again bytes.Buffer
	if err := back.Write(&again); err != nil || !bytes.Equal(again.Bytes(), text) {
		t.Fatalf("round trip: the trace written back differs (%v)", err)
	}
	dir := t.TempDir()
	if err := tr.WriteTree(dir); err != nil {
		t.Fatal(err)
	}
	for p, e := range tr.tree {
		fi, err := os.Lstat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if e.typ == nf3Reg && fi.Size() != e.size {
			t.Errorf("%s: size %d, want %d", p, fi.Size(), e.size)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != e.uid || st.Gid != e.gid || (e.typ != nf3Lnk && st.Mode&0o7777 != e.mode) {
			t.Errorf("%s: owner %d:%d mode %o, want %d:%d %o", p, st.Uid, st.Gid, st.Mode&0o7777, e.uid, e.gid, e.mode)
		}
	}
}

// TestReplayFidelity boots one board (tiny boot set, full mode) and checks what the
// replay keeps of the captured boot: calls overlap as they did there (more than one
// outstanding, never more than the capture had), the NFS_ACL calls are made, and every
// reply has the captured status although the calls go with their callers' credentials
// to a tree with the captured owners and modes.
func TestReplayFidelity(t *testing.T) {
	tr, err := LoadTrace(traceFile)
	if err != nil {
		t.Fatal(err)
	}
	acl := map[string]int{}
	nonRoot := 0
	for _, op := range tr.ops {
		if op.prog == progACL {
			acl[strings.ToUpper(op.name())]++
		}
		if tr.creds[op.cred].uid != 0 {
			nonRoot++
		}
	}
	if acl["GETACL"] == 0 || acl["SETACL"] == 0 || nonRoot == 0 || tr.MaxInFlight() < 2 {
		t.Fatalf("trace: NFS_ACL calls %v, %d calls not as root, at most %d in flight; want all three", acl, nonRoot, tr.MaxInFlight())
	}
	// The server traces what it gets (server/nfstrace.go): the callers and NFS_ACL calls
	// the replay sent are checked there.
	raw := filepath.Join(t.TempDir(), "replay.trace")
	t.Setenv("PIFLEET_NFS_TRACE", raw)
	f := Start(t, withChildEnv(config(t, 1, true, false)))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := f.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	br := res.Boards[0]
	if br.Err != nil {
		t.Fatalf("board %s: %v\nserver log:\n%s", br.Name, br.Err, f.ServerLog())
	}
	t.Logf("board %s: %d calls in flight at most (the capture: %d), calls %v", br.Name, br.MaxInFlight, tr.MaxInFlight(), br.Ops)
	if br.Diverged != 0 {
		t.Errorf("%d replayed calls answered otherwise than captured; first: %s", br.Diverged, br.FirstDiverge)
	}
	if br.MaxInFlight < 2 || br.MaxInFlight > tr.MaxInFlight() {
		t.Errorf("%d calls in flight at most; want 2 to %d", br.MaxInFlight, tr.MaxInFlight())
	}
	for name, n := range acl {
		if br.Ops[name] != n {
			t.Errorf("%d %s calls, the capture had %d", br.Ops[name], name, n)
		}
	}
	rf, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	calls, err := readRawTrace(rf)
	if err != nil {
		t.Fatal(err)
	}
	got, err := convertTrace(calls, br.Name, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want, have := callers(tr), callers(got); !maps.Equal(want, have) {
		t.Errorf("the server got these calls not as root and NFS_ACL calls:\n%v\nthe capture had\n%v", have, want)
	}
}

// callers counts a trace's calls made not as root, and its NFS_ACL calls, by procedure
// and credential.
func callers(tr *Trace) map[string]int {
	n := map[string]int{}
	for _, op := range tr.ops {
		if c := tr.creds[op.cred]; c.uid != 0 || op.prog == progACL {
			n[op.name()+" "+c.String()]++
		}
	}
	return n
}
