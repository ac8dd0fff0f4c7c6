package dhcp

import (
	"sync"
	"time"
)

// Per-MAC memory: a token bucket so one client flooding DISCOVERs cannot drown the
// server, and what its DISCOVER told us (kind, serial) for the REQUEST that follows,
// because early Pi 4 EEPROMs send REQUESTs without option 60 and a board listed only
// by serial must still be recognised then.

const (
	// A Pi retransmits every few seconds and a full exchange is 2 packets, so 20
	// packets at once and 10 per second is far above any honest client.
	rateBurst  = 20
	ratePerSec = 10
	// maxClients bounds the table; past it idle entries are swept, and a flood of
	// fresh MACs is dropped until entries age out.
	maxClients = 16384
	clientIdle = 2 * time.Minute
)

type clientState struct {
	tokens     float64
	last       time.Time
	kind       clientKind
	serial     string
	model      string
	discoverAt time.Time
	warned     bool // a once-per-MAC warning was logged
}

type clientTable struct {
	mu        sync.Mutex
	m         map[string]*clientState
	nextSweep time.Time // a full table is swept at most once a second, not per packet
}

func newClientTable() *clientTable { return &clientTable{m: make(map[string]*clientState)} }

// allow takes one token from mac's bucket; false means drop the packet.
func (t *clientTable) allow(mac string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[mac]
	if c == nil {
		if len(t.m) >= maxClients {
			if now.Before(t.nextSweep) {
				return false
			}
			t.nextSweep = now.Add(time.Second)
			for k, v := range t.m {
				if now.Sub(v.last) > clientIdle {
					delete(t.m, k)
				}
			}
			if len(t.m) >= maxClients {
				return false
			}
		}
		c = &clientState{tokens: rateBurst, last: now}
		t.m[mac] = c
	}
	c.tokens = min(rateBurst, c.tokens+now.Sub(c.last).Seconds()*ratePerSec)
	c.last = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// learn remembers what a packet told about mac; empty values keep what was known.
// A DISCOVER also starts the exchange clock.
func (t *clientTable) learn(mac string, k clientKind, serial, model string, discover bool, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[mac]
	if c == nil {
		return // only packets that passed allow() get here, so the entry exists unless swept
	}
	if k != kindPlain {
		c.kind = k
	}
	if serial != "" {
		c.serial = serial
	}
	if model != "" {
		c.model = model
	}
	if discover {
		c.discoverAt = now
	}
}

// recall returns what earlier packets from mac told.
func (t *clientTable) recall(mac string) (k clientKind, serial, model string, discoverAt time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[mac]
	if c == nil {
		return kindPlain, "", "", time.Time{}
	}
	return c.kind, c.serial, c.model, c.discoverAt
}

// warnOnce reports whether mac has not been warned about yet, and marks it.
func (t *clientTable) warnOnce(mac string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[mac]
	if c == nil || c.warned {
		return false
	}
	c.warned = true
	return true
}
