package dhcp

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Full mode's leases: who holds which address until when, kept in memory and
// persisted to Config.LeaseFile so a restart neither forgets nor double-assigns.
//
// Persistence rule: an address is only ACKed (or, for the Pi 3 ROM that never
// REQUESTs, OFFERed) once the lease record is on disk (written and fsynced). OFFERs
// are not persisted: they are short in-memory reservations (RFC 2131 section 4.3.1
// lets a server keep offers in memory; a client that never REQUESTs has no lease).
//
// The file is an append-only log of JSON lines, last record per MAC wins, rewritten
// (temp file, fsync, rename, fsync of the directory) when it grows to several times
// the live lease count. Records are written in groups: every ACK waits for an fsync,
// but concurrent ACKs share one, which is what lets full mode outrun dnsmasq (which
// rewrites its whole lease file per change).

// Invariant: no address is ever leased to two MACs. bind refuses an address another
// MAC holds (a live lease or an unexpired offer) unless told to take it over, and
// then ends the other lease in the same batch; load keeps the last record per address.

// offerHold is how long an offered pool address stays reserved for its client if it
// does not REQUEST it: long enough for a slow client's retries, short enough that a
// flood of DISCOVERs from made-up MACs frees the pool again quickly.
const offerHold = 30 * time.Second

// errTaken is bind's answer when another MAC holds the address.
var errTaken = errors.New("address held by another client")

// lease is one client's address. A zero Expires means released.
type lease struct {
	MAC     string     `json:"mac"`
	IP      netip.Addr `json:"ip"`
	Expires time.Time  `json:"expires"`
	Board   string     `json:"board,omitempty"`
}

// offer is a pool address held for a client between OFFER and REQUEST.
type offer struct {
	mac   string
	until time.Time
	board bool // offered to a board of the fleet: a flood of others cannot take it
}

// leaseTable is the in-memory lease state plus its log. Safe for concurrent use.
type leaseTable struct {
	mu     sync.Mutex
	byMAC  map[string]*lease
	byIP   map[netip.Addr]string // holder MAC of an unexpired or released-but-remembered lease
	offers map[netip.Addr]offer
	// offerOf indexes offers by MAC: a busy pool has thousands outstanding.
	offerOf map[string]netip.Addr
	// sweepAt is the offer count past which expired offers are swept; it doubles
	// with the live count so sweeping stays amortised O(1) per offer.
	sweepAt int
	next    netip.Addr // where the next pool scan starts, so allocation is round-robin
	log     *leaseLog
}

// openLeases loads path (if it exists) and opens it for appending.
func openLeases(path string, now time.Time) (*leaseTable, error) {
	t := &leaseTable{
		byMAC:   make(map[string]*lease),
		byIP:    make(map[netip.Addr]string),
		offers:  make(map[netip.Addr]offer),
		offerOf: make(map[string]netip.Addr),
		sweepAt: 4096,
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("lease file: %w", err)
	}
	lines, err := t.load(path, now)
	if err != nil {
		return nil, err
	}
	t.log = &leaseLog{path: path, snapshot: t.snapshot, count: t.count, lines: lines}
	t.log.cond = sync.NewCond(&t.log.mu)
	t.log.open = &leaseBatch{}
	// Compact on start: drops expired and superseded records from the last run.
	if err := t.log.rewrite(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *leaseTable) load(path string, now time.Time) (lines int, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("lease file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines++
		var l lease
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil || !l.IP.Is4() || l.MAC == "" {
			// A torn last line after a crash is expected; anything else is skipped
			// rather than refusing to start the boot service.
			continue
		}
		if old, ok := t.byMAC[l.MAC]; ok && t.byIP[old.IP] == l.MAC {
			delete(t.byIP, old.IP)
		}
		if !l.Expires.After(now) {
			delete(t.byMAC, l.MAC)
			continue
		}
		// One MAC per address: a later record for the address ends an earlier
		// holder's lease (a file written before the invariant held may have two).
		if other, ok := t.byIP[l.IP]; ok && other != l.MAC {
			delete(t.byMAC, other)
		}
		t.byMAC[l.MAC] = &l
		t.byIP[l.IP] = l.MAC
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("lease file %s: %w", path, err)
	}
	return lines, nil
}

// snapshot returns the live leases, for compaction.
func (t *leaseTable) snapshot() []lease {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]lease, 0, len(t.byMAC))
	for _, l := range t.byMAC {
		out = append(out, *l)
	}
	return out
}

func (t *leaseTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byMAC)
}

// holder reports who holds ip: a live lease, or an offer not yet expired.
// Caller holds t.mu.
func (t *leaseTable) holder(ip netip.Addr, now time.Time) (mac string, held bool) {
	if m, ok := t.byIP[ip]; ok {
		if l := t.byMAC[m]; l != nil && l.IP == ip && l.Expires.After(now) {
			return m, true
		}
	}
	if o, ok := t.offers[ip]; ok && o.until.After(now) {
		return o.mac, true
	}
	return "", false
}

// pick chooses a pool address for mac: its current (or last, still free) lease, then
// the address it asked for, then the next free one round-robin, and for a board of
// the fleet (board) when the pool is full, an address offered to a client that is not
// a board (its offer ends; its REQUEST gets a NAK). usable filters out addresses that
// belong to something else (fixed board IPs, the server, the router).
// Caller holds t.mu.
func (t *leaseTable) pick(mac string, board bool, requested, start, end netip.Addr, now time.Time, usable func(netip.Addr) bool) (netip.Addr, bool) {
	inPool := func(a netip.Addr) bool {
		return a.IsValid() && start.Compare(a) <= 0 && a.Compare(end) <= 0 && usable(a)
	}
	free := func(a netip.Addr) bool {
		h, held := t.holder(a, now)
		return !held || h == mac
	}
	if l := t.byMAC[mac]; l != nil && inPool(l.IP) && free(l.IP) {
		return l.IP, true
	}
	if a, ok := t.offerOf[mac]; ok {
		if o := t.offers[a]; o.mac == mac && o.until.After(now) && inPool(a) {
			return a, true
		}
	}
	if inPool(requested) && free(requested) {
		return requested, true
	}
	a := t.next
	if !inPool(a) {
		a = start
	}
	for first := a; ; {
		if usable(a) && free(a) {
			t.next = a.Next()
			return a, true
		}
		a = a.Next()
		if a.Compare(end) > 0 || !a.IsValid() {
			a = start
		}
		if a == first {
			break
		}
	}
	if board {
		for a, o := range t.offers {
			if !o.board && o.mac != declined && o.until.After(now) && inPool(a) {
				if m, ok := t.byIP[a]; ok && m != o.mac {
					if l := t.byMAC[m]; l != nil && l.IP == a && l.Expires.After(now) {
						continue
					}
				}
				t.dropOffer(a)
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// reserve holds ip for mac between OFFER and REQUEST; board marks a board of the
// fleet. Caller holds t.mu.
func (t *leaseTable) reserve(mac string, board bool, ip netip.Addr, now time.Time) {
	if len(t.offers) > t.sweepAt {
		for a, o := range t.offers {
			if !o.until.After(now) {
				t.dropOffer(a)
			}
		}
		t.sweepAt = max(4096, 2*len(t.offers))
	}
	if old, ok := t.offerOf[mac]; ok {
		t.dropOffer(old)
	}
	t.dropOffer(ip) // an expired offer to someone else
	t.offers[ip] = offer{mac: mac, until: now.Add(offerHold), board: board}
	t.offerOf[mac] = ip
}

// dropOffer forgets the offer of ip. Caller holds t.mu.
func (t *leaseTable) dropOffer(ip netip.Addr) {
	if o, ok := t.offers[ip]; ok {
		if t.offerOf[o.mac] == ip {
			delete(t.offerOf, o.mac)
		}
		delete(t.offers, ip)
	}
}

// dropOfferOf forgets what was offered to mac (it chose another server).
func (t *leaseTable) dropOfferOf(mac string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a, ok := t.offerOf[mac]; ok {
		t.dropOffer(a)
	}
}

// hold keeps ip out of the pool until the given time (a DECLINEd address).
func (t *leaseTable) hold(ip netip.Addr, until time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dropOffer(ip)
	t.offers[ip] = offer{mac: declined, until: until}
}

// declined is the holder of an address a client DECLINEd.
const declined = "declined"

// bind records a lease in memory and queues its record; the caller must wait on the
// returned batch before telling the client. If another MAC holds l.IP at now (a live
// lease or an unexpired offer), bind refuses with errTaken, unless takeover is set
// (the address is the fixed IP fleet.yaml gives this very MAC): then the other lease
// ends, in the same batch, before this one starts; ended names its MAC if it was
// live. Caller must NOT hold t.mu.
func (t *leaseTable) bind(l lease, now time.Time, takeover bool) (b *leaseBatch, ended string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h, held := t.holder(l.IP, now)
	if held && h != l.MAC {
		if !takeover {
			return nil, "", errTaken
		}
		if h != declined {
			ended = h
		}
	}
	t.dropOffer(l.IP) // ours (now a lease), expired, or taken over
	if m, ok := t.byIP[l.IP]; ok && m != l.MAC {
		// An expired lease, or one taken over: end it on disk too, so that the file
		// never holds two live leases for one address.
		if o := t.byMAC[m]; o != nil && o.IP == l.IP {
			delete(t.byMAC, m)
			t.log.enqueue(lease{MAC: m, IP: l.IP, Board: o.Board})
		}
	}
	if old := t.byMAC[l.MAC]; old != nil && old.IP != l.IP && t.byIP[old.IP] == l.MAC {
		delete(t.byIP, old.IP)
	}
	t.byMAC[l.MAC] = &l
	t.byIP[l.IP] = l.MAC
	// Queued under t.mu so log order equals memory order for the same MAC.
	return t.log.enqueue(l), ended, nil
}

// release ends mac's lease on ip (DHCPRELEASE/DHCPDECLINE); nil when there is none.
func (t *leaseTable) release(mac string, ip netip.Addr) *leaseBatch {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byMAC[mac]
	if l == nil || l.IP != ip {
		return nil
	}
	delete(t.byMAC, mac)
	if t.byIP[ip] == mac {
		delete(t.byIP, ip)
	}
	return t.log.enqueue(lease{MAC: mac, IP: ip, Board: l.Board})
}

// lookup returns mac's live lease.
func (t *leaseTable) lookup(mac string, now time.Time) (lease, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byMAC[mac]
	if l == nil || !l.Expires.After(now) {
		return lease{}, false
	}
	return *l, true
}

// live returns the unexpired leases (for the status page), unordered.
func (t *leaseTable) live(now time.Time) []lease {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]lease, 0, len(t.byMAC))
	for _, l := range t.byMAC {
		if l.Expires.After(now) {
			out = append(out, *l)
		}
	}
	return out
}

func (t *leaseTable) close() error { return t.log.close() }

// leaseBatch is a group of records written and fsynced together.
type leaseBatch struct {
	recs []lease
	done bool
	err  error
}

// leaseLog is the append-only lease file with group commit: the first waiter of a
// batch that finds no write in progress writes it; the others wait for it.
type leaseLog struct {
	path     string
	snapshot func() []lease
	count    func() int // live lease count, cheaper than a snapshot

	mu       sync.Mutex
	cond     *sync.Cond
	open     *leaseBatch // collecting records
	flushing bool
	f        *os.File
	lines    int // records in the file now (decides compaction)
	records  int // records written since start
	batches  int // fsyncs since start: records/batches is the group-commit factor
	closed   bool
}

func (g *leaseLog) enqueue(l lease) *leaseBatch {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open.recs = append(g.open.recs, l)
	return g.open
}

// wait returns once b is on disk, or with the error that kept it off.
func (g *leaseLog) wait(b *leaseBatch) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for !b.done {
		if g.flushing {
			g.cond.Wait()
			continue
		}
		// Not done and nobody writing: b is the open batch. Write it.
		g.flushing = true
		g.open = &leaseBatch{}
		g.mu.Unlock()
		err := g.write(b.recs)
		g.mu.Lock()
		b.err, b.done = err, true
		g.flushing = false
		g.cond.Broadcast()
	}
	return b.err
}

// write appends recs and fsyncs; only one writer runs at a time (flushing).
func (g *leaseLog) write(recs []lease) error {
	if g.closed {
		return errors.New("lease file closed")
	}
	buf := make([]byte, 0, 96*len(recs))
	for _, r := range recs {
		j, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("lease record: %w", err)
		}
		buf = append(append(buf, j...), '\n')
	}
	if _, err := g.f.Write(buf); err != nil {
		return fmt.Errorf("lease file %s: %w", g.path, err)
	}
	if err := g.f.Sync(); err != nil {
		return fmt.Errorf("lease file %s: fsync: %w", g.path, err)
	}
	g.lines += len(recs)
	g.records += len(recs)
	g.batches++
	if g.lines > 4*g.count()+1024 {
		return g.rewrite()
	}
	return nil
}

// rewrite replaces the file with one record per live lease, atomically: a crash
// leaves either the old log or the new one, never a mix.
func (g *leaseLog) rewrite() error {
	dir := filepath.Dir(g.path)
	tmp, err := os.CreateTemp(dir, filepath.Base(g.path)+".tmp*")
	if err != nil {
		return fmt.Errorf("lease file: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	w := bufio.NewWriter(tmp)
	snap := g.snapshot()
	for _, r := range snap {
		j, err := json.Marshal(r)
		if err != nil {
			tmp.Close()
			return fmt.Errorf("lease record: %w", err)
		}
		w.Write(j)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return fmt.Errorf("lease file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("lease file %s: fsync: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("lease file %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), g.path); err != nil {
		return fmt.Errorf("lease file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the rename durable; best effort where dirs cannot be synced
		d.Close()
	}
	f, err := os.OpenFile(g.path, os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("lease file: %w", err)
	}
	if g.f != nil {
		g.f.Close()
	}
	g.f, g.lines = f, len(snap)
	return nil
}

func (g *leaseLog) close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.flushing {
		g.cond.Wait()
	}
	g.closed = true
	if g.f == nil {
		return nil
	}
	err := g.f.Close()
	g.f = nil
	return err
}
