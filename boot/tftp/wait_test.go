package tftp

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// stallGet is a lock-step client that answers each block at once but, once, waits
// stall before the ACK of block stallAt. It returns the file's bytes, and fails the test on
// any DATA it did not ask for.
func stallGet(t *testing.T, port int, name string, stallAt uint16, stall time.Duration) []byte {
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

// TestClientStalls: a client that answers at once and then stops for 50 ms gets the
// whole file without a block sent twice: only the timeout (10 s here) resends.
func TestClientStalls(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{Timeout: 10 * time.Second})
	got := stallGet(t, serverPort(s), "start4.elf", 100, 50*time.Millisecond)
	if !bytes.Equal(got, firmwareFile(t, a, "start4.elf")) {
		t.Fatalf("got %d bytes, not start4.elf", len(got))
	}
}

// TestServeStopsOnCancel: a client that never ACKs must not keep Serve from returning,
// whenever the cancel comes in the transfer's wait.
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
