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

// TestObserverArrivalsAndCredentials: with ExactArrivals, a call sent while the previous
// one is still being answered is read (and its arrival taken) before that answer ends,
// and the Observer sees each call's AUTH_SYS credential. Without ExactArrivals the first
// call would run on the connection's reader, and the second would wait for its answer.
func TestObserverArrivalsAndCredentials(t *testing.T) {
	f := newFixture(t)
	f.exact = true
	type seen struct {
		arrived  time.Time
		uid, gid uint32
		gids     []uint32
	}
	var mu sync.Mutex
	var getattr, lookup seen
	inGetattr, lookupSeen := make(chan struct{}), make(chan struct{})
	overlapped := false
	f.observe = func(c Call) {
		if c.Program != progNFS {
			return
		}
		s := seen{arrived: c.Arrived, uid: c.UID, gid: c.GID, gids: slices.Clone(c.GIDs)}
		switch c.Proc {
		case 1: // GETATTR: held until the LOOKUP sent after it was answered (bounded)
			close(inGetattr)
			select {
			case <-lookupSeen:
				mu.Lock()
				overlapped = true
				mu.Unlock()
			case <-time.After(5 * time.Second):
			}
			mu.Lock()
			getattr = s
			mu.Unlock()
		case 3:
			mu.Lock()
			lookup = s
			mu.Unlock()
			close(lookupSeen)
		}
	}
	f.restart()
	c, root := f.client("pi-a")
	c.as(1000, 1000, 24, 27)
	if _, err := c.c.Write(c.callMsg(progNFS, 3, 1, root)); err != nil {
		t.Fatal(err)
	}
	<-inGetattr
	if st, _, _ := c.lookup(root, "etc"); st != 0 {
		t.Fatalf("lookup etc: %d", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if !overlapped {
		t.Fatal("the LOOKUP sent during the GETATTR's answer was not answered before it")
	}
	if getattr.arrived.IsZero() || lookup.arrived.Before(getattr.arrived) {
		t.Errorf("arrivals: GETATTR %v, LOOKUP %v", getattr.arrived, lookup.arrived)
	}
	if lookup.uid != 1000 || lookup.gid != 1000 || !slices.Equal(lookup.gids, []uint32{24, 27}) {
		t.Errorf("LOOKUP credential %d/%d %v, want 1000/1000 [24 27]", lookup.uid, lookup.gid, lookup.gids)
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
