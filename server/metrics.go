package server

import (
	"reflect"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/nfsroot"
)

// metrics owns the server's Prometheus registry (its own, never the global default) and
// what /metrics exports. The protocol packages know nothing of Prometheus: they keep
// plain counters (their Stats), and nfsroot calls an Observer per call; this file turns
// them into metrics. Labels are bounded: a per-board label only ever names a board of
// the fleet, never an unknown client or address.
type metrics struct {
	reg *prometheus.Registry

	events         *prometheus.CounterVec // pifleet_boot_events_total{stage,step}
	reloads        prometheus.Counter
	reloadFailures prometheus.Counter
	nfsCalls       *prometheus.HistogramVec // pifleet_nfs_call_duration_seconds{program,proc,status}

	// observers caches the histogram child of each (program, proc, status): the names
	// come from nfsroot's fixed tables, so the map is bounded, and a call after the
	// first of its kind costs a read-locked map lookup, no allocation.
	obsMu     sync.RWMutex
	observers map[callKey]prometheus.Observer

	// boards holds per-board counters fed by events and NFS calls; only boards of the
	// running config are exported.
	boardMu sync.RWMutex
	boards  map[string]*boardCounters
}

type callKey struct{ prog, proc, status string }

// boardCounters are one board's running totals.
type boardCounters struct {
	nfsCalls, nfsErrors, nfsNanos, tftpBytes atomic.Uint64
}

// nfsBuckets suit NFS over a LAN: a cached GETATTR answers in tens of microseconds, a
// COMMIT that syncs a big file can take most of a second.
var nfsBuckets = []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pifleet_boot_events_total",
			Help: "Boot steps of fleet boards, by stage (dhcp, tftp, nfs, reset) and step (discover, offer, read, probe, mount, ...)."},
			[]string{"stage", "step"}),
		reloads: prometheus.NewCounter(prometheus.CounterOpts{Name: "pifleet_reloads_total",
			Help: "fleet.yaml reloads applied."}),
		reloadFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "pifleet_reload_failures_total",
			Help: "fleet.yaml edits rejected (the running config was kept)."}),
		nfsCalls: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pifleet_nfs_call_duration_seconds",
			Help:    "NFS, MOUNT and NFS_ACL calls answered, by program, procedure and status, and the time the server took for each (from the parsed call to the reply, not counting the network).",
			Buckets: nfsBuckets}, []string{"program", "proc", "status"}),
		observers: map[callKey]prometheus.Observer{},
		boards:    map[string]*boardCounters{},
	}
	m.reg.MustRegister(m.events, m.reloads, m.reloadFailures, m.nfsCalls,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) reloaded()     { m.reloads.Inc() }
func (m *metrics) reloadFailed() { m.reloadFailures.Inc() }

// event counts a fleet board's boot step (the timeline records only those).
func (m *metrics) event(e boot.Event) {
	m.events.WithLabelValues(string(e.Stage), e.What).Inc()
	if e.Stage == boot.StageTFTP && e.Bytes > 0 && e.Board != "" {
		m.board(e.Board).tftpBytes.Add(uint64(e.Bytes))
	}
}

// board returns name's counters, creating them on first use.
func (m *metrics) board(name string) *boardCounters {
	m.boardMu.RLock()
	b := m.boards[name]
	m.boardMu.RUnlock()
	if b != nil {
		return b
	}
	m.boardMu.Lock()
	defer m.boardMu.Unlock()
	if b = m.boards[name]; b == nil {
		b = &boardCounters{}
		m.boards[name] = b
	}
	return b
}

// forget drops a board's counters (it left the fleet).
func (m *metrics) forget(name string) {
	m.boardMu.Lock()
	delete(m.boards, name)
	m.boardMu.Unlock()
}

// observeCall is nfsroot's Observer: one histogram observation, and the board's totals
// when the call ran against a board's export.
func (m *metrics) observeCall(c nfsroot.Call) {
	k := callKey{c.ProgramName(), c.ProcName(), c.StatusName()}
	m.obsMu.RLock()
	o := m.observers[k]
	m.obsMu.RUnlock()
	if o == nil {
		o = m.nfsCalls.WithLabelValues(k.prog, k.proc, k.status)
		m.obsMu.Lock()
		m.observers[k] = o
		m.obsMu.Unlock()
	}
	o.Observe(c.Duration.Seconds())
	if c.Board != "" {
		b := m.board(c.Board)
		b.nfsCalls.Add(1)
		b.nfsNanos.Add(uint64(max(c.Duration, 0)))
		if k.status != "ok" {
			b.nfsErrors.Add(1)
		}
	}
}

// statField says how one field of a package's Stats is exported. A field without an
// entry is still exported (as untyped, named after the field), so a counter a package
// adds shows up before anyone describes it here; Name "-" leaves a field out.
type statField struct {
	Name   string
	Help   string
	Type   prometheus.ValueType
	Labels prometheus.Labels // constant labels, to fold fields into one metric
}

// statsSource is one package's Stats, read at every scrape.
type statsSource struct {
	prefix string // of the names of fields without an entry, e.g. "pifleet_tftp_"
	what   string // for their help text, e.g. "tftp.Stats"
	get    func() (any, bool)
	fields map[string]statField
}

const (
	counter = prometheus.CounterValue
	gauge   = prometheus.GaugeValue
)

var dhcpFields = map[string]statField{
	"Received":      {"pifleet_dhcp_packets_received_total", "DHCP packets read from the socket.", counter, nil},
	"Replied":       {"pifleet_dhcp_replies_total", "DHCP replies sent.", counter, nil},
	"Ignored":       {"pifleet_dhcp_ignored_total", "Valid DHCP requests deliberately not answered (not ours, not in the fleet, ...).", counter, nil},
	"Malformed":     {"pifleet_dhcp_dropped_total", "DHCP packets dropped before they were handled, by reason.", counter, prometheus.Labels{"reason": "malformed"}},
	"RateLimited":   {"pifleet_dhcp_dropped_total", "", counter, prometheus.Labels{"reason": "rate_limited"}},
	"Overflow":      {"pifleet_dhcp_dropped_total", "", counter, prometheus.Labels{"reason": "queue_full"}},
	"Oversized":     {"pifleet_dhcp_dropped_total", "", counter, prometheus.Labels{"reason": "oversized"}},
	"OtherIf":       {"pifleet_dhcp_dropped_total", "", counter, prometheus.Labels{"reason": "other_interface"}},
	"SendErrors":    {"pifleet_dhcp_send_errors_total", "DHCP replies the kernel refused to send.", counter, nil},
	"LogSuppressed": {"pifleet_log_lines_suppressed_total", "Log lines held back by per-client rate limits, by service.", counter, prometheus.Labels{"service": "dhcp"}},
}

var tftpFields = map[string]statField{
	"Reads":   {"pifleet_tftp_transfers_total", "TFTP transfers, by result.", counter, prometheus.Labels{"result": "complete"}},
	"Probes":  {"pifleet_tftp_transfers_total", "", counter, prometheus.Labels{"result": "probe"}},
	"Missing": {"pifleet_tftp_transfers_total", "", counter, prometheus.Labels{"result": "missing"}},
	"Errors":  {"pifleet_tftp_transfers_total", "", counter, prometheus.Labels{"result": "error"}},
	"Bytes":   {"pifleet_tftp_bytes_total", "TFTP payload bytes sent.", counter, nil},
	"Refused": {"pifleet_tftp_transfers_total", "", counter, prometheus.Labels{"result": "refused"}},
	"OverCap": {"pifleet_tftp_over_cap_total", "TFTP requests answered \"too many transfers\" (the total or the per-client cap).", counter, nil},
}

var nfsFields = map[string]statField{
	"Conns":             {"pifleet_nfs_connections", "NFS and MOUNT connections open.", gauge, nil},
	"Reserved":          {"pifleet_nfs_reserved_bytes", "Bytes held by NFS calls in flight and replies not yet sent.", gauge, nil},
	"ReservedPeak":      {"pifleet_nfs_reserved_peak_bytes", "The most bytes NFS calls and replies have held at once.", gauge, nil},
	"AcceptErrors":      {"pifleet_nfs_accept_errors_total", "NFS accept calls that failed and were retried (EMFILE, ...).", counter, nil},
	"ConnsRefused":      {Name: "-"}, // the sum of the three below
	"RefusedPerAddress": {"pifleet_nfs_connections_refused_total", "NFS connections closed at once, by the limit they were over.", counter, prometheus.Labels{"limit": "per_address"}},
	"RefusedStrangers":  {"pifleet_nfs_connections_refused_total", "", counter, prometheus.Labels{"limit": "strangers"}},
	"RefusedTotal":      {"pifleet_nfs_connections_refused_total", "", counter, prometheus.Labels{"limit": "total"}},
	"IdleClosed":        {"pifleet_nfs_idle_closed_total", "NFS connections closed for sending no call for too long.", counter, nil},
	"Throttled":         {"pifleet_nfs_throttled_total", "Times an NFS connection was not read because its byte budget was full.", counter, nil},
	"LogSuppressed":     {"pifleet_log_lines_suppressed_total", "", counter, prometheus.Labels{"service": "nfs"}},
}

// statsCollector exports the numeric fields of each source's Stats. It is unchecked (no
// Describe): which fields exist is up to the packages.
type statsCollector struct{ sources []statsSource }

func (c *statsCollector) Describe(chan<- *prometheus.Desc) {}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	helps := map[string]string{} // one help text per metric name, from any of its fields
	for _, src := range c.sources {
		for _, f := range src.fields {
			if f.Help != "" {
				helps[f.Name] = f.Help
			}
		}
	}
	for _, src := range c.sources {
		v, ok := src.get()
		if !ok {
			continue
		}
		rv := reflect.ValueOf(v)
		for i := range rv.NumField() {
			sf := rv.Type().Field(i)
			var x float64
			switch fv := rv.Field(i); fv.Kind() {
			case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
				x = float64(fv.Int())
			case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
				x = float64(fv.Uint())
			case reflect.Float32, reflect.Float64:
				x = fv.Float()
			default:
				continue
			}
			f, described := src.fields[sf.Name]
			switch {
			case f.Name == "-":
				continue
			case !described:
				f = statField{Name: src.prefix + snake(sf.Name), Type: prometheus.UntypedValue,
					Help: src.what + "." + sf.Name + " (see the package's doc comment)."}
			case f.Help == "":
				f.Help = helps[f.Name]
			}
			desc := prometheus.NewDesc(f.Name, f.Help, nil, f.Labels)
			ch <- prometheus.MustNewConstMetric(desc, f.Type, x)
		}
	}
}

// snake turns a Go field name into a metric name part: "OverCap" -> "over_cap".
func snake(s string) string {
	var out []rune
	rs := []rune(s)
	for i, r := range rs {
		if unicode.IsUpper(r) {
			if i > 0 && (unicode.IsLower(rs[i-1]) || (i+1 < len(rs) && unicode.IsLower(rs[i+1]))) {
				out = append(out, '_')
			}
			r = unicode.ToLower(r)
		}
		out = append(out, r)
	}
	return string(out)
}

// registerServer adds the collectors that read the running server at each scrape.
func (m *metrics) registerServer(s *Server) {
	m.reg.MustRegister(&statsCollector{sources: []statsSource{
		{prefix: "pifleet_dhcp_", what: "dhcp.Stats", fields: dhcpFields, get: func() (any, bool) {
			d := s.dhcpSrv.Load()
			if d == nil {
				return nil, false
			}
			return d.Stats(), true
		}},
		{prefix: "pifleet_tftp_", what: "tftp.Stats", fields: tftpFields, get: func() (any, bool) {
			t := s.tftpSrv.Load()
			if t == nil {
				return nil, false
			}
			return t.Stats(), true
		}},
		{prefix: "pifleet_nfs_", what: "nfsroot.Stats", fields: nfsFields, get: func() (any, bool) {
			return s.nfs.Stats(), true
		}},
	}}, &fleetCollector{s: s})
}

// fleetCollector exports the fleet's state: counts, and per board of the running
// config its mount, upper size, boot stage and last boot, and its running totals.
type fleetCollector struct{ s *Server }

var (
	descBoards         = prometheus.NewDesc("pifleet_boards", "Boards in the running fleet.yaml.", nil, nil)
	descBoardsMounted  = prometheus.NewDesc("pifleet_boards_mounted", "Boards with their NFS root mounted.", nil, nil)
	descUnknown        = prometheus.NewDesc("pifleet_unknown_clients", "Boot clients seen that are not in the fleet (bounded table).", nil, nil)
	descUptime         = prometheus.NewDesc("pifleet_uptime_seconds", "Seconds since pifleet serve started.", nil, nil)
	descDHCPRequests   = prometheus.NewDesc("pifleet_dhcp_requests_total", "DHCP requests handled, by message type and outcome (the reply sent, none, or rate_limited).", []string{"type", "outcome"}, nil)
	descBoardInfo      = prometheus.NewDesc("pifleet_board_info", "A board of the fleet (always 1), with the image it runs.", []string{"board", "image"}, nil)
	descBoardPending   = prometheus.NewDesc("pifleet_board_image_pending", "1 while the board runs another image than fleet.yaml gives it (its root was mounted when it changed): it takes this one at its next boot.", []string{"board", "image"}, nil)
	descBoardMounted   = prometheus.NewDesc("pifleet_board_mounted", "1 if the board has its NFS root mounted.", []string{"board"}, nil)
	descBoardUpper     = prometheus.NewDesc("pifleet_board_upper_bytes", "Disk used by the board's own changes (its overlay upper dir; measured at most every few minutes).", []string{"board"}, nil)
	descBoardStage     = prometheus.NewDesc("pifleet_board_boot_stage", "How far the board's last boot got: 0 none (or reset), 1 dhcp, 2 tftp, 3 nfs (root mounted).", []string{"board"}, nil)
	descBoardLastBoot  = prometheus.NewDesc("pifleet_board_last_boot_timestamp_seconds", "When the board's last boot started (its first DHCP or TFTP step), Unix time.", []string{"board"}, nil)
	descBoardBootSecs  = prometheus.NewDesc("pifleet_board_last_boot_duration_seconds", "How long the board's last boot took from its first step to its NFS mount (absent until it mounts).", []string{"board"}, nil)
	descBoardNFSCalls  = prometheus.NewDesc("pifleet_board_nfs_calls_total", "NFS calls on the board's export.", []string{"board"}, nil)
	descBoardNFSErrs   = prometheus.NewDesc("pifleet_board_nfs_call_errors_total", "NFS calls on the board's export that did not end OK.", []string{"board"}, nil)
	descBoardNFSSecs   = prometheus.NewDesc("pifleet_board_nfs_call_seconds_total", "Time the server spent on the board's NFS calls (divide by the calls for the mean latency).", []string{"board"}, nil)
	descBoardTFTPBytes = prometheus.NewDesc("pifleet_board_tftp_bytes_total", "TFTP bytes sent to the board.", []string{"board"}, nil)
)

// metricsSizeTTL is how old a board's measured upper size may be in a scrape: measuring
// walks the upper dir, and scrapes come every few seconds.
const metricsSizeTTL = 2 * time.Minute

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBoards, descBoardsMounted, descUnknown, descUptime, descDHCPRequests,
		descBoardInfo, descBoardPending, descBoardMounted, descBoardUpper, descBoardStage, descBoardLastBoot, descBoardBootSecs,
		descBoardNFSCalls, descBoardNFSErrs, descBoardNFSSecs, descBoardTFTPBytes} {
		ch <- d
	}
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	s.mu.Lock()
	boards := s.cfg.Boards
	s.mu.Unlock()
	gaugeOf := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counterOf := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	mounted := 0
	snap := s.fleet.cur.Load()
	for _, b := range boards {
		m := s.nfs.Mounted(b.Name)
		if m {
			mounted++
		}
		image := b.Image
		if rt, ok := snap.boards[b.Name]; ok {
			image = rt.run.Image
			if rt.pending != nil {
				gaugeOf(descBoardPending, 1, b.Name, rt.pending.Image)
			}
		}
		gaugeOf(descBoardInfo, 1, b.Name, image)
		gaugeOf(descBoardMounted, b2f(m), b.Name)
		gaugeOf(descBoardUpper, float64(s.sizes.getMaxAge(s.state.Upper(b.Name), metricsSizeTTL)), b.Name)
		stage, started, took := lastBoot(s.lastBootEvents(b.Name))
		gaugeOf(descBoardStage, float64(stage), b.Name)
		if !started.IsZero() {
			gaugeOf(descBoardLastBoot, float64(started.UnixNano())/1e9, b.Name)
		}
		if took > 0 {
			gaugeOf(descBoardBootSecs, took.Seconds(), b.Name)
		}
		bc := s.metrics.board(b.Name)
		counterOf(descBoardNFSCalls, float64(bc.nfsCalls.Load()), b.Name)
		counterOf(descBoardNFSErrs, float64(bc.nfsErrors.Load()), b.Name)
		counterOf(descBoardNFSSecs, float64(bc.nfsNanos.Load())/1e9, b.Name)
		counterOf(descBoardTFTPBytes, float64(bc.tftpBytes.Load()), b.Name)
	}
	gaugeOf(descBoards, float64(len(boards)))
	gaugeOf(descBoardsMounted, float64(mounted))
	gaugeOf(descUnknown, float64(len(s.timeline.Unknowns())))
	gaugeOf(descUptime, time.Since(s.started).Seconds())
	if d := s.dhcpSrv.Load(); d != nil {
		for _, rc := range d.RequestCounts() {
			counterOf(descDHCPRequests, float64(rc.Count), rc.Type, rc.Outcome)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Boot stages as pifleet_board_boot_stage values.
const (
	stageNone = iota
	stageDHCP
	stageTFTP
	stageNFS
)

// lastBoot reads a board's last-boot timeline: the furthest stage it reached, when it
// started, and how long it took to mount its root (0 if it has not).
func lastBoot(evs []boot.Event) (stage int, started time.Time, took time.Duration) {
	for _, e := range evs {
		if e.Stage == boot.StageReset {
			stage, started, took = stageNone, time.Time{}, 0
			continue
		}
		if started.IsZero() {
			started = e.Time
		}
		switch e.Stage {
		case boot.StageDHCP:
			stage = max(stage, stageDHCP)
		case boot.StageTFTP:
			stage = max(stage, stageTFTP)
		case boot.StageNFS:
			if stage < stageNFS {
				took = e.Time.Sub(started)
			}
			stage = stageNFS
		}
	}
	return stage, started, took
}
