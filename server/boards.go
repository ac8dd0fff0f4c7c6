package server

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/pifleet/pifleet/boot"
)

// BoardStatus is one row of `pifleet board ls` and of the status page.
type BoardStatus struct {
	Name      string       `json:"name"`
	MAC       string       `json:"mac,omitempty"`
	Serial    string       `json:"serial,omitempty"`
	IP        string       `json:"ip,omitempty"`
	Image     string       `json:"image"`                   // the image the board runs
	Pending   string       `json:"pending_image,omitempty"` // fleet.yaml's image, taken at the board's next boot
	Group     string       `json:"group,omitempty"`
	UpperSize int64        `json:"upper_bytes"`
	Mounted   bool         `json:"mounted"`
	LastBoot  *time.Time   `json:"last_boot,omitempty"`
	Reached   boot.Stage   `json:"reached,omitempty"`  // how far the last boot got
	Boots     int          `json:"boots"`              // boots remembered (at most boot.MaxBoots)
	Timeline  []boot.Event `json:"timeline,omitempty"` // the last boot's events, and the resets since it started
	Events    []boot.Event `json:"events,omitempty"`   // board events (resets), oldest first
}

// lastBootEvents is the board's last boot with the resets since it started, in time
// order: the board's timeline in the API and what the boot-stage metric reads (a reset
// ends what the boot reached, without being a boot).
func (s *Server) lastBootEvents(board string) []boot.Event {
	last, boots := s.timeline.Last(board)
	evs := last.Events
	for _, e := range s.timeline.BoardEvents(board) {
		if boots == 0 || !e.Time.Before(last.Start) {
			evs = append(evs, e)
		}
	}
	slices.SortStableFunc(evs, func(a, b boot.Event) int { return a.Time.Compare(b.Time) })
	return evs
}

// reached is how far a boot got: the furthest stage among its events.
func reached(evs []boot.Event) boot.Stage {
	var r boot.Stage
	for _, e := range evs {
		switch {
		case e.Stage == boot.StageNFS:
			return boot.StageNFS
		case e.Stage == boot.StageTFTP, r == "":
			r = e.Stage
		}
	}
	return r
}

func statusOf(b Board, upperSize int64) BoardStatus {
	s := BoardStatus{Name: b.Name, Serial: b.Serial, Image: b.Image, Group: b.Group, UpperSize: upperSize}
	if b.MAC != nil {
		s.MAC = b.MAC.String()
	}
	if b.IP.IsValid() {
		s.IP = b.IP.String()
	}
	return s
}

// Boards reports every board with its live state; withTimeline adds each last boot's events.
func (s *Server) Boards(withTimeline bool) []BoardStatus {
	s.mu.Lock()
	cfg := s.cfg
	s.mu.Unlock()
	out := make([]BoardStatus, 0, len(cfg.Boards))
	for _, b := range cfg.Boards {
		out = append(out, s.boardStatus(b, withTimeline))
	}
	return out
}

// Board reports one board with its last-boot timeline.
func (s *Server) Board(name string) (BoardStatus, bool) {
	s.mu.Lock()
	cfg := s.cfg
	s.mu.Unlock()
	for _, b := range cfg.Boards {
		if b.Name == name {
			return s.boardStatus(b, true), true
		}
	}
	return BoardStatus{}, false
}

func (s *Server) boardStatus(b Board, withTimeline bool) BoardStatus {
	bs := statusOf(b, s.sizes.get(s.state.Upper(b.Name)))
	bs.Mounted = s.nfs.Mounted(b.Name)
	if rt, ok := s.fleet.cur.Load().boards[b.Name]; ok {
		bs.Image = rt.run.Image
		if rt.pending != nil {
			bs.Pending = rt.pending.Image
		}
	}
	last, boots := s.timeline.Last(b.Name)
	bs.Boots = boots
	if boots > 0 {
		t := last.Start
		bs.LastBoot = &t
		bs.Reached = reached(last.Events)
	}
	if withTimeline {
		bs.Timeline = s.lastBootEvents(b.Name)
		bs.Events = s.timeline.BoardEvents(b.Name)
	}
	return bs
}

// sizeTTL is how long a board's measured upper size is reused: measuring walks the
// whole upper dir, and the status page refreshes every few seconds.
const sizeTTL = 30 * time.Second

// upperSizes caches DirSize per upper dir for sizeTTL.
type upperSizes struct {
	mu sync.Mutex
	m  map[string]measured
}

type measured struct {
	size int64
	at   time.Time
}

func (u *upperSizes) get(dir string) int64 { return u.getMaxAge(dir, sizeTTL) }

// getMaxAge is get with a measurement reused while younger than maxAge.
func (u *upperSizes) getMaxAge(dir string, maxAge time.Duration) int64 {
	u.mu.Lock()
	m, ok := u.m[dir]
	u.mu.Unlock()
	if ok && time.Since(m.at) < maxAge {
		return m.size
	}
	size := DirSize(dir)
	u.mu.Lock()
	if u.m == nil {
		u.m = map[string]measured{}
	}
	u.m[dir] = measured{size, time.Now()}
	u.mu.Unlock()
	return size
}

// forget drops a cached size (the board was reset).
func (u *upperSizes) forget(dir string) {
	u.mu.Lock()
	delete(u.m, dir)
	u.mu.Unlock()
}

// ResetBoard wipes a board's upper dir (and its NFS handles and identity, which are
// made afresh) while the server runs. It refuses a board with an active mount unless
// force: that board's handles then go STALE, and it must reboot.
func (s *Server) ResetBoard(name string, force bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := s.fleet.cur.Load()
	b, ok := snap.boards[name]
	if !ok {
		return fmt.Errorf("board %s: not in the fleet", name)
	}
	if s.nfs.Mounted(name) && !force {
		return fmt.Errorf("board %s: %w: power it off first, or use --force (its running system then loses its root)", name, ErrMounted)
	}
	// Detach the board first so no NFS call runs against the old upper while it moves:
	// SetExports (in install) returns only once the calls already running on the old
	// export have finished, and later ones get STALE.
	without := make(map[string]*boardRT, len(snap.boards))
	for n, x := range snap.boards {
		if n != name {
			without[n] = x
		}
	}
	s.install(newSnapshot(snap.cfg, snap.serverIP, without))
	_, resetErr := resetBoardDir(s.state, name, false)
	s.sizes.forget(s.state.Upper(name))
	rt, err := s.openBoard(snap.cfg, b.cfg, b.run)
	if err != nil {
		return fmt.Errorf("board %s: reopen after reset: %w", name, err)
	}
	rt.pending = b.pending // a reset changes no image
	without[name] = rt
	next := newSnapshot(snap.cfg, snap.serverIP, without)
	s.install(next)
	s.recordImages(next)
	s.timeline.Record(boot.Event{Board: name, MAC: macString(b.cfg), Serial: b.cfg.Serial, Stage: boot.StageReset, What: "reset"})
	s.flushHistory() // an admin's action: on disk at once, not at the next flush
	s.log.Info("board reset", "board", name, "mac", b.cfg.MAC.String(), "forced", force)
	return resetErr
}

// Diff lists what a board changed against its image.
func (s *Server) Diff(name string) ([]Change, error) {
	b, ok := s.fleet.cur.Load().boards[name]
	if !ok {
		return nil, fmt.Errorf("board %s: not in the fleet", name)
	}
	return DiffBoard(s.state.Upper(name), b.lowers)
}

// OfflineBoards reports the boards of cfg from the state dir alone (no server running).
// A board's image is the one it ran last (its image record); fleet.yaml's, when it
// differs, is pending: the server, when it starts, opens the board on the one it ran.
func OfflineBoards(cfg *Config) []BoardStatus {
	st := State{Dir: cfg.Server.State}
	out := make([]BoardStatus, 0, len(cfg.Boards))
	for _, b := range cfg.Boards {
		bs := statusOf(b, DirSize(st.Upper(b.Name)))
		if run, pending, err := offlineStacks(cfg, b); err == nil && pending != nil {
			bs.Image, bs.Pending = run.Image, pending.Image
		}
		out = append(out, bs)
	}
	return out
}

// offlineStacks is runningStack for a server that is not running: the stack the board
// ran last (its record), and fleet.yaml's when that differs.
func offlineStacks(cfg *Config, b Board) (run imageStack, pending *imageStack, err error) {
	st := State{Dir: cfg.Server.State}
	var layers []string
	if im := cfg.Images[b.Image]; im.Path != "" {
		layers = []string{im.Path} // as it is: a diff needs no boot/firmware
	} else {
		store, err := OpenStore(st.Dir, nil, nil)
		if err != nil {
			return run, nil, err
		}
		if layers, err = store.Layers(b.Image); err != nil {
			return run, nil, fmt.Errorf("board %s: %w", b.Name, err)
		}
	}
	want := imageStack{Image: b.Image, Layers: layers}
	rec, ok := readImageRecord(st, b.Name)
	if !ok || rec.same(want) || !layersExist(rec.Layers) {
		return want, nil, nil
	}
	return rec.imageStack, &want, nil
}

// OfflineReset resets a board straight on the state dir, for when no server runs. It
// holds the state dir's lock meanwhile, and refuses (a *HeldError) while pifleet serve
// holds it.
func OfflineReset(cfg *Config, name string) error {
	if !hasBoard(cfg, name) {
		return fmt.Errorf("board %s: not in %s", name, cfg.Path)
	}
	lock, err := LockOffline(cfg.Server.State)
	if err != nil {
		return fmt.Errorf("board %s: %w", name, err)
	}
	defer lock.Release()
	st := State{Dir: cfg.Server.State}
	if err := finishResets(st, discardLogger()); err != nil {
		return err
	}
	if _, err = resetBoardDir(st, name, false); err != nil {
		return err
	}
	b, _ := boardByName(cfg, name)
	return recordOffline(st, boot.Event{Board: name, MAC: macString(b), Serial: b.Serial, Stage: boot.StageReset, What: "reset"}, discardLogger())
}

func boardByName(cfg *Config, name string) (Board, bool) {
	for _, b := range cfg.Boards {
		if b.Name == name {
			return b, true
		}
	}
	return Board{}, false
}

func macString(b Board) string {
	if b.MAC == nil {
		return ""
	}
	return b.MAC.String()
}

// OfflineDiff lists a board's changes from the state dir alone.
func OfflineDiff(cfg *Config, name string) ([]Change, error) {
	b, ok := boardByName(cfg, name)
	if !ok {
		return nil, fmt.Errorf("board %s: not in %s", name, cfg.Path)
	}
	run, _, err := offlineStacks(cfg, b)
	if err != nil {
		return nil, err
	}
	st := State{Dir: cfg.Server.State}
	lowers := run.Layers
	if layersExist([]string{st.Identity(name)}) { // made at the board's first start
		lowers = append([]string{st.Identity(name)}, lowers...)
	}
	return DiffBoard(st.Upper(name), lowers)
}

// OfflineConflicts is Server.Conflicts from the state dir alone.
func OfflineConflicts(cfg *Config, name string) (Conflict, error) {
	b, ok := boardByName(cfg, name)
	if !ok {
		return Conflict{}, fmt.Errorf("board %s: not in %s", name, cfg.Path)
	}
	run, pending, err := offlineStacks(cfg, b)
	if err != nil {
		return Conflict{}, err
	}
	st := State{Dir: cfg.Server.State}
	if pending != nil {
		c, err := boardConflicts(st, name, run, *pending)
		c.Pending = true
		return c, err
	}
	rec, ok := readImageRecord(st, name)
	if !ok || rec.Previous == nil || !rec.same(run) {
		return Conflict{}, fmt.Errorf("board %s: %w: it runs image %s", name, ErrNoSwitch, run.Image)
	}
	return boardConflicts(st, name, *rec.Previous, run)
}

func hasBoard(cfg *Config, name string) bool {
	for _, b := range cfg.Boards {
		if b.Name == name {
			return true
		}
	}
	return false
}
