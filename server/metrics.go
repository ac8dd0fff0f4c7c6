package server

import (
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/pifleet/pifleet/boot"
)

// metrics counts what the status page and /metrics report. Prometheus text format is
// written by hand: a handful of counters does not need a client library.
type metrics struct {
	mu            sync.Mutex
	events        map[[2]string]uint64 // (stage, what) -> count
	reloads       uint64
	reloadFailure uint64
}

func newMetrics() *metrics { return &metrics{events: map[[2]string]uint64{}} }

func (m *metrics) event(e boot.Event) {
	m.mu.Lock()
	m.events[[2]string{string(e.Stage), e.What}]++
	m.mu.Unlock()
}

func (m *metrics) reloaded() {
	m.mu.Lock()
	m.reloads++
	m.mu.Unlock()
}

func (m *metrics) reloadFailed() {
	m.mu.Lock()
	m.reloadFailure++
	m.mu.Unlock()
}

// write renders the Prometheus exposition; gauges come from the caller.
func (m *metrics) write(w io.Writer, gauges map[string]float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fmt.Fprintln(w, "# HELP pifleet_boot_events_total Boot steps seen, by stage (dhcp, tftp, nfs, reset) and step.")
	fmt.Fprintln(w, "# TYPE pifleet_boot_events_total counter")
	keys := make([][2]string, 0, len(m.events))
	for k := range m.events {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
	for _, k := range keys {
		fmt.Fprintf(w, "pifleet_boot_events_total{stage=%q,step=%q} %d\n", k[0], k[1], m.events[k])
	}
	fmt.Fprintln(w, "# HELP pifleet_reloads_total fleet.yaml reloads applied.")
	fmt.Fprintln(w, "# TYPE pifleet_reloads_total counter")
	fmt.Fprintf(w, "pifleet_reloads_total %d\n", m.reloads)
	fmt.Fprintln(w, "# HELP pifleet_reload_failures_total fleet.yaml edits rejected (the running config was kept).")
	fmt.Fprintln(w, "# TYPE pifleet_reload_failures_total counter")
	fmt.Fprintf(w, "pifleet_reload_failures_total %d\n", m.reloadFailure)
	names := make([]string, 0, len(gauges))
	for n := range gauges {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "# TYPE %s gauge\n%s %g\n", n, n, gauges[n])
	}
}
