package nfsroot

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a log sink for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLogFloodLimited floods the server with connections from one address that each send
// a record too long to accept (a WARN each) or reset the connection: the log gets a few
// lines per address, the rest is counted and summarised, and resets are DEBUG.
func TestLogFloodLimited(t *testing.T) {
	needRoot(t)
	var logs lockedBuffer
	s := New(Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.ServeNFS(ctx, ln) }()
	defer func() { cancel(); <-done }()
	const flood = 300
	for i := range flood {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: addrOther.AsSlice()}}
		c, err := d.Dial("tcp", ln.Addr().String())
		must(t, err)
		if i%2 == 0 {
			var mark [4]byte
			binary.BigEndian.PutUint32(mark[:], 0x80000000|1<<20)
			_, _ = c.Write(mark[:])
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
			_, _ = c.Read(mark[:]) // until the server closes it
			c.Close()
		} else {
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close() // a reset
		}
		waitFor(t, "the connection to be counted out", func() bool { return s.Stats().Conns == 0 })
	}
	out := logs.String()
	if n := strings.Count(out, "closing connection"); n > logBurst {
		t.Fatalf("%d WARN lines for %d bad connections from one address, want at most %d", n, flood/2, logBurst)
	}
	if strings.Contains(out, "connection reset") {
		t.Fatalf("resets logged above DEBUG:\n%s", out)
	}
	if s.Stats().LogSuppressed == 0 {
		t.Fatal("nothing counted as suppressed")
	}
	s.rl.Flush()
	if !strings.Contains(logs.String(), "suppressed log lines") {
		t.Fatalf("no summary of suppressed lines:\n%s", logs.String())
	}
}
