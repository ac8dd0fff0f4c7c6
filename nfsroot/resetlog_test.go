package nfsroot

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/netns"
)

// TestConnResetLoggedAtDebug: a board that reboots resets its NFS connection; that is
// routine and logged at DEBUG, not once per reboot at INFO.
func TestConnResetLoggedAtDebug(t *testing.T) {
	logs := &netns.LogBuffer{}
	srv := New(Options{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = srv.ServeNFS(ctx, ln) }()
	defer func() { cancel(); wg.Wait() }()

	c, err := net.Dial("tcp", ln.Addr().String())
	must(t, err)
	// Half a record marker, then an RST (linger 0): the server's read of the record fails
	// with ECONNRESET whether it was already waiting or not.
	_, err = c.Write([]byte{0x80, 0x00})
	must(t, err)
	must(t, c.(*net.TCPConn).SetLinger(0))
	must(t, c.Close())
	for i := 0; i < 100 && !strings.Contains(logs.String(), "connection reset by the board"); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	var line string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "connection reset by the board") {
			line = l
		}
	}
	if !strings.Contains(line, "level=DEBUG") {
		t.Errorf("reset logged as %q, want a DEBUG line\n%s", line, logs.String())
	}
}
