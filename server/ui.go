package server

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/images"
)

// The web UI: server-rendered pages for people (fleet overview, a page per board, the
// images), live through one Server-Sent Events stream and complete without JavaScript
// (the pages reload themselves then). It reads the same state as the JSON API; its one
// state-changing action, a board reset, is a form with a confirmation step.

//go:embed ui
var uiFiles embed.FS

// stallAfter is how long a boot may sit at one step before the UI calls it stalled: a
// Pi's firmware asks its next TFTP file within seconds, and a kernel mounts its NFS
// root well within a minute of being loaded.
const stallAfter = 60 * time.Second

// SSE bounds: at most uiMaxSubscribers open streams, uiMaxPerPeer of them from one
// address (so one host cannot take every slot); each has room for uiSubBuffer events,
// and one that falls that far behind (its client reads too slowly) is dropped. Its
// browser reconnects by itself.
const (
	uiMaxSubscribers = 64
	uiMaxPerPeer     = 8
	uiSubBuffer      = 64
	uiRefresh        = 5 * time.Second        // re-render even without events: "stalled for" ages
	uiMinInterval    = 250 * time.Millisecond // between two renders of one stream
	uiWriteTimeout   = 10 * time.Second       // a stream write that takes longer ends the stream
)

// webUI holds the UI's templates, its live-update hub and the key of its CSRF tokens.
type webUI struct {
	s     *Server
	pages map[string]*template.Template
	hub   *uiHub
	key   []byte // HMAC key for the forms' CSRF tokens; new on every start
}

func newWebUI(s *Server) *webUI {
	u := &webUI{s: s, hub: newUIHub(uiMaxSubscribers, uiMaxPerPeer, uiSubBuffer), key: make([]byte, 32), pages: map[string]*template.Template{}}
	rand.Read(u.key)
	funcs := template.FuncMap{
		"bytes": images.HumanBytes,
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return roundAge(time.Since(t)) + " ago"
		},
		"age":   roundAge,
		"clock": func(t time.Time) string { return t.Format("15:04:05") },
		"since": func(t, start time.Time) string { return "+" + t.Sub(start).Round(10*time.Millisecond).String() },
		"dur": func(d time.Duration) string {
			if d == 0 {
				return ""
			}
			return d.Round(time.Millisecond).String()
		},
	}
	for _, p := range []string{"fleet", "board", "confirm", "images", "adopt"} {
		u.pages[p] = template.Must(template.New(p).Funcs(funcs).ParseFS(uiFiles, "ui/layout.html", "ui/"+p+".html"))
	}
	return u
}

// roundAge prints a duration the way an admin reads it: 45s, 3m12s, 2h5m.
func roundAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
}

// register adds the UI's routes to mux.
func (u *webUI) register(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", u.handleFleet)
	mux.HandleFunc("GET /boards/{name}", u.handleBoard)
	mux.HandleFunc("POST /boards/{name}/reset", u.handleReset)
	mux.HandleFunc("GET /images", u.handleImages)
	mux.HandleFunc("POST /adopt", u.handleAdopt)
	mux.HandleFunc("GET /events", u.handleEvents)
	mux.HandleFunc("GET /ui.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		http.ServeFileFS(w, r, uiFiles, "ui/ui.js")
	})
}

// BoardState is what a board is doing now, as the UI derives it from its last boot's
// events and its NFS mount.
type BoardState struct {
	Kind string        // "off", "booting", "up" or "stalled"
	Step string        // the step a booting or stalled board is at, e.g. "TFTP start4.elf"
	For  time.Duration // how long a stalled board has been at Step
	Err  string        // the step's error, when it failed
}

// deriveState reads a board's state from its last boot's events (oldest first) and
// whether its NFS root is mounted now.
func deriveState(evs []boot.Event, mounted bool, now time.Time) BoardState {
	if mounted {
		return BoardState{Kind: "up", Step: "NFS root mounted"}
	}
	if len(evs) == 0 {
		return BoardState{Kind: "off"}
	}
	last := evs[len(evs)-1]
	switch {
	case last.Stage == boot.StageReset:
		return BoardState{Kind: "off", Step: "reset"}
	case slices.ContainsFunc(evs, func(e boot.Event) bool { return e.Stage == boot.StageNFS }):
		return BoardState{Kind: "off", Step: "NFS root no longer mounted"}
	}
	st := BoardState{Kind: "booting", Step: stepName(last)}
	if idle := now.Sub(last.Time.Add(last.Duration)); idle >= stallAfter {
		st.Kind, st.For, st.Err = "stalled", idle, last.Err
	}
	return st
}

// essentialMissing reports a TFTP read of a file a boot cannot do without that the image
// lacks. A Pi probes many optional files (bootsig.bin, overlays, pieeprom.upd) that are
// missing in a good image; these are not.
func essentialMissing(e boot.Event) bool {
	if e.Stage != boot.StageTFTP || e.What != "missing" {
		return false
	}
	base := e.File[strings.LastIndexByte(e.File, '/')+1:]
	switch base {
	case "start.elf", "start4.elf", "fixup.dat", "fixup4.dat", "config.txt", "cmdline.txt":
		return true
	}
	return strings.HasPrefix(base, "kernel") && strings.HasSuffix(base, ".img")
}

// failingStep picks the event of a boot to highlight: the last failed transfer, else the
// last essential file found missing, else the step a stalled boot sits at; -1 for none.
func failingStep(evs []boot.Event, st BoardState) int {
	if i := lastIndex(evs, func(e boot.Event) bool { return e.What == "error" }); i >= 0 {
		return i
	}
	if i := lastIndex(evs, essentialMissing); i >= 0 {
		return i
	}
	if st.Kind == "stalled" {
		return len(evs) - 1
	}
	return -1
}

func lastIndex(evs []boot.Event, f func(boot.Event) bool) int {
	for i := len(evs) - 1; i >= 0; i-- {
		if f(evs[i]) {
			return i
		}
	}
	return -1
}

// stepName names an event as a boot step: "DHCP ack", "TFTP start4.elf".
func stepName(e boot.Event) string {
	switch e.Stage {
	case boot.StageTFTP:
		if e.What == "probe" {
			return "TFTP probe " + e.File
		}
		return "TFTP " + e.File
	case boot.StageDHCP:
		return "DHCP " + e.What
	case boot.StageNFS:
		return "NFS " + e.What
	}
	return string(e.Stage) + " " + e.What
}

// hints says what to check when a boot is stuck or never started, from the pitfalls in
// PI-BOOT.md (boot order, serial, proxy + U-Boot, missing firmware).
func hints(st BoardState, evs []boot.Event, proxy bool) []string {
	if st.Kind == "up" || (st.Kind == "off" && len(evs) > 0 && !slices.ContainsFunc(evs, essentialMissing)) {
		return nil
	}
	var out []string
	sawDHCP := slices.ContainsFunc(evs, func(e boot.Event) bool { return e.Stage == boot.StageDHCP })
	sawTFTP := slices.ContainsFunc(evs, func(e boot.Event) bool { return e.Stage == boot.StageTFTP && e.Err == "" })
	switch {
	case len(evs) == 0:
		out = append(out, "If this board is powered on: no DHCP or TFTP request has named it. Check the EEPROM boot order: BOOT_ORDER must contain 2 (network), e.g. 0xf21 (rpi-eeprom-config).",
			"Check the board's MAC and serial in fleet.yaml against what it sends: an unknown client under \"Seen, not in fleet\" with this board's MAC or serial is a typo.")
	case st.Kind == "stalled" && sawDHCP && !sawTFTP:
		out = append(out, "DHCP answered but no TFTP file was served. A wrong serial in fleet.yaml makes the Pi ask for another <serial>/ prefix: look for it under \"Seen, not in fleet\".")
		if proxy {
			out = append(out, "Proxy mode: U-Boot (and other non-Pi firmware) does not merge proxyDHCP offers and boots from the router's answer; such boards need full DHCP mode.")
		}
	}
	if i := lastIndex(evs, essentialMissing); i >= 0 {
		out = append(out, "Missing firmware: the board asked for "+evs[i].File+" and the image's /boot/firmware has no such file (a Pi 4 needs start4.elf and fixup4.dat, every Pi the kernel named in config.txt). Import an image with its boot partition, or check kernel= in config.txt.")
	}
	if st.Kind == "stalled" && sawTFTP && !slices.ContainsFunc(evs, func(e boot.Event) bool { return e.Stage == boot.StageNFS }) {
		out = append(out, "The firmware stopped asking for files and the kernel did not mount its root: check the serial console, the kernel named in config.txt, and that NFS is reachable from the board.")
	}
	return out
}

// addressOf returns the address bound to a board without a fixed IP (on evidence: see
// liveFleet), or else the one remembered from before a restart and not yet confirmed
// (confirmed false).
func (f *liveFleet) addressOf(board string) (ip netip.Addr, confirmed, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for a, n := range f.bound {
		if n == board {
			return a, true, true
		}
	}
	for a, n := range f.restored {
		if n == board {
			return a, false, true
		}
	}
	return netip.Addr{}, false, false
}

// uiBoard is one board as the pages show it.
type uiBoard struct {
	BoardStatus
	State       BoardState
	Learned     bool // IP was learned from its traffic, not set in fleet.yaml
	Unconfirmed bool // ... before a restart, and not confirmed by the neighbour table since
	LastSeen    time.Time
}

func (u *webUI) board(b Board, now time.Time) uiBoard {
	bs := u.s.boardStatus(b, true)
	// The state reads the last boot and the resets since: a reset ends what it reached.
	ub := uiBoard{BoardStatus: bs, State: deriveState(u.s.lastBootEvents(b.Name), bs.Mounted, now)}
	if bs.IP == "" {
		if a, confirmed, ok := u.s.fleet.addressOf(b.Name); ok {
			ub.IP, ub.Learned, ub.Unconfirmed = a.String(), true, !confirmed
		}
	}
	if n := len(bs.Timeline); n > 0 {
		ub.LastSeen = bs.Timeline[n-1].Time
	}
	return ub
}

// fleetView is the data of the overview.
type fleetView struct {
	Boards                []uiBoard
	Up, Booting, Stalled  int
	UpperBytes, FullBytes int64 // disk the uppers take; what a full image copy per board would take
	Unknown               []boot.Unknown
	AdoptCSRF             string // the token of the adopt forms
}

func (u *webUI) fleetView(now time.Time) fleetView {
	cfg := u.s.config()
	v := fleetView{AdoptCSRF: u.csrf("/adopt")}
	imgBytes := map[string]int64{}
	for _, b := range cfg.Boards {
		ub := u.board(b, now)
		ub.Timeline = nil
		switch ub.State.Kind {
		case "up":
			v.Up++
		case "booting":
			v.Booting++
		case "stalled":
			v.Stalled++
		}
		v.UpperBytes += ub.UpperSize
		if _, ok := imgBytes[b.Image]; !ok {
			imgBytes[b.Image] = u.s.imageBytes(cfg, b.Image)
		}
		v.FullBytes += imgBytes[b.Image]
		v.Boards = append(v.Boards, ub)
	}
	v.Unknown = u.s.timeline.Unknowns()
	sort.Slice(v.Unknown, func(i, j int) bool { return v.Unknown[i].LastSeen.After(v.Unknown[j].LastSeen) })
	return v
}

// config returns the running config.
func (s *Server) config() *Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// imageBytes is the size of an image's files: from the store's records of its layers for a
// store image, measured (and cached like uppers) for a path image.
func (s *Server) imageBytes(cfg *Config, name string) int64 {
	if im := cfg.Images[name]; im.Path != "" {
		return s.sizes.get(im.Path)
	}
	n, _ := s.store.Size(name) // the whole stack: what a copy per board would hold
	return n
}

type page struct {
	Title string
	Live  string // the /events query that keeps the page's live part current; "" for none
	Data  any
}

func (u *webUI) render(w http.ResponseWriter, code int, name string, p page) {
	var buf bytes.Buffer
	if err := u.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		u.s.log.Error("web UI: render", "page", name, "err", err)
		http.Error(w, "render: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

func (u *webUI) handleFleet(w http.ResponseWriter, r *http.Request) {
	u.render(w, http.StatusOK, "fleet", page{Title: "fleet", Live: "view=fleet", Data: u.fleetView(time.Now())})
}

// bootView is one boot as the board page shows it.
type bootView struct {
	Start   time.Time // timeline offsets count from it
	Events  []boot.Event
	Failing int // index of the event to highlight (failingStep), -1 for none
	Dropped int // events left out to keep the boot bounded
	Reached string
	Latest  bool // the board's last boot (its table is the page's live #timeline)
}

// boardView is the data of a board's page.
type boardView struct {
	Board   uiBoard
	Last    bootView
	Earlier []bootView // the boots before the last, latest first
	Hints   []string
	Changes []Change
	DiffErr string
	// Conflicts, for a board with a pending image: its changes that the new image changed too.
	Conflicts *Conflict
	CSRF      string
	Done      string // a message after an action (reset)
	Remote    bool   // the viewer is not on the server: its reset form would be refused
}

func (u *webUI) boardView(r *http.Request, name string, now time.Time) (boardView, bool) {
	cfg := u.s.config()
	i := slices.IndexFunc(cfg.Boards, func(b Board) bool { return b.Name == name })
	if i < 0 {
		return boardView{}, false
	}
	b := cfg.Boards[i]
	v := boardView{Board: u.board(b, now), Last: bootView{Failing: -1}, CSRF: u.csrf("/boards/" + name + "/reset"), Remote: !fromThisHost(r)}
	evs := v.Board.Timeline
	h := u.s.timeline.History(name)
	if n := len(h.Boots); n > 0 {
		v.Last = bootView{Latest: true, Start: h.Boots[n-1].Start, Events: evs, Dropped: h.Boots[n-1].Dropped, Failing: failingStep(evs, v.Board.State)}
		for i := n - 2; i >= 0; i-- {
			b := h.Boots[i]
			// An earlier boot is over: it stalled where it ended unless it mounted.
			st := BoardState{Kind: "stalled"}
			if b.Mounted() {
				st.Kind = "off"
			}
			v.Earlier = append(v.Earlier, bootView{Start: b.Start, Events: b.Events, Dropped: b.Dropped,
				Failing: failingStep(b.Events, st), Reached: string(reached(b.Events))})
		}
	}
	v.Hints = hints(v.Board.State, evs, cfg.Server.DHCP.Mode == "proxy")
	ch, err := u.s.Diff(name)
	if err != nil {
		v.DiffErr = err.Error()
	}
	v.Changes = ch
	if v.Board.Pending != "" {
		if c, err := u.s.Conflicts(name); err == nil {
			v.Conflicts = &c
		}
	}
	switch r.URL.Query().Get("done") {
	case "reset":
		v.Done = "Board " + name + " was reset: its changes are gone and it boots from its image as new."
	case "adopted":
		v.Done = "Board " + name + " was added to " + u.s.cfgPath + " and is served from now on."
	}
	return v, true
}

func (u *webUI) handleBoard(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	v, ok := u.boardView(r, name, time.Now())
	if !ok {
		u.render(w, http.StatusNotFound, "confirm", page{Title: "not found", Data: confirmView{Board: name, Err: "board " + name + " is not in the fleet"}})
		return
	}
	u.render(w, http.StatusOK, "board", page{Title: name, Live: "board=" + url.QueryEscape(name), Data: v})
}

// confirmView is the data of the reset confirmation page.
type confirmView struct {
	Board     string
	CSRF      string
	Changes   int
	Mounted   bool
	Err       string
	NotFound  bool
	ForceAsks bool // the last attempt was refused because the board is mounted
}

// handleReset runs the reset form: a POST without confirm=yes answers with the
// confirmation page; with it, it resets and redirects back to the board's page.
func (u *webUI) handleReset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := u.checkPost(r); err != nil {
		u.render(w, http.StatusForbidden, "confirm", page{Title: "refused", Data: confirmView{Board: name, Err: err.Error()}})
		return
	}
	b, ok := u.s.Board(name)
	if !ok {
		u.render(w, http.StatusNotFound, "confirm", page{Title: "not found", Data: confirmView{Board: name, Err: "board " + name + " is not in the fleet"}})
		return
	}
	cv := confirmView{Board: name, CSRF: u.csrf(r.URL.Path), Mounted: b.Mounted}
	if ch, err := u.s.Diff(name); err == nil {
		cv.Changes = len(ch)
	}
	if r.PostFormValue("confirm") != "yes" {
		u.render(w, http.StatusOK, "confirm", page{Title: "reset " + name, Data: cv})
		return
	}
	err := u.s.ResetBoard(name, r.PostFormValue("force") == "1")
	switch {
	case errors.Is(err, ErrMounted):
		cv.Err, cv.ForceAsks = err.Error(), true
		u.render(w, http.StatusConflict, "confirm", page{Title: "reset " + name, Data: cv})
	case err != nil:
		cv.Err = err.Error()
		u.render(w, http.StatusInternalServerError, "confirm", page{Title: "reset " + name, Data: cv})
	default:
		u.s.log.Info("board reset from the web UI", "board", name, "peer", r.RemoteAddr)
		http.Redirect(w, r, "/boards/"+name+"?done=reset", http.StatusSeeOther)
	}
}

// checkPost admits a form POST of the UI's own pages only: from this host (as the API's
// guard: a reset or an adopt is an operator's act on the server, through an SSH tunnel
// from afar),
// sent by a page of this origin (Origin or Sec-Fetch-Site says so; a browser sends one
// of them with every form POST), and carrying the CSRF token the server put in that
// page. The API token stays with root and the CLI: the page never sees it.
func (u *webUI) checkPost(r *http.Request) error {
	if !fromThisHost(r) {
		return errors.New("this action is accepted from the server itself only: open the page there or through an SSH tunnel (ssh -L 8080:127.0.0.1:8080 server)")
	}
	if crossSite(r) {
		return errors.New("cross-site request refused")
	}
	if r.Header.Get("Origin") == "" && r.Header.Get("Sec-Fetch-Site") != "same-origin" {
		return errors.New("this form is accepted from a browser showing pifleet's own page only (no Origin)")
	}
	if !hmac.Equal([]byte(r.PostFormValue("csrf")), []byte(u.csrf(r.URL.Path))) {
		return errors.New("the form is out of date (pifleet restarted since the page was loaded): reload the board's page and try again")
	}
	return nil
}

// csrf is the token a form posting to action carries: an HMAC of the action under a key
// made at start, so no page of another origin can know it and it dies with the server.
func (u *webUI) csrf(action string) string {
	m := hmac.New(sha256.New, u.key)
	m.Write([]byte(action))
	return hex.EncodeToString(m.Sum(nil))
}

// imageView is one row of the images page.
type imageView struct {
	Name   string
	Source string
	Format string
	Bytes  int64
	Boards []string
	Err    string
}

func (u *webUI) handleImages(w http.ResponseWriter, r *http.Request) {
	cfg := u.s.config()
	users := map[string][]string{}
	for _, b := range cfg.Boards {
		users[b.Image] = append(users[b.Image], b.Name)
	}
	var rows []imageView
	seen := map[string]bool{}
	for name, im := range cfg.Images {
		seen[name] = true
		row := imageView{Name: name, Boards: users[name]}
		if im.Path != "" {
			row.Source, row.Format, row.Bytes = im.Path, "directory (fleet.yaml path)", u.s.sizes.get(im.Path)
		} else if info, err := u.s.store.Info(name); err != nil {
			row.Err = err.Error()
		} else {
			row.Source, row.Format = info.Source, info.Format
			row.Bytes, _ = u.s.store.Size(name)
		}
		rows = append(rows, row)
	}
	if infos, err := u.s.store.List(); err == nil {
		for _, info := range infos {
			if !seen[info.Name] {
				size, _ := u.s.store.Size(info.Name)
				rows = append(rows, imageView{Name: info.Name, Source: info.Source, Format: info.Format, Bytes: size, Boards: users[info.Name]})
			}
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	u.render(w, http.StatusOK, "images", page{Title: "images", Data: rows})
}

// handleEvents streams the live part of a page as Server-Sent Events: after boot events
// (coalesced) and every uiRefresh, an "update" event carrying the part's HTML.
func (u *webUI) handleEvents(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("board")
	fragment := func() (string, error) {
		var buf bytes.Buffer
		now := time.Now()
		var err error
		if name != "" {
			v, ok := u.boardView(r, name, now)
			if !ok {
				return "", fmt.Errorf("board %s: not in the fleet", name)
			}
			err = u.pages["board"].ExecuteTemplate(&buf, "live", v)
		} else {
			err = u.pages["fleet"].ExecuteTemplate(&buf, "live", u.fleetView(now))
		}
		return buf.String(), err
	}
	if _, err := fragment(); err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	peer, _ := netip.ParseAddrPort(r.RemoteAddr)
	sub, ok := u.hub.subscribe(peer.Addr().Unmap())
	if !ok {
		http.Error(w, "too many live pages open; reload later", http.StatusServiceUnavailable)
		return
	}
	defer u.hub.unsubscribe(sub)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	send := func() bool {
		html, err := fragment()
		if err != nil {
			return false
		}
		rc.SetWriteDeadline(time.Now().Add(uiWriteTimeout))
		var b strings.Builder
		b.WriteString("event: update\n")
		for _, line := range strings.Split(html, "\n") {
			b.WriteString("data: " + strings.TrimSuffix(line, "\r") + "\n")
		}
		b.WriteString("\n")
		if _, err := w.Write([]byte(b.String())); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if _, err := w.Write([]byte("retry: 3000\n\n")); err != nil || rc.Flush() != nil {
		return
	}
	// Events only mark the page stale; it is rendered at most every uiMinInterval, so a
	// burst of events (a fleet powering on) costs one render, and the loop keeps reading
	// the subscription: only a client that does not take its writes falls behind.
	tick := time.NewTicker(uiRefresh)
	defer tick.Stop()
	var due <-chan time.Time
	last := time.Now()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-sub.done:
			return
		case _, open := <-sub.ch:
			if !open {
				return // dropped: it fell behind
			}
			if due == nil {
				due = time.After(uiMinInterval - time.Since(last))
			}
		case <-tick.C:
			if due == nil {
				due = time.After(0)
			}
		case <-due:
			due, last = nil, time.Now()
			if !send() {
				return
			}
		}
	}
}

// uiHub fans boot events out to the open event streams. Publishing never blocks: a
// subscriber whose buffer is full is dropped.
type uiHub struct {
	mu      sync.Mutex
	subs    map[*uiSub]struct{}
	perPeer map[netip.Addr]int
	max     int
	maxPeer int
	buffer  int
	closed  bool
}

type uiSub struct {
	peer netip.Addr
	ch   chan boot.Event
	done chan struct{} // closed when the hub shuts down
}

func newUIHub(max, maxPeer, buffer int) *uiHub {
	return &uiHub{subs: map[*uiSub]struct{}{}, perPeer: map[netip.Addr]int{}, max: max, maxPeer: maxPeer, buffer: buffer}
}

// subscribe opens a stream's subscription for a client at peer; false when the hub
// holds its maximum in total or for that address.
func (h *uiHub) subscribe(peer netip.Addr) (*uiSub, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) >= h.max || h.perPeer[peer] >= h.maxPeer || h.closed {
		return nil, false
	}
	sub := &uiSub{peer: peer, ch: make(chan boot.Event, h.buffer), done: make(chan struct{})}
	h.subs[sub] = struct{}{}
	h.perPeer[peer]++
	return sub, true
}

func (h *uiHub) unsubscribe(sub *uiSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(sub)
}

// dropLocked ends a subscription (closing its channel tells its stream); h.mu is held.
func (h *uiHub) dropLocked(sub *uiSub) {
	if _, ok := h.subs[sub]; !ok {
		return
	}
	delete(h.subs, sub)
	if h.perPeer[sub.peer]--; h.perPeer[sub.peer] <= 0 {
		delete(h.perPeer, sub.peer)
	}
	close(sub.ch)
}

// publish hands e to every subscriber, dropping those whose buffer is full.
func (h *uiHub) publish(e boot.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.subs {
		select {
		case sub.ch <- e:
		default:
			h.dropLocked(sub)
		}
	}
}

// count is the number of open subscriptions.
func (h *uiHub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// shutdown ends every stream (the HTTP server is stopping: it would wait for them).
func (h *uiHub) shutdown() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for sub := range h.subs {
		close(sub.done)
	}
}
