package tftp

import (
	"net/netip"
	"sync"
	"time"
)

// logLimiter bounds the log lines one client address can cause: a token bucket per
// address (logBurst lines, then one every logEvery), so a booting board logs every
// step while a flood from one address costs a few lines, and the next line let through
// says how many were suppressed. The table is bounded: when full, it is cleared, which
// at worst lets a burst through again.
type logLimiter struct {
	mu      sync.Mutex
	clients map[netip.Addr]*logBucket
}

type logBucket struct {
	tokens     float64
	at         time.Time
	suppressed int
}

// Per-address log budget. A Pi 4's whole boot is about 30 lines; a U-Boot board's fewer.
const (
	logBurst      = 64
	logEvery      = time.Second
	maxLogClients = 4096
)

// allow reports whether a line about client may be logged now, and how many lines
// about it were suppressed since the last one let through.
func (l *logLimiter) allow(client netip.Addr, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.clients[client]
	if b == nil {
		if l.clients == nil || len(l.clients) >= maxLogClients {
			l.clients = make(map[netip.Addr]*logBucket)
		}
		b = &logBucket{tokens: logBurst, at: now}
		l.clients[client] = b
	}
	b.tokens = min(logBurst, b.tokens+float64(now.Sub(b.at))/float64(logEvery))
	b.at = now
	if b.tokens < 1 {
		b.suppressed++
		return false, 0
	}
	b.tokens--
	n := b.suppressed
	b.suppressed = 0
	return true, n
}
