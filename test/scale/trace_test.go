package scale

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	n := map[string]int{}
	var rd, wr, size int64
	for _, op := range tr.ops {
		n[procNames[op.proc]]++
		d := &dec{b: op.tail}
		switch op.proc {
		case 6:
			d.u64()
			rd += int64(d.u32())
		case 7:
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
	return fmt.Sprintf("calls: %s\nREAD asked %.1f MiB, WRITE %.1f MiB; tree %.1f MiB in %d entries, %d files read\n",
		strings.Join(names, ", "), float64(rd)/(1<<20), float64(wr)/(1<<20), float64(size)/(1<<20), len(tr.tree), len(tr.read))
}

// TestTraceFile checks the shipped trace: it parses, its tree holds every path its calls
// expect to exist, and it writes back identically.
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
	back, err := parseTrace(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if back.Steps() != tr.Steps() || back.Files() != tr.Files() {
		t.Fatalf("round trip: %d calls, %d entries; want %d, %d", back.Steps(), back.Files(), tr.Steps(), tr.Files())
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
	}
}
