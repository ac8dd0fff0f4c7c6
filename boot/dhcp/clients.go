package dhcp

import (
	"container/list"
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
	// maxUnknown bounds the table of clients that are not boards listed by MAC; past
	// it the least recently seen is forgotten, so a flood of fresh MACs always gets in
	// (and is then bounded by the queue) but never touches the boards' entries.
	maxUnknown = 16384
	// boardIdle: a board's entry unused this long is swept (the fleet can shrink on
	// reload); the board table never holds more than the fleet's MACs otherwise.
	boardIdle = 10 * time.Minute
)

type clientState struct {
	mac        string
	tokens     float64
	last       time.Time
	kind       clientKind
	serial     string
	model      string
	discoverAt time.Time
	warned     bool // a once-per-MAC warning was logged
}

// clientTable holds per-MAC state in two parts: the fleet's boards (found by MAC
// before anything else, DESIGN.md "Trust and limits") and everyone else, an LRU of
// maxUnknown. A flood of made-up MACs fills and churns the second part only.
type clientTable struct {
	mu        sync.Mutex
	boards    map[string]*clientState
	unknown   map[string]*list.Element // of *clientState
	lru       list.List                // front = most recently seen
	nextSweep time.Time
}

func newClientTable() *clientTable {
	return &clientTable{boards: make(map[string]*clientState), unknown: make(map[string]*list.Element)}
}

// allow takes one token from mac's bucket; false means drop the packet. board says
// mac is the MAC of a board of the fleet (BoardByMAC found it).
func (t *clientTable) allow(mac string, board bool, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.entry(mac, board, now)
	c.tokens = min(rateBurst, c.tokens+now.Sub(c.last).Seconds()*ratePerSec)
	c.last = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// entry returns mac's state, creating it in the part board selects (moving it there
// if the fleet changed). Caller holds t.mu.
func (t *clientTable) entry(mac string, board bool, now time.Time) *clientState {
	if board {
		if now.After(t.nextSweep) {
			t.nextSweep = now.Add(boardIdle)
			for k, v := range t.boards {
				if now.Sub(v.last) > boardIdle {
					delete(t.boards, k)
				}
			}
		}
		if c := t.boards[mac]; c != nil {
			return c
		}
		c := &clientState{mac: mac, tokens: rateBurst, last: now}
		if e := t.unknown[mac]; e != nil {
			c = t.lru.Remove(e).(*clientState)
			delete(t.unknown, mac)
		}
		t.boards[mac] = c
		return c
	}
	if e := t.unknown[mac]; e != nil {
		t.lru.MoveToFront(e)
		return e.Value.(*clientState)
	}
	if c := t.boards[mac]; c != nil {
		// No longer a board by MAC (fleet reloaded): keep its state, move it.
		delete(t.boards, mac)
		t.unknown[mac] = t.lru.PushFront(c)
		return c
	}
	if t.lru.Len() >= maxUnknown {
		old := t.lru.Back()
		delete(t.unknown, old.Value.(*clientState).mac)
		t.lru.Remove(old)
	}
	c := &clientState{mac: mac, tokens: rateBurst, last: now}
	t.unknown[mac] = t.lru.PushFront(c)
	return c
}

// find returns mac's state, nil if it has none. Caller holds t.mu.
func (t *clientTable) find(mac string) *clientState {
	if c := t.boards[mac]; c != nil {
		return c
	}
	if e := t.unknown[mac]; e != nil {
		return e.Value.(*clientState)
	}
	return nil
}

// learn remembers what a packet told about mac; empty values keep what was known.
// A DISCOVER also starts the exchange clock.
func (t *clientTable) learn(mac string, k clientKind, serial, model string, discover bool, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.find(mac)
	if c == nil {
		return // only packets that passed allow() get here, so the entry exists unless evicted
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
	c := t.find(mac)
	if c == nil {
		return kindPlain, "", "", time.Time{}
	}
	return c.kind, c.serial, c.model, c.discoverAt
}

// warnOnce reports whether mac has not been warned about yet, and marks it.
func (t *clientTable) warnOnce(mac string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.find(mac)
	if c == nil || c.warned {
		return false
	}
	c.warned = true
	return true
}
