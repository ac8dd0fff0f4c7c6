package boot

import (
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"
)

// Stage names how far a boot got. The stages of one boot appear in this order.
type Stage string

// The stages a board passes through from power-on to its root file system.
const (
	StageDHCP  Stage = "dhcp"  // a DHCP exchange (discover/offer/request/ack)
	StageTFTP  Stage = "tftp"  // a TFTP transfer (or an existence probe)
	StageNFS   Stage = "nfs"   // the board mounted its NFS root
	StageReset Stage = "reset" // an admin reset the board: a board event, never part of a boot
)

// Agents: which program on the board sent a DHCP packet (Event.Agent).
const (
	AgentPi    = "pi"      // the Pi 4/5 EEPROM bootloader
	AgentPiROM = "pi3-rom" // the Pi 3 boot ROM
	AgentPXE   = "pxe"     // U-Boot or another PXE client
	AgentOS    = "plain"   // an ordinary DHCP client: the kernel's ip=dhcp or the booted OS
)

// Event is one step of a board's boot, as logged and as kept for the status page.
type Event struct {
	Time     time.Time     `json:"time"`
	Board    string        `json:"board"`
	MAC      string        `json:"mac,omitempty"`
	Serial   string        `json:"serial,omitempty"`
	Client   netip.Addr    `json:"client,omitzero"` // the board's address, when the packet had one
	Stage    Stage         `json:"stage"`
	What     string        `json:"what"`            // e.g. "offer", "ack", "read", "probe", "mount"
	Agent    string        `json:"agent,omitempty"` // DHCP: which program sent it (Agent*)
	File     string        `json:"file,omitempty"`  // TFTP file name as asked
	Bytes    int64         `json:"bytes,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	Err      string        `json:"error,omitempty"`
}

// Recorder receives boot events. Timeline is the implementation the server uses.
type Recorder interface {
	Record(Event)
}

// Boot is one power-on of a board as pifleet saw it: its events in the order their steps
// started, bounded.
type Boot struct {
	Start  time.Time `json:"start"`
	Events []Event   `json:"events"`
	// Dropped counts events left out to keep the boot bounded (a board retrying a
	// failing step): the first ones and the latest are kept.
	Dropped int `json:"dropped,omitempty"`
}

// Mounted reports whether the boot got as far as mounting its root.
func (b *Boot) Mounted() bool {
	for _, e := range b.Events {
		if e.Stage == StageNFS {
			return true
		}
	}
	return false
}

func (b *Boot) has(st Stage) bool {
	for _, e := range b.Events {
		if e.Stage == st {
			return true
		}
	}
	return false
}

func (b *Boot) last() time.Time {
	if len(b.Events) == 0 {
		return b.Start
	}
	return b.Events[len(b.Events)-1].Time
}

// History is what pifleet remembers of one board: its last boots, oldest first, and
// the board events that are not boot steps (resets), oldest first.
type History struct {
	Boots  []Boot  `json:"boots"`
	Events []Event `json:"events"`
}

// Bounds of a board's history. A Pi 4 boot is ~40 events (DHCP, ~30 TFTP reads, the
// kernel's DHCP, the mount), so a boot keeps that whole plus retries; older boots are
// cut shorter: at most 1472 events, under a MB, whatever a board sends.
const (
	MaxBoots            = 20  // boots kept per board
	MaxEventsPerBoot    = 256 // events of the running boot
	MaxEventsPerOldBoot = 64  // events of each earlier boot
	MaxBoardEvents      = 50  // resets and other board events kept per board
	keepHead            = 16  // first events of a boot kept when it is cut
)

// BootGap is how long a board may be silent within one boot. A TFTP request after a
// longer silence (or after the board mounted its root) is a new boot: that is how a
// boot starts when pifleet does not see the board's DHCP (server.dhcp.mode off).
const BootGap = 2 * time.Minute

// MaxUnknown bounds the table of clients seen that are not in the fleet.
const MaxUnknown = 1024

// Timeline keeps each board's recent boots and board events in memory, and the clients
// seen that are not in the fleet, all bounded. Safe for concurrent use. It tracks what
// changed since the last TakeDirty, so the server can persist only that.
//
// A boot starts with the board's first event; with a DHCP DISCOVER from the board's
// bootloader (Pi firmware, U-Boot), unless it is the kernel's own DHCP (Agent "plain")
// or the bootloader retrying before any TFTP, within BootGap in a boot that has not
// mounted its root yet; or with a TFTP request after BootGap of silence or once the
// boot has mounted its root. NFS mounts and DHCP renewals belong to the running boot.
// A reset is a board event, never a boot.
type Timeline struct {
	mu     sync.Mutex
	boards map[string]*History
	seen   map[string]*Unknown // by Sighting.key

	dirty        map[string]bool // boards changed since TakeDirty
	unknownDirty bool
	// OnEvent, if set before use, sees every recorded event (outside the lock); the
	// server uses it to learn board addresses and count metrics.
	OnEvent func(Event)
}

// NewTimeline returns an empty timeline.
func NewTimeline() *Timeline {
	return &Timeline{boards: make(map[string]*History), seen: make(map[string]*Unknown), dirty: make(map[string]bool)}
}

// startsBoot decides whether e opens a new boot after cur (see Timeline).
func startsBoot(cur *Boot, e Event) bool {
	if cur == nil {
		return true
	}
	switch e.Stage {
	case StageDHCP:
		if e.What != "discover" {
			return false
		}
		if !cur.Mounted() && e.Time.Sub(cur.last()) < BootGap {
			if e.Agent == AgentOS {
				return false // the kernel's ip=dhcp between loading the kernel and mounting root
			}
			if !cur.has(StageTFTP) {
				return false // the bootloader retrying DHCP: the same attempt
			}
		}
		return true
	case StageTFTP:
		return cur.Mounted() || e.Time.Sub(cur.last()) > BootGap
	}
	return false
}

// Record adds e to its board's history: a reset as a board event, anything else to the
// running boot or as the start of a new one.
func (t *Timeline) Record(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	t.mu.Lock()
	h := t.boards[e.Board]
	if h == nil {
		h = &History{}
		t.boards[e.Board] = h
	}
	t.dirty[e.Board] = true
	if e.Stage == StageReset {
		h.Events = append(h.Events, e)
		if len(h.Events) > MaxBoardEvents {
			h.Events = slices.Delete(h.Events, 0, len(h.Events)-MaxBoardEvents)
		}
	} else {
		var cur *Boot
		if n := len(h.Boots); n > 0 {
			cur = &h.Boots[n-1]
		}
		if startsBoot(cur, e) {
			if cur != nil {
				trimBoot(cur, MaxEventsPerOldBoot)
			}
			h.Boots = append(h.Boots, Boot{Start: e.Time})
			if len(h.Boots) > MaxBoots {
				h.Boots = slices.Delete(h.Boots, 0, len(h.Boots)-MaxBoots)
			}
			cur = &h.Boots[len(h.Boots)-1]
		}
		if len(cur.Events) >= MaxEventsPerBoot {
			trimBoot(cur, MaxEventsPerBoot*3/4)
		}
		// Keep the boot in order of when each step started: a TFTP transfer is recorded
		// when it ends, so a short one that started later can arrive first.
		i := len(cur.Events)
		for i > 0 && cur.Events[i-1].Time.After(e.Time) {
			i--
		}
		cur.Events = slices.Insert(cur.Events, i, e)
		if e.Time.Before(cur.Start) {
			cur.Start = e.Time
		}
	}
	t.mu.Unlock()
	if t.OnEvent != nil {
		t.OnEvent(e)
	}
}

// trimBoot cuts b to at most n events, keeping the first keepHead and the latest.
func trimBoot(b *Boot, n int) {
	if len(b.Events) <= n {
		return
	}
	head := min(keepHead, n/2)
	cut := len(b.Events) - n
	b.Events = slices.Delete(b.Events, head, head+cut)
	b.Dropped += cut
}

// LastBoot returns a copy of the events of the board's last boot, oldest first.
func (t *Timeline) LastBoot(board string) []Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.boards[board]
	if h == nil || len(h.Boots) == 0 {
		return nil
	}
	return slices.Clone(h.Boots[len(h.Boots)-1].Events)
}

// Last returns a copy of the board's last boot and how many boots are remembered
// (0: none, and last is the zero Boot).
func (t *Timeline) Last(board string) (last Boot, boots int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.boards[board]
	if h == nil || len(h.Boots) == 0 {
		return Boot{}, 0
	}
	last = h.Boots[len(h.Boots)-1]
	last.Events = slices.Clone(last.Events)
	return last, len(h.Boots)
}

// BoardEvents returns a copy of the board's events that are not boot steps (resets),
// oldest first.
func (t *Timeline) BoardEvents(board string) []Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h := t.boards[board]; h != nil {
		return slices.Clone(h.Events)
	}
	return nil
}

// History returns a deep copy of the board's history.
func (t *Timeline) History(board string) History {
	t.mu.Lock()
	defer t.mu.Unlock()
	return copyHistory(t.boards[board])
}

func copyHistory(h *History) History {
	out := History{Boots: []Boot{}, Events: []Event{}}
	if h == nil {
		return out
	}
	for _, b := range h.Boots {
		b.Events = slices.Clone(b.Events)
		out.Boots = append(out.Boots, b)
	}
	out.Events = append(out.Events, h.Events...)
	return out
}

// Restore installs a board's history read back from disk (at start, before any event),
// cut to the bounds.
func (t *Timeline) Restore(board string, h History) {
	h = copyHistory(&h)
	if len(h.Boots) > MaxBoots {
		h.Boots = h.Boots[len(h.Boots)-MaxBoots:]
	}
	for i := range h.Boots {
		b := &h.Boots[i]
		sort.SliceStable(b.Events, func(x, y int) bool { return b.Events[x].Time.Before(b.Events[y].Time) })
		for j := range b.Events {
			b.Events[j].Board = board
		}
		limit := MaxEventsPerOldBoot
		if i == len(h.Boots)-1 {
			limit = MaxEventsPerBoot
		}
		trimBoot(b, limit)
	}
	if len(h.Events) > MaxBoardEvents {
		h.Events = h.Events[len(h.Events)-MaxBoardEvents:]
	}
	for j := range h.Events {
		h.Events[j].Board = board
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.boards[board] = &h
}

// Forget drops a board's history (the board was removed from the fleet).
func (t *Timeline) Forget(board string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.boards, board)
	t.dirty[board] = true
}

// TakeDirty returns the boards whose history changed since the last call (a forgotten
// board included: it has no history now) and whether the unknown clients changed, and
// starts tracking afresh.
func (t *Timeline) TakeDirty() (boards []string, unknown bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for b := range t.dirty {
		boards = append(boards, b)
	}
	clear(t.dirty)
	unknown, t.unknownDirty = t.unknownDirty, false
	sort.Strings(boards)
	return boards, unknown
}

// MarkDirty makes the next TakeDirty report board (and the unknown clients, if unknown)
// again: the server calls it when writing them failed.
func (t *Timeline) MarkDirty(boards []string, unknown bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range boards {
		t.dirty[b] = true
	}
	t.unknownDirty = t.unknownDirty || unknown
}

// Unknown is a boot client that is not in the fleet: it asked, pifleet did not answer.
type Unknown struct {
	MAC       string     `json:"mac,omitempty"`    // empty for a TFTP client whose MAC is not known
	IP        netip.Addr `json:"ip,omitzero"`      // the address it last asked from (TFTP, DHCP ciaddr)
	Serial    string     `json:"serial,omitempty"` // option 97, or a TFTP serial prefix: what it says, not evidence
	Model     string     `json:"model,omitempty"`  // e.g. "Raspberry Pi 4", from option 97
	Via       []string   `json:"via"`              // the protocols it was seen on: "dhcp", "tftp"
	FirstSeen time.Time  `json:"first_seen"`
	LastSeen  time.Time  `json:"last_seen"`
	Count     int        `json:"count"`
}

// Sighting is one request from a client that is not in the fleet.
type Sighting struct {
	Via    string // "dhcp" or "tftp"
	MAC    net.HardwareAddr
	IP     netip.Addr
	Serial string
	Model  string
	Time   time.Time // now when zero
}

// key is how the table tells clients apart: the MAC when known, else the address.
func (s Sighting) key() string {
	if len(s.MAC) > 0 {
		return s.MAC.String()
	}
	return "ip " + s.IP.String()
}

// SeenUnknown remembers a client that is not in the fleet by its MAC, without saying
// which protocol saw it (see Seen). It reports whether this MAC is new, so callers log
// it once per MAC rather than once per packet.
func (t *Timeline) SeenUnknown(mac net.HardwareAddr, serial, model string) (first bool) {
	return t.Seen(Sighting{MAC: mac, Serial: serial, Model: model})
}

// Seen remembers a client that is not in the fleet and reports whether it is new. A
// TFTP client known only by its address joins the entry of a DHCP client that gave the
// same serial. The table is bounded (MaxUnknown): when full, the least recently seen
// eighth is dropped.
func (t *Timeline) Seen(s Sighting) (first bool) {
	if s.Time.IsZero() {
		s.Time = time.Now()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.unknownDirty = true
	k := s.key()
	u, ok := t.seen[k]
	if !ok && len(s.MAC) == 0 && s.Serial != "" {
		for _, x := range t.seen {
			if x.Serial == s.Serial && x.MAC != "" {
				u, ok = x, true
				break
			}
		}
	}
	if !ok {
		if len(t.seen) >= MaxUnknown {
			t.evictLocked(MaxUnknown / 8)
		}
		u = &Unknown{FirstSeen: s.Time}
		if len(s.MAC) > 0 {
			u.MAC = s.MAC.String()
		}
		t.seen[k] = u
	}
	u.LastSeen = s.Time
	u.Count++
	if s.IP.IsValid() && !s.IP.IsUnspecified() {
		u.IP = s.IP
	}
	if s.Serial != "" && (u.Serial == "" || s.Via == "dhcp") {
		u.Serial = s.Serial
	}
	if s.Model != "" {
		u.Model = s.Model
	}
	if s.Via != "" && !slices.Contains(u.Via, s.Via) {
		u.Via = append(u.Via, s.Via)
		sort.Strings(u.Via)
	}
	return !ok
}

// evictLocked drops the n least recently seen clients in one pass: evicting one entry
// per new client would scan the whole table for every new client of a flood.
func (t *Timeline) evictLocked(n int) {
	type kv struct {
		k string
		u *Unknown
	}
	all := make([]kv, 0, len(t.seen))
	for k, x := range t.seen {
		all = append(all, kv{k, x})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].u.LastSeen.Before(all[j].u.LastSeen) })
	for _, x := range all[:min(n, len(all))] {
		delete(t.seen, x.k)
	}
}

// Unknowns lists the clients seen that are not in the fleet, most recently seen first.
func (t *Timeline) Unknowns() []Unknown {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Unknown, 0, len(t.seen))
	for _, u := range t.seen {
		c := *u
		c.Via = append([]string{}, u.Via...)
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].LastSeen.Equal(out[j].LastSeen) {
			return out[i].LastSeen.After(out[j].LastSeen)
		}
		return out[i].MAC+out[i].IP.String() < out[j].MAC+out[j].IP.String()
	})
	return out
}

// RestoreUnknown installs clients read back from disk (at start), keeping the most
// recently seen MaxUnknown.
func (t *Timeline) RestoreUnknown(us []Unknown) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, u := range us {
		s := Sighting{IP: u.IP}
		if u.MAC != "" {
			mac, err := net.ParseMAC(u.MAC)
			if err != nil {
				continue
			}
			s.MAC = mac
			u.MAC = mac.String()
		} else if !u.IP.IsValid() {
			continue
		}
		c := u
		c.Via = slices.Clone(u.Via)
		t.seen[s.key()] = &c
	}
	if len(t.seen) > MaxUnknown {
		t.evictLocked(len(t.seen) - MaxUnknown)
	}
}

// ForgetUnknown drops a client from the unknown table (it was added to the fleet).
func (t *Timeline) ForgetUnknown(mac net.HardwareAddr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.seen[mac.String()]; ok {
		delete(t.seen, mac.String())
		t.unknownDirty = true
	}
}
