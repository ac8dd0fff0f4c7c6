// Package ratelog rate-limits log lines per key (a client address, a MAC): a burst, then
// one line per interval, and a count of what was held back. A flood of connections or
// packets from one host then costs a handful of lines, never one per packet.
//
//	l := ratelog.New(logger, 5, time.Minute)
//	l.Warn(addr.String(), "closing connection", "err", err)
//	l.Flush() // now and then: "suppressed log lines" with the count per key
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// maxKeys bounds the keys tracked; past it, every new key shares one more bucket, so a flood
// from many addresses is limited as a whole and the map stays small.
const maxKeys = 4096

// overflowKey is the shared bucket of keys that found the map full.
const overflowKey = "(others)"

// Limiter is a token bucket per key. The zero value is not usable; call New. It is safe
// for concurrent use.
type Limiter struct {
	log   *slog.Logger
	burst float64
	every time.Duration
	now   func() time.Time // tests may replace it

	mu      sync.Mutex
	buckets map[string]*bucket

	suppressed atomic.Uint64
}

type bucket struct {
	tokens     float64
	at         time.Time // when tokens was computed
	suppressed uint64    // held back since the last line or summary
}

// New returns a Limiter that lets burst lines per key through at once, then one per every.
func New(log *slog.Logger, burst int, every time.Duration) *Limiter {
	if log == nil {
		log = slog.Default()
	}
	return &Limiter{log: log, burst: float64(max(burst, 1)), every: max(every, time.Millisecond),
		now: time.Now, buckets: make(map[string]*bucket)}
}

// Allow takes a token from key's bucket; false means drop the line (it is counted).
func (l *Limiter) Allow(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= maxKeys {
			l.forgetFull(now)
		}
		if len(l.buckets) >= maxKeys {
			key = overflowKey
			b = l.buckets[key]
		}
		if b == nil {
			b = &bucket{tokens: l.burst, at: now}
			l.buckets[key] = b
		}
	}
	b.tokens = min(l.burst, b.tokens+float64(now.Sub(b.at))/float64(l.every))
	b.at = now
	if b.tokens < 1 {
		b.suppressed++
		l.suppressed.Add(1)
		return false
	}
	b.tokens--
	return true
}

// forgetFull drops buckets that are full again and have nothing to report: they behave
// exactly like a new key.
func (l *Limiter) forgetFull(now time.Time) {
	for k, b := range l.buckets {
		if b.suppressed == 0 && b.tokens+float64(now.Sub(b.at))/float64(l.every) >= l.burst {
			delete(l.buckets, k)
		}
	}
}

// Log logs msg at level through logger (the Limiter's own when nil) if key has a token.
func (l *Limiter) Log(logger *slog.Logger, level slog.Level, key, msg string, args ...any) {
	if logger == nil {
		logger = l.log
	}
	if !logger.Enabled(context.Background(), level) || !l.Allow(key) {
		return
	}
	logger.Log(context.Background(), level, msg, args...)
}

// Debug, Info, Warn and Error log through the Limiter's logger, limited per key.
func (l *Limiter) Debug(key, msg string, args ...any) { l.Log(nil, slog.LevelDebug, key, msg, args...) }

// Info logs at INFO if key has a token.
func (l *Limiter) Info(key, msg string, args ...any) { l.Log(nil, slog.LevelInfo, key, msg, args...) }

// Warn logs at WARN if key has a token.
func (l *Limiter) Warn(key, msg string, args ...any) { l.Log(nil, slog.LevelWarn, key, msg, args...) }

// Error logs at ERROR if key has a token.
func (l *Limiter) Error(key, msg string, args ...any) { l.Log(nil, slog.LevelError, key, msg, args...) }

// Suppressed is the number of lines held back since New.
func (l *Limiter) Suppressed() uint64 { return l.suppressed.Load() }

// Flush logs one "suppressed log lines" summary per key that had lines held back since
// its last summary, and forgets keys that are quiet again. Call it periodically (say every
// minute); it is cheap when nothing was suppressed.
func (l *Limiter) Flush() {
	type summary struct {
		key string
		n   uint64
	}
	var out []summary
	l.mu.Lock()
	now := l.now()
	for k, b := range l.buckets {
		if b.suppressed > 0 {
			out = append(out, summary{k, b.suppressed})
			b.suppressed = 0
		}
	}
	l.forgetFull(now)
	l.mu.Unlock()
	for _, s := range out {
		l.log.Warn("suppressed log lines", "client", s.key, "lines", s.n)
	}
}
