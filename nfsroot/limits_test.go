package nfsroot

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// null makes a NULL call; an error means the server closed the connection.
func (c *client) null(prog uint32) error {
	_, err := c.raw(c.callMsg(prog, 3, 0))
	return err
}

// waitFor polls cond (a server counter) until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestConnLimits opens connections from a board's address and from a stranger's up to
// their limits: the next one is closed at once and counted, the others keep working, and
// a connection closed makes room for a new one.
func TestConnLimits(t *testing.T) {
	f := newFixture(t)
	f.limits = func(l *limits) { l.perBoard, l.perStranger, l.maxConns = 6, 2, 20 }
	f.restart()
	open := func(from netip.Addr, n int) []*client {
		var cs []*client
		for range n {
			c := dialFrom(t, from, f.nfs)
			if err := c.null(progNFS); err != nil {
				t.Fatalf("connection %d from %s: %v", len(cs)+1, from, err)
			}
			cs = append(cs, c)
		}
		return cs
	}
	refused := func(from netip.Addr) {
		t.Helper()
		before := f.srv.Stats().ConnsRefused
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}
		if nc, err := d.Dial("tcp", f.nfs.String()); err == nil { // else reset before connect returned
			defer nc.Close()
			c := &client{t: t, c: nc, br: bufio.NewReader(nc)}
			if err := c.null(progNFS); err == nil {
				t.Fatalf("connection over the limit from %s was served", from)
			}
		}
		waitFor(t, "the refusal to be counted", func() bool { return f.srv.Stats().ConnsRefused == before+1 })
		if f.srv.Stats().ConnsRefused != before+1 {
			t.Fatalf("refused connection not counted")
		}
	}
	board := open(addrA, 6)
	refused(addrA)
	stranger := open(addrOther, 2)
	refused(addrOther)
	if st := f.srv.Stats(); st.RefusedPerAddress != 2 || st.RefusedStrangers != 0 || st.RefusedTotal != 0 {
		t.Errorf("refusals by limit %+v, want 2 per address", st)
	}
	if err := open(addrB, 1)[0].null(progNFS); err != nil { // another board is unaffected
		t.Fatal(err)
	}
	for _, c := range board {
		if err := c.null(progNFS); err != nil {
			t.Fatalf("a connection within the limit was closed: %v", err)
		}
	}
	board[0].c.Close()
	waitFor(t, "the closed connection to be counted out", func() bool { return f.srv.Stats().Conns == 6+2+1-1 })
	open(addrA, 1)
	_ = stranger
}

// TestTotalConnLimit fills the server's connection limit with strangers: they get only
// their share, and a board still connects.
func TestTotalConnLimit(t *testing.T) {
	f := newFixture(t)
	f.limits = func(l *limits) { l.maxConns, l.maxStrangers, l.perStranger = 12, 4, 4 }
	f.restart()
	served := 0
	for i := range 10 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: []byte{127, 0, 1, byte(1 + i%5)}}}
		nc, err := d.Dial("tcp", f.nfs.String())
		if err != nil {
			continue // reset before connect returned: refused as well
		}
		defer nc.Close()
		c := &client{t: t, c: nc, br: bufio.NewReader(nc)}
		if c.null(progNFS) == nil {
			served++
		}
	}
	if served != 4 {
		t.Fatalf("%d connections from strangers served, want the 4 of their share", served)
	}
	if st := f.srv.Stats(); st.RefusedStrangers != 6 || st.RefusedPerAddress != 0 {
		t.Errorf("refusals by limit %+v, want 6 over the strangers' limit", st)
	}
	if _, root := f.client("pi-a"); root == nil {
		t.Fatal("board could not mount")
	}
}

// TestIdleStrangerClosed: a stranger's connection is closed its time after it connected,
// idle or not; a board's is not.
func TestIdleStrangerClosed(t *testing.T) {
	f := newFixture(t)
	f.limits = func(l *limits) { l.idleStranger = 300 * time.Millisecond }
	f.restart()
	board, _ := f.client("pi-a")
	idle := dialFrom(t, addrOther, f.nfs)
	busy := dialFrom(t, addrOther, f.nfs)
	for end := time.Now().Add(20 * time.Second); busy.null(progMount) == nil; { // calling all the time
		if time.Now().After(end) {
			t.Fatal("a busy stranger's connection was never closed")
		}
	}
	_ = idle.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := idle.br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle stranger connection: %v, want closed by the server", err)
	}
	waitFor(t, "both closes counted", func() bool { return f.srv.Stats().IdleClosed == 2 })
	if err := board.null(progNFS); err != nil {
		t.Fatalf("board connection closed: %v", err)
	}
}

// TestUnreadRepliesBounded pipelines many 1 MiB READs on connections that never read a
// reply: the server must stop reading them once their budget is spent rather than buffer
// replies, keep serving another board meanwhile, and give every byte back when they close.
func TestUnreadRepliesBounded(t *testing.T) {
	f := newFixture(t)
	big := filepath.Join(f.lower, "big")
	fh0, err := os.Create(big)
	must(t, err)
	must(t, fh0.Truncate(256<<20))
	must(t, fh0.Close())
	_, root := f.client("pi-a")
	var attackers []net.Conn
	var cs []*client
	for range 8 {
		cs = append(cs, dialFrom(t, addrA, f.nfs))
	}
	fh := cs[0].walk(root, "big")
	for _, c := range cs { // the connections of one address share its budget: spend it
		w := bufio.NewWriter(c.c)
		for i := range 128 {
			_, _ = w.Write(c.callMsg(progNFS, 3, 6, fh, uint64(i)<<20, uint32(1<<20)))
		}
		must(t, w.Flush())
		attackers = append(attackers, c.c)
	}
	waitFor(t, "the attackers to be throttled", func() bool { return f.srv.Stats().Throttled > 0 })
	other, oroot := f.client("pi-b")
	if st, _ := other.getattr(oroot); st != 0 {
		t.Fatalf("another board during the attack: status %d", st)
	}
	st := f.srv.Stats()
	bound := f.srv.lim.addrBytes + 2<<20 // the address's budget; a budget admits one call over when empty
	if st.ReservedPeak > bound {
		t.Fatalf("calls and replies held %d bytes at most, want at most %d", st.ReservedPeak, bound)
	}
	if n := f.srv.pipes.inUse(); n > pipesPerConn*len(attackers) {
		t.Fatalf("%d pipes held by %d connections (at most %d each)", n, len(attackers), pipesPerConn)
	}
	t.Logf("peak held %d bytes over 8 connections with 1024 unread 1 MiB READs; throttled %d times; %d pipes held", st.ReservedPeak, st.Throttled, f.srv.pipes.inUse())
	for _, c := range attackers {
		c.Close()
	}
	waitFor(t, "every byte given back", func() bool {
		s := f.srv.Stats()
		return s.Reserved == 0 && s.Conns == 2 && f.srv.pipes.inUse() == 0
	})
}
