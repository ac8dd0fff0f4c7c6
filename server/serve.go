package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/dhcp"
	"github.com/pifleet/pifleet/boot/neigh"
	"github.com/pifleet/pifleet/boot/tftp"
	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/nfsroot"
	"github.com/pifleet/pifleet/overlay"
)

// Options configure Run.
type Options struct {
	// ConfigPath is fleet.yaml.
	ConfigPath string
	// Logger receives every log line; slog.Default() when nil.
	Logger *slog.Logger
	// Ready, if set, is called once every service listens (tests wait on it).
	Ready func(*Server)
}

// Server is a running pifleet: the fleet model and the services built on it.
type Server struct {
	log      *slog.Logger
	cfgPath  string
	state    State
	store    *images.Store
	fleet    *liveFleet
	timeline *boot.Timeline
	nfs      *nfsroot.Server
	nfsTrace *nfsTrace // nil unless PIFLEET_NFS_TRACE names a file
	metrics  *metrics
	dhcpSrv  atomic.Pointer[dhcp.Server] // nil until it runs (and with dhcp off)
	tftpSrv  atomic.Pointer[tftp.Server]
	sizes    upperSizes    // board upper sizes, measured at most every sizeTTL
	fwReads  firmwareReads // when each board last read its firmware tree (rollout.go)
	ui       *webUI
	writes   firstWrites // arms each board's "first write" boot step at its mount
	histMu   sync.Mutex  // one flushHistory at a time, so an older write never lands last
	started  time.Time

	// mu serialises reloads and board operations (reset), which both rebuild boards.
	mu      sync.Mutex
	cfg     *Config // the running config
	cfgHash string  // of the file it came from, to skip no-op reloads
	// switchFailed is when a pending board last failed to switch (rollout.go): the
	// once-a-second "not mounted" check retries it only after switchRetry.
	switchFailed map[string]time.Time

	httpAddr net.Addr
	token    string // the bearer token state-changing HTTP calls need (<state>/api-token)
}

// Run loads fleet.yaml, starts every service and serves until ctx is cancelled. A
// SIGHUP or a change of the file reloads it; a bad file is reported and the running
// config kept.
func Run(ctx context.Context, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg, problems, err := Load(opts.ConfigPath)
	if err != nil {
		return err
	}
	for _, p := range problems {
		log.Warn("fleet.yaml", "line", p.Line, "col", p.Col, "warning", p.Msg, "hint", p.Hint)
	}
	lock, err := LockState(cfg.Server.State)
	if err != nil {
		var held *HeldError
		if errors.As(err, &held) {
			return fmt.Errorf("%w: one pifleet serve per state dir (stop the other one, or give this fleet its own server.state)", err)
		}
		return err
	}
	defer lock.Release()
	s, err := newServer(cfg, lock, log)
	if err != nil {
		return err
	}
	s.cfgPath = opts.ConfigPath
	s.cfgHash, _ = fileHash(opts.ConfigPath)
	if ps := checkImages(cfg, s.store); ps.Errors() > 0 {
		return &ConfigError{File: opts.ConfigPath, Problems: ps}
	}
	// Bind every socket before the slow part (a first start generates each board's SSH
	// host keys): a port clash fails at once, and clients queue instead of being refused.
	ls, err := s.listen()
	if err != nil {
		return err
	}
	defer ls.close()
	if err := s.publish(lock, ls); err != nil {
		return err
	}
	defer os.Remove(serveInfoPath(s.state.Dir))
	if err := s.prepare(); err != nil {
		return err
	}
	return s.serve(ctx, ls, opts.Ready)
}

func newServer(cfg *Config, lock *StateLock, log *slog.Logger) (*Server, error) {
	addr, iface, err := serverAddress(cfg.Server)
	if err != nil {
		return nil, err
	}
	cfg.Server.Address, cfg.Server.Interface = addr, iface
	st := State{Dir: cfg.Server.State}
	if err := os.MkdirAll(st.Boards(), 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	store, err := OpenStore(st.Dir, lock, log)
	if err != nil {
		return nil, err
	}
	s := &Server{log: log, state: st, store: store, fleet: newLiveFleet(), timeline: boot.NewTimeline(),
		metrics: newMetrics(), started: time.Now(), cfg: cfg}
	s.timeline.OnEvent = s.onEvent
	s.fleet.onBind = s.rememberAddress
	s.ui = newWebUI(s)
	if s.nfsTrace, err = openNFSTrace(); err != nil {
		return nil, err
	}
	s.nfs = nfsroot.New(nfsroot.Options{Logger: log.With("service", "nfs"), OnMount: func(board string, client netip.Addr) {
		s.writes.mounted(board)
		s.timeline.Record(boot.Event{Board: board, Client: client, Stage: boot.StageNFS, What: "mount"})
	}, Observer: s.observeCall, ExactArrivals: s.nfsTrace != nil})
	s.metrics.registerServer(s)
	if err := finishResets(st, log); err != nil {
		return nil, err
	}
	s.loadHistory(cfg)
	return s, nil
}

// prepare opens every board of the config (identity layer, overlay) and installs them.
func (s *Server) prepare() error {
	start := time.Now()
	s.log.Info("preparing boards: identity layers (SSH host keys on a board's first start) and overlays",
		"boards", len(s.cfg.Boards), "workers", prepareWorkers(len(s.cfg.Boards)))
	snap, err := s.buildSnapshot(s.cfg, nil)
	if err != nil {
		return err
	}
	s.install(snap)
	s.recordImages(snap)
	for name, b := range snap.boards {
		if b.pending != nil {
			s.log.Info("board starts on the image it ran (its system may have kept running); fleet.yaml's is pending until its next boot",
				"board", name, "mac", b.cfg.MAC.String(), "image", b.run.Image, "pending", b.pending.Image)
		}
	}
	s.relearn(snap)
	s.log.Info("boards prepared", "boards", len(snap.boards), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// prepareWorkers is how many boards buildSnapshot opens at once: key generation is CPU
// bound, so one per CPU.
func prepareWorkers(boards int) int {
	return max(1, min(boards, runtime.GOMAXPROCS(0)))
}

// onEvent counts the event. (Addresses are bound on evidence only, by liveFleet.Bind:
// an event's client address is whatever the request came from.)
func (s *Server) onEvent(e boot.Event) {
	s.metrics.event(e)
	s.ui.hub.publish(e)
}

// rememberAddress persists a new evidence-backed binding, so that after a restart the
// board's running system can get its root back once the neighbour table confirms it.
func (s *Server) rememberAddress(board string, ip netip.Addr) {
	if err := writeFileAtomic(s.state.Address(board), []byte(ip.String()+"\n")); err != nil {
		s.log.Warn("cannot remember the board's address; it must boot again after a server restart",
			"board", board, "addr", ip, "err", err)
		return
	}
	s.log.Info("board address bound (its MAC is at this address in the neighbour table)", "board", board, "addr", ip)
}

// relearn restores the addresses boards without a fixed IP were bound to before the
// restart, as candidates: one is bound again only when the kernel's neighbour table
// shows the board's MAC at it (now, or when the board's NFS client calls from it).
// Files written by versions before evidence-only binding (which bound any host that
// typed a board's serial) are treated the same way, so none grants access by itself.
func (s *Server) relearn(snap *snapshot) {
	// The boot interface's neighbour table, opened here, in the namespace the server
	// runs in (TFTP opens its own).
	if s.fleet.neigh == nil {
		if nt, err := neigh.Open(); err != nil {
			s.log.Warn("no neighbour table: boards without a fixed IP keep their root across a restart only by booting again", "err", err)
		} else if ifi, err := net.InterfaceByName(s.cfg.Server.Interface); err == nil {
			s.fleet.neigh, s.fleet.ifIndex = nt, ifi.Index
		} else {
			nt.Close()
		}
	}
	for name, b := range snap.boards {
		if b.cfg.IP.IsValid() {
			continue
		}
		data, err := os.ReadFile(s.state.Address(name))
		if err != nil {
			continue
		}
		if ip, err := netip.ParseAddr(strings.TrimSpace(string(data))); err == nil {
			s.fleet.restore(name, ip)
		}
	}
	s.fleet.confirmRestored()
}

// writeFileAtomic replaces path (mode 0600, its dir made if missing) with data so a crash
// leaves the old or the new file (see replaceFile; the dir is not fsynced).
func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return replaceFile(path, data, 0o600)
}

// imageLayers returns the lower dirs of an image, topmost first.
func (s *Server) imageLayers(cfg *Config, name string) ([]string, error) {
	return imageLayers(cfg, s.store, name)
}

// buildSnapshot opens every board of cfg, reusing the live state of boards whose entry
// (and image layers) did not change, so a reload does not disturb them.
func (s *Server) buildSnapshot(cfg *Config, prev *snapshot) (*snapshot, error) {
	serverIP := cfg.Server.Address.Addr()
	boards := map[string]*boardRT{}
	errs := make([]error, len(cfg.Boards))
	type job struct {
		i       int
		run     imageStack
		pending *imageStack
	}
	var jobs []job
	for i, b := range cfg.Boards {
		layers, err := s.imageLayers(cfg, b.Image)
		if err != nil {
			errs[i] = fmt.Errorf("board %s: %w", b.Name, err)
			continue
		}
		run, pending := s.runningStack(b.Name, imageStack{Image: b.Image, Layers: layers}, prev)
		if prev != nil && prev.serverIP == serverIP && prev.cfg.Server.Ports == cfg.Server.Ports {
			if old, ok := prev.boards[b.Name]; ok && sameBoardBut(old.cfg, b) && old.run.same(run) {
				if sameBoard(old.cfg, b) && samePending(old.pending, pending) {
					boards[b.Name] = old
					continue
				}
				// Unchanged but for a pending image: the same overlay, so the same export.
				rt := *old
				rt.cfg, rt.run, rt.pending = b, run, pending
				boards[b.Name] = &rt
				continue
			}
		}
		jobs = append(jobs, job{i, run, pending})
	}
	// Open the new and changed boards in parallel: a first start generates SSH host keys.
	opened := make([]*boardRT, len(cfg.Boards))
	var wg sync.WaitGroup
	next := make(chan job)
	for range prepareWorkers(len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				opened[j.i], errs[j.i] = s.openBoard(cfg, cfg.Boards[j.i], j.run)
				if opened[j.i] != nil {
					opened[j.i].pending = j.pending
				}
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	for i, rt := range opened {
		if rt != nil {
			boards[cfg.Boards[i].Name] = rt
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return newSnapshot(cfg, serverIP, boards), nil
}

// openBoard prepares one board's identity layer and overlay over the image run.
func (s *Server) openBoard(cfg *Config, b Board, run imageStack) (*boardRT, error) {
	lowers := append([]string{s.state.Identity(b.Name)}, run.Layers...)
	// lowers[0] is the identity layer itself; the image is read for the first user
	id := images.Identity{Hostname: b.Hostname, Serial: b.Serial, Image: lowers[1:]}
	if b.MAC != nil {
		id.MAC = b.MAC.String()
	}
	if b.User != nil {
		id.User, id.PasswordHash, id.AuthorizedKeys = b.User.Name, b.User.PasswordHash, b.User.AuthorizedKeys
	}
	if err := images.WriteIdentity(s.state.Identity(b.Name), id); err != nil {
		return nil, fmt.Errorf("board %s: identity: %w", b.Name, err)
	}
	fs, err := overlay.New(overlay.Options{Upper: s.state.Upper(b.Name), Work: s.state.Work(b.Name), Lowers: lowers})
	if err != nil {
		return nil, fmt.Errorf("board %s: %w", b.Name, err)
	}
	bb := &boot.Board{
		Name: b.Name, MAC: b.MAC, Serial: b.Serial, IP: b.IP, Hostname: b.Hostname,
		Firmware: &firmwareFS{s: s, board: b.Name, own: fs.IOFS("boot/firmware")},
		NFSRoot:  NFSRoot(cfg.Server.Address.Addr().String(), b.Name, cfg.Server.Ports),
		Cmdline:  b.Cmdline, Config: b.Config,
	}
	return &boardRT{cfg: b, run: run, lowers: lowers, fs: fs, boot: bb}, nil
}

// install makes snap the live fleet: boot sees it at once, NFS gets the new export table.
func (s *Server) install(snap *snapshot) {
	s.fleet.cur.Store(snap)
	exps := make([]nfsroot.Export, 0, len(snap.boards))
	for name, b := range snap.boards {
		exps = append(exps, nfsroot.Export{
			Board: name, Path: Export(name), FS: b.fs,
			Allow:      func(a netip.Addr) bool { return s.fleet.allows(name, a) },
			RootSquash: b.cfg.RootSquash,
			StateDir:   s.state.NFS(name),
		})
	}
	slices.SortFunc(exps, func(a, b nfsroot.Export) int { return cmpString(a.Board, b.Board) })
	s.nfs.SetExports(exps)
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func samePending(a, b *imageStack) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Image == b.Image && a.same(*b)
}

// sameBoardBut is sameBoard but for the image: whether a board's stack changes is
// decided on its layers (runningStack).
func sameBoardBut(a, b Board) bool {
	a.Image = b.Image
	return sameBoard(a, b)
}

func sameBoard(a, b Board) bool {
	return a.Name == b.Name && a.MAC.String() == b.MAC.String() && a.Serial == b.Serial && a.IP == b.IP &&
		a.Image == b.Image && a.Hostname == b.Hostname && a.Cmdline == b.Cmdline &&
		slices.Equal(a.Config, b.Config) && a.RootSquash == b.RootSquash && a.Group == b.Group &&
		sameUser(a.User, b.User)
}

func sameUser(a, b *User) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Name == b.Name && a.PasswordHash == b.PasswordHash && slices.Equal(a.AuthorizedKeys, b.AuthorizedKeys)
}

// serve starts the services on ls and blocks until ctx ends or one fails.
func (s *Server) serve(ctx context.Context, ls *listeners, ready func(*Server)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := s.cfg
	ports := cfg.Server.Ports
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	start := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}

	start("tftp", ls.tftp.Serve)
	start("nfs", func(ctx context.Context) error { return s.nfs.ServeNFS(ctx, ls.nfs) })
	start("mount", func(ctx context.Context) error { return s.nfs.ServeMount(ctx, ls.mount) })
	start("http", func(ctx context.Context) error { return s.serveHTTP(ctx, ls.http) })
	if ls.pmapTCP != nil {
		start("portmap", func(ctx context.Context) error {
			return s.nfs.ServePortmap(ctx, ls.pmapTCP, ls.pmapUDP, nfsroot.PortmapOptions{
				NFS: tcpPort(ls.nfs), Mount: tcpPort(ls.mount), Host: cfg.Server.Address.Addr()})
		})
	}
	if cfg.Server.DHCP.Mode != DHCPOff {
		d := cfg.Server.DHCP
		dsrv, err := dhcp.New(dhcp.Config{
			Mode: dhcp.Mode(d.Mode), Interface: cfg.Server.Interface, ServerIP: cfg.Server.Address.Addr(),
			Subnet: cfg.Server.Address.Masked(), Router: d.Router, DNS: d.DNS, LeaseTime: d.Lease,
			PoolStart: d.PoolStart, PoolEnd: d.PoolEnd, LeaseFile: s.state.Leases(), Port: ports.DHCP, ProxyPXE: d.ProxyPXE,
			Fleet: s.fleet, Events: s.timeline, Logger: s.log.With("service", "dhcp"),
		})
		if err != nil {
			cancel()
			wg.Wait()
			return bindHint(fmt.Errorf("dhcp: %w", err), ports.DHCP)
		}
		s.dhcpSrv.Store(dsrv)
		if d.Mode == DHCPFull {
			s.fleet.setLeases(dsrv)
		}
		start("dhcp", dsrv.Serve)
	}
	start("reload", s.watch)
	start("history", s.keepHistory)

	s.log.Info("pifleet serving", "address", cfg.Server.Address, "interface", cfg.Server.Interface,
		"dhcp", cfg.Server.DHCP.Mode, "tftp", ls.tftp.Addr().String(), "nfs", ls.nfs.Addr().String(),
		"mount", ls.mount.Addr().String(), "portmap", ports.Portmap, "http", ls.httpAddrs(), "boards", len(cfg.Boards),
		"state", s.state.Dir)
	if ready != nil {
		ready(s)
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		s.log.Error("service failed, shutting down", "err", runErr)
	}
	cancel()
	wg.Wait()
	s.nfs.SetExports(nil) // closes every open file
	if s.fleet.neigh != nil {
		s.fleet.neigh.Close()
	}
	s.flushHistory() // what the last events changed
	s.log.Info("pifleet stopped")
	return runErr
}

// HTTPAddr is the bound address of the HTTP API (the first of server.http; loopback by
// default), for tests that ask for port 0.
func (s *Server) HTTPAddr() net.Addr { return s.httpAddr }

// listeners are the service sockets, bound before the boards are prepared.
type listeners struct {
	nfs, mount net.Listener
	http       []net.Listener
	tftp       *tftp.Server
	pmapTCP    net.Listener   // nil when server.ports.portmap is 0
	pmapUDP    net.PacketConn // nil when server.ports.portmap is 0
}

func (ls *listeners) close() {
	for _, l := range append([]net.Listener{ls.nfs, ls.mount, ls.pmapTCP}, ls.http...) {
		if l != nil {
			l.Close()
		}
	}
	if ls.pmapUDP != nil {
		ls.pmapUDP.Close()
	}
}

func (ls *listeners) httpAddrs() []string {
	var out []string
	for _, l := range ls.http {
		out = append(out, l.Addr().String())
	}
	return out
}

// listen binds the service sockets: NFS, MOUNT, the portmapper and TFTP on the boot
// address (every address only if this host does not have it yet), HTTP on server.http
// (default: loopback and the boot address). DHCP binds to the interface itself (package
// dhcp).
func (s *Server) listen() (*listeners, error) {
	ports := s.cfg.Server.Ports
	boot := s.bootBind()
	ls := &listeners{}
	var err error
	if ls.nfs, err = listen(boot, ports.NFS, "nfs"); err != nil {
		return nil, err
	}
	if ls.mount, err = listen(boot, ports.Mount, "mount"); err != nil {
		ls.close()
		return nil, err
	}
	for _, ap := range s.httpListen(boot) {
		l, err := listen(ap.Addr(), int(ap.Port()), "http")
		if err != nil {
			ls.close()
			return nil, err
		}
		ls.http = append(ls.http, l)
	}
	s.httpAddr = ls.http[0].Addr()
	if ports.Portmap != 0 {
		if ls.pmapTCP, ls.pmapUDP, err = listenPortmap(boot, ports.Portmap); err != nil {
			ls.close()
			return nil, err
		}
	}
	ls.tftp, err = tftp.New(tftp.Config{Addr: bindString(boot, ports.TFTP), Fleet: s.fleet, Events: s.timeline,
		Logger: s.log.With("service", "tftp")})
	if err != nil {
		ls.close()
		return nil, bindHint(fmt.Errorf("tftp: %w", err), ports.TFTP)
	}
	s.tftpSrv.Store(ls.tftp)
	return ls, nil
}

// bootBind is the address NFS, MOUNT and TFTP listen on: the boot address (server.address)
// if this host has it; if not (yet), every address, with a warning.
func (s *Server) bootBind() netip.Addr {
	a := s.cfg.Server.Address.Addr()
	if l, err := net.Listen("tcp4", netip.AddrPortFrom(a, 0).String()); err == nil {
		l.Close()
		return a
	}
	s.log.Warn("server.address is not an address of this host: NFS, MOUNT and TFTP listen on every address",
		"address", a, "hint", "configure the address on the boot interface before starting pifleet")
	return netip.Addr{}
}

// httpListen is where the HTTP API listens: server.http, or loopback and the boot address.
func (s *Server) httpListen(boot netip.Addr) []netip.AddrPort {
	if len(s.cfg.Server.HTTP) > 0 {
		return s.cfg.Server.HTTP
	}
	port := uint16(s.cfg.Server.Ports.HTTP)
	out := []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)}
	if boot.IsValid() && boot != out[0].Addr() {
		out = append(out, netip.AddrPortFrom(boot, port))
	}
	return out
}

// publish writes the API token (mode 0600) and <state>/serve.json, which tell the CLI
// that this server owns the state dir and how to reach it.
func (s *Server) publish(lock *StateLock, ls *listeners) error {
	tok := make([]byte, 32)
	if _, err := rand.Read(tok); err != nil {
		return fmt.Errorf("api token: %w", err)
	}
	s.token = hex.EncodeToString(tok)
	if err := writeFileAtomic(tokenPath(s.state.Dir), []byte(s.token+"\n")); err != nil { // 0600: CreateTemp's mode
		return fmt.Errorf("api token: %w", err)
	}
	cfgPath, _ := filepath.Abs(s.cfgPath)
	si := ServeInfo{PID: os.Getpid(), HTTP: ls.httpAddrs(), TokenFile: tokenPath(s.state.Dir), Config: cfgPath}
	if err := lock.writeServeInfo(si); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return nil
}

// watch reloads fleet.yaml on SIGHUP and when the file changes (polled: no extra
// dependency, and it also notices editors that replace the file).
func (s *Server) watch(ctx context.Context) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			s.log.Info("SIGHUP: reloading", "file", s.cfgPath)
			s.Reload(true)
		case <-tick.C:
			s.Reload(false)
			s.switchUnmounted()
		}
	}
}

// Reload re-reads fleet.yaml. Unless force is set, an unchanged file is a no-op. A bad
// file is logged with every problem and the running config stays; a good one is swapped
// in atomically, leaving boards whose entries did not change untouched. It reports
// whether a new config was installed.
func (s *Server) Reload(force bool) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, err := fileHash(s.cfgPath)
	if err != nil {
		return false, err
	}
	if h == s.cfgHash && !force {
		return false, nil
	}
	s.cfgHash = h
	cfg, problems, err := Load(s.cfgPath)
	if err != nil {
		s.metrics.reloadFailed()
		var ce *ConfigError
		if errors.As(err, &ce) {
			for _, p := range ce.Problems {
				s.log.Error("fleet.yaml rejected, keeping the running config", "line", p.Line, "col", p.Col, "problem", p.Msg, "hint", p.Hint)
			}
		} else {
			s.log.Error("fleet.yaml rejected, keeping the running config", "err", err)
		}
		return false, err
	}
	if ps := checkImages(cfg, s.store); ps.Errors() > 0 {
		s.metrics.reloadFailed()
		for _, p := range ps {
			if !p.Warning {
				s.log.Error("fleet.yaml rejected, keeping the running config", "line", p.Line, "col", p.Col, "problem", p.Msg)
			}
		}
		return false, &ConfigError{File: s.cfgPath, Problems: ps}
	}
	for _, p := range problems {
		s.log.Warn("fleet.yaml", "line", p.Line, "col", p.Col, "warning", p.Msg, "hint", p.Hint)
	}
	// Server settings (ports, mode, addresses, state dir) are bound at start; the boards
	// are what a reload changes.
	cur := s.cfg.Server
	if !cfg.Server.Address.IsValid() || (cfg.Server.Interface == "" && cur.Interface != "") {
		cfg.Server.Address, cfg.Server.Interface = cur.Address, cur.Interface
	}
	if !sameServer(cur, cfg.Server) {
		s.log.Warn("server settings changed in fleet.yaml; restart pifleet to apply them (boards are reloaded now)")
		cfg.Server = cur
	}
	snap, err := s.buildSnapshot(cfg, s.fleet.cur.Load())
	if err != nil {
		s.metrics.reloadFailed()
		s.log.Error("fleet.yaml rejected, keeping the running config", "err", err)
		return false, err
	}
	old := s.fleet.cur.Load()
	s.install(snap)
	s.recordImages(snap)
	s.cfg = cfg
	s.metrics.reloaded()
	for name := range old.boards {
		if _, ok := snap.boards[name]; !ok {
			s.timeline.Forget(name)
			s.metrics.forget(name)
			s.fwReads.forget(name)
			s.log.Info("board removed from the fleet", "board", name)
		}
	}
	for name, b := range snap.boards {
		if ob, ok := old.boards[name]; !ok {
			if b.cfg.MAC != nil {
				s.timeline.ForgetUnknown(b.cfg.MAC) // no longer a stranger
			}
			s.log.Info("board added to the fleet", "board", name, "mac", b.cfg.MAC.String())
		} else if b.pending != nil && (ob.pending == nil || !ob.pending.same(*b.pending)) {
			s.log.Info("board keeps its image until its next boot: its root is mounted", "board", name,
				"mac", b.cfg.MAC.String(), "image", b.run.Image, "pending", b.pending.Image)
		} else if ob.pending != nil && b.pending == nil && ob.run.same(b.run) {
			s.log.Info("board's pending image withdrawn: it keeps the one it runs", "board", name, "mac", b.cfg.MAC.String(), "image", b.run.Image)
		} else if ob != b && !ob.run.same(b.run) {
			s.log.Info("board switched image", "board", name, "mac", b.cfg.MAC.String(), "image", b.run.Image, "was", ob.run.Image, "at", "reload (not mounted)")
		} else if ob.fs != b.fs {
			s.log.Info("board changed", "board", name, "mac", b.cfg.MAC.String())
		}
	}
	s.log.Info("fleet.yaml reloaded", "boards", len(snap.boards))
	return true, nil
}

func sameServer(a, b ServerConfig) bool {
	return a.Interface == b.Interface && a.Address == b.Address && a.State == b.State && a.Ports == b.Ports &&
		slices.Equal(a.HTTP, b.HTTP) &&
		a.DHCP.Mode == b.DHCP.Mode && a.DHCP.PoolStart == b.DHCP.PoolStart && a.DHCP.PoolEnd == b.DHCP.PoolEnd &&
		a.DHCP.Router == b.DHCP.Router && slices.Equal(a.DHCP.DNS, b.DHCP.DNS) && a.DHCP.Lease == b.DHCP.Lease &&
		a.DHCP.ProxyPXE == b.DHCP.ProxyPXE
}
