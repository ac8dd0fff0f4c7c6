package nfsroot

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// TestObserverSeesCalls: the Observer gets every answered call with its procedure, its
// status (NFS, MOUNT and RPC-level) and the board whose export it used.
func TestObserverSeesCalls(t *testing.T) {
	f := newFixture(t)
	var mu sync.Mutex
	var seen []string
	f.observe = func(c Call) {
		if c.Duration < 0 {
			t.Errorf("negative duration %v", c.Duration)
		}
		mu.Lock()
		seen = append(seen, c.ProgramName()+"."+c.ProcName()+"="+c.StatusName()+"@"+c.Board)
		mu.Unlock()
	}
	f.restart()
	c, root := f.client("pi-a")
	if st, _, _ := c.lookup(root, "etc"); st != 0 {
		t.Fatalf("lookup etc: %d", st)
	}
	if st, _, _ := c.lookup(root, "nope"); st == 0 {
		t.Fatal("lookup of a missing name succeeded")
	}
	if r, err := c.raw(c.callMsg(progNFS, 3, 99)); err != nil || r.stat != acceptProcUnavail {
		t.Fatalf("proc 99: %+v %v", r, err)
	}
	if st, _ := c.mnt("/boards/pi-b"); st == 0 {
		t.Fatal("pi-a mounted pi-b's export")
	}
	want := []string{
		"mount.mnt=ok@pi-a", "nfs.lookup=ok@pi-a", "nfs.lookup=noent@pi-a", "nfs.unknown=proc_unavail@", "mount.mnt=acces@",
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(seen, want) {
		t.Errorf("observed\n%q\nwant\n%q", seen, want)
	}
}

// TestCallOfAllocatesNothing: describing a call for the Observer costs no allocation.
func TestCallOfAllocatesNothing(t *testing.T) {
	w := replyBuf(nil, 7)
	w.accepted(acceptSuccess)
	w.u32(70)
	rec := w.finish()
	h := &rpcCallHdr{xid: 7, prog: progNFS, vers: 3, proc: 1}
	var c Call
	if n := testing.AllocsPerRun(100, func() { c = callOf(h, rec, time.Millisecond) }); n != 0 {
		t.Errorf("callOf allocates %v times per call", n)
	}
	if c.ProcName() != "getattr" || c.StatusName() != "stale" {
		t.Errorf("call = %s %s, want getattr stale", c.ProcName(), c.StatusName())
	}
}
