package server

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestHTTPConnLimitPerAddress: one address gets httpMaxConnsPerAddr connections; the next
// is closed at accept, and a closed one frees its slot.
func TestHTTPConnLimitPerAddress(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	l := newConnLimiter().wrap(raw)
	accepted := make(chan net.Conn, httpMaxConnsPerAddr+2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var held []net.Conn
	for range httpMaxConnsPerAddr {
		dial()
		held = append(held, <-accepted)
	}
	over := dial()
	over.SetReadDeadline(time.Now().Add(20 * time.Second)) // a failure guard, not a measurement
	if _, err := over.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("connection %d from one address: read %v, want it closed by the server", httpMaxConnsPerAddr+1, err)
	}
	select {
	case c := <-accepted:
		t.Fatalf("connection over the bound was handed to the HTTP server: %v", c.RemoteAddr())
	default:
	}
	held[0].Close()
	held[0].Close() // a second Close must not free a second slot
	dial()
	<-accepted
	over2 := dial()
	over2.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := over2.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("after one slot was freed and taken again, the next connection: read %v, want closed", err)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}
