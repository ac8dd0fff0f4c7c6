package dhcp

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Log lines a client can trigger are rate-limited per client MAC (DESIGN.md, Trust and
// limits): a flood from one MAC, or from thousands of made-up MACs, must not become a
// flood of log lines. A line that passes carries how many lines were suppressed before
// it, for its key and in total.

// logLimiter decides whether a log line about key may be written at now. suppressed is
// how many lines about key were dropped since the last one written. Lines with shared
// set are also bounded in total (clients not in the fleet: anyone can make up MACs);
// others is how many such lines the total bound dropped since the last one written.
// A small interface so a shared rate-limited logger can replace this one.
type logLimiter interface {
	allow(key string, shared bool, now time.Time) (ok bool, suppressed, others uint64)
}

const (
	// Per key: 20 lines at once (a board's boot logs about 12), then one per 5 s.
	logKeyBurst = 20
	logKeyEvery = 5 * time.Second
	// Shared lines in total: 50 at once, then 5 per second.
	logAllBurst  = 50
	logAllPerSec = 5
	// logKeys bounds the per-key table; past it, it is reset (a flood of fresh keys
	// is then held by the global bound).
	logKeys = 4096
)

type keyBucket struct {
	tokens     float64
	last       time.Time
	suppressed uint64
}

// lineLimiter is a token bucket per key under a global token bucket.
type lineLimiter struct {
	mu     sync.Mutex
	keys   map[string]*keyBucket
	all    keyBucket
	others uint64 // dropped by the global bucket since the last line written
}

func newLineLimiter() *lineLimiter {
	return &lineLimiter{keys: make(map[string]*keyBucket), all: keyBucket{tokens: logAllBurst}}
}

func (l *lineLimiter) allow(key string, shared bool, now time.Time) (bool, uint64, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.keys[key]
	if b == nil {
		if len(l.keys) >= logKeys {
			clear(l.keys)
		}
		b = &keyBucket{tokens: logKeyBurst, last: now}
		l.keys[key] = b
	}
	b.tokens = min(logKeyBurst, b.tokens+now.Sub(b.last).Seconds()/logKeyEvery.Seconds())
	b.last = now
	if !l.all.last.IsZero() {
		l.all.tokens = min(logAllBurst, l.all.tokens+now.Sub(l.all.last).Seconds()*logAllPerSec)
	}
	l.all.last = now
	if b.tokens < 1 {
		b.suppressed++
		return false, 0, 0
	}
	if shared && l.all.tokens < 1 {
		l.others++
		return false, 0, 0
	}
	b.tokens--
	s := b.suppressed
	b.suppressed = 0
	if !shared {
		return true, s, 0
	}
	l.all.tokens--
	o := l.others
	l.others = 0
	return true, s, o
}

// limitedLog writes a line to s.log if s.lines lets a line about key through at now,
// with the counts of the lines suppressed before it.
func (s *Server) limitedLog(level slog.Level, key string, shared bool, now time.Time, msg string, args ...any) {
	ctx := context.Background()
	if !s.log.Enabled(ctx, level) {
		return
	}
	ok, suppressed, others := s.lines.allow(key, shared, now)
	if !ok {
		return
	}
	s.log.Log(ctx, level, msg, withSuppressed(args, suppressed, others)...)
}

// withSuppressed adds the counts of suppressed lines to a line's attributes.
func withSuppressed(args []any, suppressed, others uint64) []any {
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	if others > 0 {
		args = append(args, "suppressed_other_clients", others)
	}
	return args
}
