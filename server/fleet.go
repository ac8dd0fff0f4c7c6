package server

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/overlay"
)

// boardRT is one board's live state: its overlay and what the boot protocols see.
type boardRT struct {
	cfg    Board
	lowers []string // identity layer, then the image's layers
	fs     *overlay.FS
	boot   *boot.Board
}

// snapshot is one immutable view of the fleet, built from a Config. A reload builds a
// new snapshot (reusing unchanged boards) and swaps it in atomically.
type snapshot struct {
	cfg      *Config
	serverIP netip.Addr
	boards   map[string]*boardRT
	byMAC    map[string]*boardRT
	bySerial map[string]*boardRT
	byIP     map[netip.Addr]*boardRT
}

func newSnapshot(cfg *Config, serverIP netip.Addr, boards map[string]*boardRT) *snapshot {
	s := &snapshot{cfg: cfg, serverIP: serverIP, boards: boards,
		byMAC: map[string]*boardRT{}, bySerial: map[string]*boardRT{}, byIP: map[netip.Addr]*boardRT{}}
	for _, b := range boards {
		if b.cfg.MAC != nil {
			s.byMAC[b.cfg.MAC.String()] = b
		}
		if b.cfg.Serial != "" {
			s.bySerial[b.cfg.Serial] = b
		}
		if b.cfg.IP.IsValid() {
			s.byIP[b.cfg.IP] = b
		}
	}
	return s
}

// liveFleet implements boot.Fleet over the current snapshot. It also remembers the
// address each board without a fixed IP last booted from (learned from its TFTP and
// DHCP traffic), so such a board can still be told apart from its neighbours.
type liveFleet struct {
	cur     atomic.Pointer[snapshot]
	mu      sync.Mutex
	learned map[netip.Addr]string // address -> board name
}

func newLiveFleet() *liveFleet { return &liveFleet{learned: map[netip.Addr]string{}} }

// BoardByMAC implements boot.Fleet.
func (f *liveFleet) BoardByMAC(mac net.HardwareAddr) (*boot.Board, bool) {
	if b, ok := f.cur.Load().byMAC[mac.String()]; ok {
		return b.boot, true
	}
	return nil, false
}

// BoardBySerial implements boot.Fleet.
func (f *liveFleet) BoardBySerial(serial string) (*boot.Board, bool) {
	if b, ok := f.cur.Load().bySerial[serial]; ok {
		return b.boot, true
	}
	return nil, false
}

// BoardByIP implements boot.Fleet: a fixed IP from fleet.yaml first, then a learned one.
func (f *liveFleet) BoardByIP(ip netip.Addr) (*boot.Board, bool) {
	snap := f.cur.Load()
	if b, ok := snap.byIP[ip]; ok {
		return b.boot, true
	}
	f.mu.Lock()
	name, ok := f.learned[ip]
	f.mu.Unlock()
	if b, found := snap.boards[name]; ok && found && !b.cfg.IP.IsValid() {
		return b.boot, true
	}
	return nil, false
}

// learn records that board booted from ip, and reports whether that is news. Boards
// with a fixed IP never learn another.
func (f *liveFleet) learn(board string, ip netip.Addr) bool {
	if !ip.IsValid() || ip.IsUnspecified() {
		return false
	}
	b, ok := f.cur.Load().boards[board]
	if !ok || b.cfg.IP.IsValid() {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.learned[ip] == board {
		return false
	}
	for a, n := range f.learned {
		if n == board {
			delete(f.learned, a) // a board has one address at a time
		}
	}
	f.learned[ip] = board
	return true
}

// allows reports whether client may use board's NFS export: the board's fixed IP, or
// the address it was last seen booting from.
func (f *liveFleet) allows(board string, client netip.Addr) bool {
	b, ok := f.cur.Load().boards[board]
	if !ok {
		return false
	}
	if b.cfg.IP.IsValid() {
		return client == b.cfg.IP
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.learned[client] == board
}
