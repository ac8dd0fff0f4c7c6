package ratelog

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func newTest(burst int, every time.Duration) (*Limiter, *bytes.Buffer, *time.Time) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), burst, every)
	now := time.Unix(1_000_000, 0)
	l.now = func() time.Time { return now }
	return l, &buf, &now
}

func TestBurstThenRate(t *testing.T) {
	l, buf, now := newTest(5, time.Minute)
	for range 2000 {
		l.Warn("198.18.0.7", "closing connection")
	}
	l.Warn("198.18.0.8", "closing connection") // another address has its own bucket
	if got := strings.Count(buf.String(), "closing connection"); got != 6 {
		t.Fatalf("%d lines for a flood of 2000 from one address and one from another, want 5+1", got)
	}
	if l.Suppressed() != 1995 {
		t.Fatalf("suppressed %d, want 1995", l.Suppressed())
	}
	*now = now.Add(time.Minute)
	l.Warn("198.18.0.7", "closing connection")
	l.Warn("198.18.0.7", "closing connection")
	if got := strings.Count(buf.String(), "closing connection"); got != 7 {
		t.Fatalf("%d lines after a minute, want one more", got)
	}
	buf.Reset()
	l.Flush()
	if !strings.Contains(buf.String(), "suppressed log lines") || !strings.Contains(buf.String(), "client=198.18.0.7 lines=1996") {
		t.Fatalf("summary: %q", buf.String())
	}
	buf.Reset()
	l.Flush()
	if buf.Len() != 0 {
		t.Fatalf("second summary with nothing suppressed: %q", buf.String())
	}
}

func TestKeysBounded(t *testing.T) {
	l, buf, now := newTest(1, time.Hour)
	for i := range 3 * maxKeys {
		l.Warn(fmt.Sprint("key", i), "x")
		l.Warn(fmt.Sprint("key", i), "x") // suppressed: keeps the bucket alive
	}
	if len(l.buckets) > maxKeys+1 { // + the shared overflow bucket
		t.Fatalf("%d buckets, want at most %d", len(l.buckets), maxKeys+1)
	}
	lines := strings.Count(buf.String(), "msg=x")
	if lines > maxKeys+1 {
		t.Fatalf("%d lines from %d keys: the overflow bucket did not limit them", lines, 3*maxKeys)
	}
	*now = now.Add(2 * time.Hour)
	l.Flush() // reports and forgets
	if len(l.buckets) != 0 {
		t.Fatalf("%d buckets kept after everything went quiet", len(l.buckets))
	}
}

func TestDisabledLevelCostsNoToken(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), 1, time.Hour) // INFO and up
	l.Debug("a", "debug line")
	l.Warn("a", "warn line")
	if !strings.Contains(buf.String(), "warn line") || l.Suppressed() != 0 {
		t.Fatalf("a disabled DEBUG line took the token: %q, suppressed %d", buf.String(), l.Suppressed())
	}
}
