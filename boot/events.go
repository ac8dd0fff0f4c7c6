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
	StageReset Stage = "reset" // an admin reset the board
)

// Event is one step of a board's boot, as logged and as kept for the status page.
type Event struct {
	Time     time.Time     `json:"time"`
	Board    string        `json:"board"`
	MAC      string        `json:"mac,omitempty"`
	Serial   string        `json:"serial,omitempty"`
	Client   netip.Addr    `json:"client,omitzero"` // the board's address, when the packet had one
	Stage    Stage         `json:"stage"`
	What     string        `json:"what"`           // e.g. "offer", "ack", "read", "probe", "mount"
	File     string        `json:"file,omitempty"` // TFTP file name as asked
	Bytes    int64         `json:"bytes,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	Err      string        `json:"error,omitempty"`
}

// Recorder receives boot events. Timeline is the implementation the server uses.
type Recorder interface {
	Record(Event)
}

// maxEventsPerBoard bounds one board's timeline: a Pi 4 boot is ~30 TFTP reads, so this
// keeps a whole boot plus retries while keeping memory per board small.
const maxEventsPerBoard = 256

// Timeline keeps each board's last boot in memory: the events since its most recent
// DHCP discover (or first event), bounded per board. Safe for concurrent use.
type Timeline struct {
	mu     sync.Mutex
	boards map[string][]Event
	seen   map[string]*Unknown // by MAC string
	// OnEvent, if set before use, sees every recorded event (outside the lock); the
	// server uses it to learn board addresses and count metrics.
	OnEvent func(Event)
}

// NewTimeline returns an empty timeline.
func NewTimeline() *Timeline {
	return &Timeline{boards: make(map[string][]Event), seen: make(map[string]*Unknown)}
}

// Record appends e to its board's timeline. A DHCP "discover" starts a new boot and
// drops the previous one's events.
func (t *Timeline) Record(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	t.mu.Lock()
	evs := t.boards[e.Board]
	if e.Stage == StageDHCP && e.What == "discover" {
		evs = evs[:0]
	}
	if len(evs) >= maxEventsPerBoard {
		evs = append(evs[:0], evs[len(evs)-maxEventsPerBoard/2:]...)
	}
	// Keep the timeline in order of when each step started: a TFTP transfer is recorded
	// when it ends, so a short one that started later can arrive first.
	i := len(evs)
	for i > 0 && evs[i-1].Time.After(e.Time) {
		i--
	}
	evs = slices.Insert(evs, i, e)
	t.boards[e.Board] = evs
	t.mu.Unlock()
	if t.OnEvent != nil {
		t.OnEvent(e)
	}
}

// LastBoot returns a copy of the board's last-boot timeline, oldest first.
func (t *Timeline) LastBoot(board string) []Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Event(nil), t.boards[board]...)
}

// Forget drops a board's timeline (the board was removed from the fleet).
func (t *Timeline) Forget(board string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.boards, board)
}

// Unknown is a boot client that is not in the fleet: it asked, pifleet did not answer.
type Unknown struct {
	MAC       string    `json:"mac"`
	Serial    string    `json:"serial,omitempty"` // from option 97, when it sent one
	Model     string    `json:"model,omitempty"`  // e.g. "Raspberry Pi 4", from option 97
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Count     int       `json:"count"`
}

// SeenUnknown remembers a client that is not in the fleet. It reports whether this MAC
// is new, so callers log it once per MAC rather than once per packet. The table is
// bounded: past maxUnknown MACs the oldest entry is dropped.
func (t *Timeline) SeenUnknown(mac net.HardwareAddr, serial, model string) (first bool) {
	const maxUnknown = 1024
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	k := mac.String()
	u, ok := t.seen[k]
	if !ok {
		if len(t.seen) >= maxUnknown {
			// Drop the oldest eighth in one pass: evicting one entry per new MAC
			// scanned the whole table for every new client of a flood (or a full-mode
			// pool under load), which cost more than answering it.
			all := make([]*Unknown, 0, len(t.seen))
			for _, x := range t.seen {
				all = append(all, x)
			}
			sort.Slice(all, func(i, j int) bool { return all[i].LastSeen.Before(all[j].LastSeen) })
			for _, x := range all[:maxUnknown/8] {
				delete(t.seen, x.MAC)
			}
		}
		u = &Unknown{MAC: k, FirstSeen: now}
		t.seen[k] = u
	}
	u.LastSeen = now
	u.Count++
	if serial != "" {
		u.Serial = serial
	}
	if model != "" {
		u.Model = model
	}
	return !ok
}

// Unknowns lists the clients seen that are not in the fleet.
func (t *Timeline) Unknowns() []Unknown {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Unknown, 0, len(t.seen))
	for _, u := range t.seen {
		out = append(out, *u)
	}
	return out
}
