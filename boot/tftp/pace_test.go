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

// TestPacerBackoff: a direct wait that is not answered in time sends the client to the
// netpoller for 1, 2, 4, ... blocks, capped at maxBackoff; a quick answer resets it, a
// late one counts as a miss.
func TestPacerBackoff(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	var p pacer
	var skips []int
	for range 13 {
		if !p.direct(now) {
			t.Fatal("no direct try where one was due")
		}
		p.directDone(now, errNotYet)
		n := 0
		for p.skip > 0 {
			if p.direct(now) {
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
	if !p.direct(now) {
		t.Fatal("no direct try after the back-off")
	}
	p.directDone(now.Add(quickAnswer), nil)
	if !p.direct(now.Add(quickAnswer)) {
		t.Fatal("a quick answer did not keep direct waits")
	}
	p.directDone(now.Add(quickAnswer), errNotYet)
	if p.skip != 1 {
		t.Errorf("back-off after a miss following a quick answer = %d, want 1", p.skip)
	}

	// An answer that came, but late, counts as a miss: the P was held too long.
	var late pacer
	late.direct(now)
	late.directDone(now.Add(quickAnswer+time.Microsecond), nil)
	if late.skip != 1 {
		t.Errorf("late answer: back-off %d, want 1", late.skip)
	}
}

// TestPacerRun: a run of direct waits ends after directRun with one netpoller wait, so
// whatever else is ready on the P gets to run.
func TestPacerRun(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	var p pacer
	var direct int
	for i := range 100 {
		at := now.Add(time.Duration(i) * 20 * time.Microsecond) // a quick client: 20 µs a block
		if !p.direct(at) {
			break
		}
		p.directDone(at.Add(10*time.Microsecond), nil)
		direct++
	}
	// Waits starting at 0, 20, ..., 1000 µs are within the run; the one at 1020 µs ends it.
	if direct != 51 {
		t.Errorf("%d direct waits in a run, want 51", direct)
	}
	if !p.direct(now.Add(1040 * time.Microsecond)) {
		t.Error("no new run after the netpoller wait")
	}
}

// slowGet is a lock-step client that waits delay before each ACK and, once, stall
// before the ACK of block stallAt. It returns the file's bytes, and fails the test on
// any DATA it did not ask for.
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
		if got := binary.BigEndian.Uint16(p[2:]); got != want {
			// Nothing here is slow enough for a resend (the timeout is seconds), and
			// the block is not one the client is owed.
			t.Fatalf("DATA %d while waiting for %d: a resend before the timeout", got, want)
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
// network takes that long) gets its files from the netpoller, with direct tries only as
// the back-off allows, and the back-off goes on from one file to the next.
func TestSlowClient(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{Timeout: 10 * time.Second})
	got := slowGet(t, serverPort(s), "start4.elf", 300*time.Microsecond, 0, 0) // 586 blocks
	if !bytes.Equal(got, firmwareFile(t, a, "start4.elf")) {
		t.Fatalf("got %d bytes, not start4.elf", len(got))
	}
	st := waitStats(t, s, func(st Stats) bool { return st.Reads == 1 })
	// Blocks 1, 3, 6, 11, 20, 37, 70, 135, 264, 521 try a direct wait: 10 of 586.
	if st.DirectWaits > 12 || st.DirectWaits+st.PolledWaits < 586 {
		t.Fatalf("slow client: %d direct and %d netpoller waits for 586 blocks, want at most 12 direct",
			st.DirectWaits, st.PolledWaits)
	}
	// The next file (102 blocks) starts where the last one's back-off stood: no
	// direct try (a fresh back-off would make 7).
	got = slowGet(t, serverPort(s), "bcm2711-rpi-4-b.dtb", 300*time.Microsecond, 0, 0)
	if !bytes.Equal(got, firmwareFile(t, a, "bcm2711-rpi-4-b.dtb")) {
		t.Fatalf("got %d bytes, not bcm2711-rpi-4-b.dtb", len(got))
	}
	st2 := waitStats(t, s, func(st Stats) bool { return st.Reads == 2 })
	if d := st2.DirectWaits - st.DirectWaits; d > 1 {
		t.Errorf("second file: %d direct tries, want at most 1: the back-off did not carry over", d)
	}
}

// TestClientStalls: a client that answers at once and then stops for longer than a
// direct wait lasts gets the whole file without a block sent twice: the wait goes on
// in the netpoller, and only the timeout (10 s here) resends.
func TestClientStalls(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{Timeout: 10 * time.Second})
	got := slowGet(t, serverPort(s), "start4.elf", 0, 100, 50*time.Millisecond)
	if !bytes.Equal(got, firmwareFile(t, a, "start4.elf")) {
		t.Fatalf("got %d bytes, not start4.elf", len(got))
	}
}

// TestServeStopsOnCancel: a client that never ACKs must not keep Serve from returning,
// whether the transfer's wait is still direct or already in the netpoller.
func TestServeStopsOnCancel(t *testing.T) {
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
