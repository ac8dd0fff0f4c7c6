package server

import (
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/neigh"
	"github.com/pifleet/pifleet/overlay"
)

// boardRT is one board's live state: its overlay and what the boot protocols see.
type boardRT struct {
	cfg    Board      // fleet.yaml's entry (its Image may be pending)
	run    imageStack // the image the board runs
	lowers []string   // identity layer, then run's layers
	fs     *overlay.FS
	boot   *boot.Board
	// pending is fleet.yaml's image while the board keeps run under its mounted root
	// (rollout.go); nil when it runs what fleet.yaml says.
	pending *imageStack
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

// liveFleet implements boot.Fleet over the current snapshot. It also holds the address
// each board without a fixed IP is bound to, on evidence tied to the board's MAC only
// (boot.Fleet): pifleet's own DHCP lease to that MAC (full mode), or the kernel's
// neighbour entry showing that MAC when a request from the address arrives (Bind, which
// TFTP calls). Addresses remembered across a restart are only candidates until the
// neighbour table confirms them again.
type liveFleet struct {
	cur    atomic.Pointer[snapshot]
	leases atomic.Pointer[leaseSource] // full mode: the DHCP server's leases

	// neigh and ifIndex confirm remembered addresses (the boot interface's neighbour
	// table); neigh is nil when netlink could not be opened.
	neigh   *neigh.Table
	ifIndex int
	// onBind, if set, is told of every new binding (the server persists it).
	onBind func(board string, ip netip.Addr)

	mu       sync.Mutex
	bound    map[netip.Addr]string    // address -> board name, on evidence
	restored map[netip.Addr]string    // remembered from before a restart, not yet confirmed
	checked  map[netip.Addr]time.Time // last neighbour check of a restored address
}

// leaseSource wraps a boot.Leases for atomic.Pointer.
type leaseSource struct{ boot.Leases }

// recheckRestored is how often an address is looked up in the neighbour table again when
// its board's NFS client calls from it: a remembered one not yet confirmed, and one bound
// on neighbour evidence (to see that it still shows the board's MAC).
const recheckRestored = time.Second

func newLiveFleet() *liveFleet {
	return &liveFleet{bound: map[netip.Addr]string{}, restored: map[netip.Addr]string{}, checked: map[netip.Addr]time.Time{}}
}

// setLeases makes full-mode DHCP leases evidence.
func (f *liveFleet) setLeases(l boot.Leases) { f.leases.Store(&leaseSource{l}) }

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

// leaseHolder returns the board whose MAC holds pifleet's lease on ip; held is false
// when there is no such lease (proxy mode, or a free address).
func (f *liveFleet) leaseHolder(snap *snapshot, ip netip.Addr) (b *boardRT, held bool) {
	l := f.leases.Load()
	if l == nil || l.Leases == nil {
		return nil, false
	}
	mac, ok := l.LeaseHolder(ip)
	if !ok {
		return nil, false
	}
	return snap.byMAC[mac.String()], true
}

// BoardByIP implements boot.Fleet: a fixed IP from fleet.yaml, pifleet's lease to the
// board's MAC, or an address bound on neighbour evidence.
func (f *liveFleet) BoardByIP(ip netip.Addr) (*boot.Board, bool) {
	snap := f.cur.Load()
	if b, ok := snap.byIP[ip]; ok {
		return b.boot, true
	}
	if b, held := f.leaseHolder(snap, ip); held {
		if b == nil {
			return nil, false
		}
		return b.boot, true
	}
	f.mu.Lock()
	name, ok := f.bound[ip]
	f.mu.Unlock()
	if b, found := snap.boards[name]; ok && found && !b.cfg.IP.IsValid() {
		return b.boot, true
	}
	return nil, false
}

// Bind implements boot.Fleet: the neighbour table shows mac at ip.
func (f *liveFleet) Bind(ip netip.Addr, mac net.HardwareAddr) (*boot.Board, bool) {
	snap := f.cur.Load()
	if b, ok := snap.byIP[ip]; ok {
		return b.boot, true
	}
	if b, held := f.leaseHolder(snap, ip); held {
		if b == nil {
			return nil, false
		}
		return b.boot, true
	}
	b, ok := snap.byMAC[mac.String()]
	if !ok || b.cfg.IP.IsValid() {
		// Not a board, or a board that belongs at its fixed IP: the address is
		// someone else's now, and whatever was bound to it no longer is.
		f.mu.Lock()
		delete(f.bound, ip)
		delete(f.restored, ip)
		f.mu.Unlock()
		return nil, false
	}
	if f.bind(b.cfg.Name, ip) && f.onBind != nil {
		f.onBind(b.cfg.Name, ip)
	}
	return b.boot, true
}

// bind records that board is at ip, and reports whether that is news. A board has one
// address at a time.
func (f *liveFleet) bind(board string, ip netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for a, n := range f.restored {
		if n == board || a == ip {
			delete(f.restored, a)
			delete(f.checked, a)
		}
	}
	if f.bound[ip] == board {
		return false
	}
	for a, n := range f.bound {
		if n == board {
			delete(f.bound, a)
		}
	}
	f.bound[ip] = board
	return true
}

// restore remembers the address a board was bound to before a restart. It grants
// nothing until the neighbour table confirms it (confirm).
func (f *liveFleet) restore(board string, ip netip.Addr) {
	if !ip.IsValid() || ip.IsUnspecified() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restored[ip] = board
}

// confirm looks a remembered address up in the neighbour table and binds it if the
// entry shows its board's MAC. It reports whether the address is now the board's.
func (f *liveFleet) confirm(board string, ip netip.Addr) bool {
	if f.neigh == nil {
		return false
	}
	b, ok := f.cur.Load().boards[board]
	if !ok || b.cfg.IP.IsValid() || b.cfg.MAC == nil {
		return false
	}
	mac, ok, err := f.neigh.Lookup(f.ifIndex, ip)
	if err != nil || !ok {
		return false
	}
	got, bound := f.Bind(ip, mac)
	return bound && got.Name == board
}

// confirmRestored checks every remembered address against the neighbour table once.
func (f *liveFleet) confirmRestored() {
	f.mu.Lock()
	todo := maps.Clone(f.restored)
	f.mu.Unlock()
	for ip, board := range todo {
		f.confirm(board, ip)
	}
}

// allows reports whether client may use board's NFS export: the board's fixed IP, the
// address pifleet leased to its MAC, or the address bound to it on neighbour evidence.
// A remembered address not yet confirmed is looked up in the neighbour table (at most
// every recheckRestored): a board whose system kept running across a server restart
// keeps its root, a host that merely has the address does not.
func (f *liveFleet) allows(board string, client netip.Addr) bool {
	snap := f.cur.Load()
	b, ok := snap.boards[board]
	if !ok {
		return false
	}
	if b.cfg.IP.IsValid() {
		return client == b.cfg.IP
	}
	if lb, held := f.leaseHolder(snap, client); held {
		return lb == b
	}
	f.mu.Lock()
	name, isBound := f.bound[client]
	due := time.Since(f.checked[client]) >= recheckRestored
	recheck := !isBound && f.restored[client] == board && due
	reverify := isBound && name == board && due
	if recheck || reverify {
		f.checked[client] = time.Now()
	}
	f.mu.Unlock()
	if reverify {
		return f.stillThere(board, client)
	}
	if isBound {
		return name == board
	}
	return recheck && f.confirm(board, client)
}

// stillThere re-reads the neighbour entry of an address bound to board on that evidence:
// when it now shows another MAC (the board left, another host took the address), the
// binding goes and so does the export. No entry, or no answer, keeps the binding: a
// running board whose entry aged out must not lose its root.
func (f *liveFleet) stillThere(board string, ip netip.Addr) bool {
	if f.neigh == nil {
		return true
	}
	mac, ok, err := f.neigh.Lookup(f.ifIndex, ip)
	if err != nil || !ok {
		return true
	}
	got, bound := f.Bind(ip, mac)
	return bound && got.Name == board
}
