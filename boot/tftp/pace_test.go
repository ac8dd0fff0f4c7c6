package tftp

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"slices"
	"testing"
	"time"
)

// TestPacerBackoff: a direct wait that is not answered in time sends the transfer to the
// netpoller for 1, 2, 4, ... blocks, capped at maxBackoff; a quick answer resets it.
func TestPacerBackoff(t *testing.T) {
	var p2 pacer
	var skips []int
	for range 13 {
		if !p2.direct() {
			t.Fatal("no direct try where one was due")
		}
		p2.directDone(errNotYet)
		n := 0
		for p2.skip > 0 {
			if p2.direct() {
				t.Fatal("direct try during back-off")
			}
			n++
		}
		skips = append(skips, n)
	}
	if want := []int{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1024, 1024}; !slices.Equal(skips, want) {
		t.Errorf("back-off after each miss = %v, want %v", skips, want)
	}

	// A quick answer resets the back-off.
	if !p2.direct() {
		t.Fatal("no direct try after the back-off")
	}
	p2.directDone(nil)
	if !p2.direct() {
		t.Fatal("a quick answer did not keep direct waits")
	}
	p2.directDone(errNotYet)
	if p2.skip != 1 {
		t.Errorf("back-off after a miss following a quick answer = %d, want 1", p2.skip)
	}

	// An answer that came, but late, counts as a miss: the P was held too long.
	var p3 pacer
	p3.direct()
	p3.waitFrom = time.Now().Add(-10 * quickAnswer)
	p3.directDone(nil)
	if p3.skip != 1 {
		t.Errorf("late answer: back-off %d, want 1", p3.skip)
	}
}

// TestPacerRun: a run of direct waits ends after directRun with one netpoller wait, so
// whatever else is ready on the P gets to run.
func TestPacerRun(t *testing.T) {
	var p pacer
	if !p.direct() {
		t.Fatal("first wait is not direct")
	}
	p.directDone(nil)
	if !p.direct() {
		t.Fatal("second quick wait is not direct")
	}
	p.directDone(nil)
	p.runStart = time.Now().Add(-2 * directRun) // the run has gone on long enough
	if p.direct() {
		t.Fatal("run did not end after directRun")
	}
	if !p.direct() {
		t.Fatal("no new run after the netpoller wait")
	}
}

// slowGet is a lock-step client that waits delay before each ACK and, once, stall
// before the ACK of block stallAt. It returns the file's bytes.
func slowGet(t *testing.T, port int, name string, delay time.Duration, stallAt uint16, stall time.Duration) []byte {
	t.Helper()
	c := rawConn(t, "127.0.0.1")
	c.WriteToUDP(rrq(opRRQ, name, "octet"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	var data []byte
	want := uint16(1)
	for {
		p, from, err := readPacket(t, c, 5*time.Second)
		if err != nil {
			t.Fatalf("block %d: %v", want, err)
		}
		if binary.BigEndian.Uint16(p) != opDATA {
			t.Fatalf("block %d: got opcode %d (%q)", want, binary.BigEndian.Uint16(p), p)
		}
		if binary.BigEndian.Uint16(p[2:]) != want {
			continue
		}
		data = append(data, p[4:]...)
		time.Sleep(delay)
		if want == stallAt {
			time.Sleep(stall)
		}
		c.WriteToUDP(ack(want), from)
		if len(p) < 4+512 {
			return data
		}
		want++
	}
}

// TestSlowClient: a client that answers each block after 300 µs (a Pi over a real
// network takes that long) gets its file from the netpoller, with direct tries only as
// the back-off allows.
func TestSlowClient(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{})
	got := slowGet(t, serverPort(s), "start4.elf", 300*time.Microsecond, 0, 0) // 586 blocks
	if !bytes.Equal(got, firmwareFile(t, a, "start4.elf")) {
		t.Fatalf("got %d bytes, not start4.elf", len(got))
	}
	st := waitStats(t, s, func(st Stats) bool { return st.Reads == 1 })
	// Blocks 1, 3, 6, 11, 20, 37, 70, 135, 264, 521 try a direct wait: 10 of 586.
	if st.DirectWaits > 12 || st.DirectWaits+st.PolledWaits < 586 {
		t.Errorf("slow client: %d direct and %d netpoller waits for 586 blocks, want at most 12 direct",
			st.DirectWaits, st.PolledWaits)
	}
}

// TestClientStalls: a client that answers at once and then stops for longer than a
// direct wait lasts still gets the whole file, the rest of it from the netpoller.
func TestClientStalls(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{})
	got := slowGet(t, serverPort(s), "start4.elf", 0, 100, 50*time.Millisecond)
	if !bytes.Equal(got, firmwareFile(t, a, "start4.elf")) {
		t.Fatalf("got %d bytes, not start4.elf", len(got))
	}
	st := waitStats(t, s, func(st Stats) bool { return st.Reads == 1 })
	if st.DirectWaits == 0 || st.PolledWaits == 0 {
		t.Errorf("%d direct and %d netpoller waits, want both", st.DirectWaits, st.PolledWaits)
	}
}

// TestCancelWhileWaiting: cancelling Serve ends a transfer whose client has stopped
// answering, whether its wait is still direct or already in the netpoller.
func TestCancelWhileWaiting(t *testing.T) {
	fleet, _, _ := twoBoards(t)
	for _, after := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond, 20 * time.Millisecond} {
		s, err := New(Config{Addr: "127.0.0.1:0", Fleet: fleet, Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		c := rawConn(t, "127.0.0.1")
		c.WriteToUDP(rrq(opRRQ, "kernel8.img", "octet"), s.Addr().(*net.UDPAddr))
		if _, _, err := readPacket(t, c, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(after)
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("cancel after %v: Serve: %v", after, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("cancel after %v: Serve still running 10 s later", after)
		}
	}
}
