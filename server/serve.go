package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/dhcp"
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
	metrics  *metrics
	sizes    upperSizes // board upper sizes, measured at most every sizeTTL
	started  time.Time

	// mu serialises reloads and board operations (reset), which both rebuild boards.
	mu      sync.Mutex
	cfg     *Config // the running config
	cfgHash string  // of the file it came from, to skip no-op reloads

	httpAddr net.Addr
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
	s, err := newServer(cfg, log)
	if err != nil {
		return err
	}
	s.cfgPath = opts.ConfigPath
	s.cfgHash, _ = fileHash(opts.ConfigPath)
	return s.serve(ctx, opts.Ready)
}

func newServer(cfg *Config, log *slog.Logger) (*Server, error) {
	addr, iface, err := serverAddress(cfg.Server)
	if err != nil {
		return nil, err
	}
	cfg.Server.Address, cfg.Server.Interface = addr, iface
	st := State{Dir: cfg.Server.State}
	if err := os.MkdirAll(st.Boards(), 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	store, err := images.OpenStore(st.Images())
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	s := &Server{log: log, state: st, store: store, fleet: newLiveFleet(), timeline: boot.NewTimeline(),
		metrics: newMetrics(), started: time.Now(), cfg: cfg}
	s.timeline.OnEvent = s.onEvent
	s.nfs = nfsroot.New(nfsroot.Options{Logger: log.With("service", "nfs"), OnMount: func(board string, client netip.Addr) {
		s.timeline.Record(boot.Event{Board: board, Client: client, Stage: boot.StageNFS, What: "mount"})
	}})
	if err := finishResets(st, log); err != nil {
		return nil, err
	}
	snap, err := s.buildSnapshot(cfg, nil)
	if err != nil {
		return nil, err
	}
	s.install(snap)
	s.relearn(snap)
	return s, nil
}

// onEvent learns the address a board boots from and counts the event.
func (s *Server) onEvent(e boot.Event) {
	if e.Client.IsValid() && s.fleet.learn(e.Board, e.Client) {
		if err := writeFileAtomic(s.state.Address(e.Board), []byte(e.Client.String()+"\n")); err != nil {
			s.log.Warn("cannot remember the board's address; it must boot again after a server restart",
				"board", e.Board, "mac", e.MAC, "addr", e.Client, "err", err)
		} else {
			s.log.Info("board address learned", "board", e.Board, "mac", e.MAC, "addr", e.Client)
		}
	}
	s.metrics.event(e)
}

// relearn restores the addresses boards without a fixed IP were last seen at.
func (s *Server) relearn(snap *snapshot) {
	for name, b := range snap.boards {
		if b.cfg.IP.IsValid() {
			continue
		}
		data, err := os.ReadFile(s.state.Address(name))
		if err != nil {
			continue
		}
		if ip, err := netip.ParseAddr(strings.TrimSpace(string(data))); err == nil {
			s.fleet.learn(name, ip)
		}
	}
}

// writeFileAtomic replaces path with data so a crash leaves the old or the new file.
func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// imageLayers returns the lower dirs of an image, topmost first.
func (s *Server) imageLayers(cfg *Config, name string) ([]string, error) {
	im, ok := cfg.Images[name]
	if !ok {
		return nil, fmt.Errorf("unknown image %q", name)
	}
	if im.Path != "" {
		if _, err := os.Stat(path.Join(im.Path, "boot/firmware")); err != nil {
			return nil, fmt.Errorf("image %s: %s has no boot/firmware directory: is it a Pi root tree?", name, im.Path)
		}
		return []string{im.Path}, nil
	}
	layers, err := s.store.Layers(name)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w (build the demo image with `make demo`, or import one with `pifleet image import FILE --name %s`)", name, err, name)
	}
	return layers, nil
}

// buildSnapshot opens every board of cfg, reusing the live state of boards whose entry
// (and image layers) did not change, so a reload does not disturb them.
func (s *Server) buildSnapshot(cfg *Config, prev *snapshot) (*snapshot, error) {
	serverIP := cfg.Server.Address.Addr()
	boards := map[string]*boardRT{}
	var errs []error
	for _, b := range cfg.Boards {
		lowers, err := s.imageLayers(cfg, b.Image)
		if err != nil {
			errs = append(errs, fmt.Errorf("board %s: %w", b.Name, err))
			continue
		}
		lowers = append([]string{s.state.Identity(b.Name)}, lowers...)
		if prev != nil && prev.serverIP == serverIP && prev.cfg.Server.Ports == cfg.Server.Ports {
			if old, ok := prev.boards[b.Name]; ok && sameBoard(old.cfg, b) && slices.Equal(old.lowers, lowers) {
				boards[b.Name] = old
				continue
			}
		}
		rt, err := s.openBoard(cfg, b, lowers)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		boards[b.Name] = rt
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return newSnapshot(cfg, serverIP, boards), nil
}

// openBoard prepares one board's identity layer and overlay.
func (s *Server) openBoard(cfg *Config, b Board, lowers []string) (*boardRT, error) {
	id := images.Identity{Hostname: b.Hostname, Serial: b.Serial}
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
		Firmware: fs.IOFS("boot/firmware"),
		NFSRoot:  NFSRoot(cfg.Server.Address.Addr().String(), b.Name, cfg.Server.Ports),
		Cmdline:  b.Cmdline, Config: b.Config,
	}
	return &boardRT{cfg: b, lowers: lowers, fs: fs, boot: bb}, nil
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

// serve starts the services and blocks until ctx ends or one fails.
func (s *Server) serve(ctx context.Context, ready func(*Server)) error {
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

	nfsL, err := listen("tcp", ports.NFS, "nfs")
	if err != nil {
		return err
	}
	mountL, err := listen("tcp", ports.Mount, "mount")
	if err != nil {
		nfsL.Close()
		return err
	}
	httpL, err := listen("tcp", ports.HTTP, "http")
	if err != nil {
		nfsL.Close()
		mountL.Close()
		return err
	}
	s.httpAddr = httpL.Addr()
	tftpSrv, err := tftp.New(tftp.Config{Addr: ":" + strconv.Itoa(ports.TFTP), Fleet: s.fleet, Events: s.timeline,
		Logger: s.log.With("service", "tftp")})
	if err != nil {
		nfsL.Close()
		mountL.Close()
		httpL.Close()
		return bindHint(fmt.Errorf("tftp: %w", err), ports.TFTP)
	}
	start("tftp", tftpSrv.Serve)
	start("nfs", func(ctx context.Context) error { return s.nfs.ServeNFS(ctx, nfsL) })
	start("mount", func(ctx context.Context) error { return s.nfs.ServeMount(ctx, mountL) })
	start("http", func(ctx context.Context) error { return s.serveHTTP(ctx, httpL) })
	if ports.Portmap != 0 {
		pmapTCP, pmapUDP, err := listenPortmap(ports.Portmap)
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		start("portmap", func(ctx context.Context) error {
			return s.nfs.ServePortmap(ctx, pmapTCP, pmapUDP, nfsroot.PortmapOptions{
				NFS: tcpPort(nfsL), Mount: tcpPort(mountL), Host: cfg.Server.Address.Addr()})
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
		start("dhcp", dsrv.Serve)
	}
	start("reload", s.watch)

	s.log.Info("pifleet serving", "address", cfg.Server.Address, "interface", cfg.Server.Interface,
		"dhcp", cfg.Server.DHCP.Mode, "tftp", ports.TFTP, "nfs", ports.NFS, "mount", ports.Mount, "portmap", ports.Portmap,
		"http", s.httpAddr.String(), "boards", len(cfg.Boards), "state", s.state.Dir)
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
	s.log.Info("pifleet stopped")
	return runErr
}

// HTTPAddr is the bound address of the HTTP API (for tests that ask for port 0).
func (s *Server) HTTPAddr() net.Addr { return s.httpAddr }

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
	s.cfg = cfg
	s.metrics.reloaded()
	for name := range old.boards {
		if _, ok := snap.boards[name]; !ok {
			s.timeline.Forget(name)
			s.log.Info("board removed from the fleet", "board", name)
		}
	}
	for name, b := range snap.boards {
		if ob, ok := old.boards[name]; !ok {
			s.log.Info("board added to the fleet", "board", name, "mac", b.cfg.MAC)
		} else if ob != b {
			s.log.Info("board changed", "board", name, "mac", b.cfg.MAC)
		}
	}
	s.log.Info("fleet.yaml reloaded", "boards", len(snap.boards))
	return true, nil
}

func sameServer(a, b ServerConfig) bool {
	return a.Interface == b.Interface && a.Address == b.Address && a.State == b.State && a.Ports == b.Ports &&
		a.DHCP.Mode == b.DHCP.Mode && a.DHCP.PoolStart == b.DHCP.PoolStart && a.DHCP.PoolEnd == b.DHCP.PoolEnd &&
		a.DHCP.Router == b.DHCP.Router && slices.Equal(a.DHCP.DNS, b.DHCP.DNS) && a.DHCP.Lease == b.DHCP.Lease &&
		a.DHCP.ProxyPXE == b.DHCP.ProxyPXE
}
