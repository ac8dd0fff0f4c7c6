package scale

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// Summary is a run's figures, reduced for the table.
type Summary struct {
	Server                    string // pifleet or peers
	Boards, Booted            int
	AllBooted                 time.Duration
	P50, P95, Max             time.Duration    // per board, power-on to booted
	DHCP, TFTP, NFS           [2]time.Duration // p50, max per stage
	CPU                       time.Duration    // server CPU from power-on to all booted
	SimCPU                    time.Duration    // the simulator's CPU meanwhile
	PeakRSS, IdleRSS, BaseRSS int64
	Errors, Retries           int
	MaxRetries                int                      // the most retransmissions one exchange needed
	Ops                       int                      // NFS calls per board (mean)
	Diverged                  int                      // replayed calls answered otherwise than captured (all boards)
	DivergedBy                map[string]int           // the same per procedure
	CPUByCmd                  map[string]time.Duration // server CPU per command (peers)
	FirstDiverge              string
	KeepAlives                int
	Load                      string
	ServerWarns               int
	FirstErr                  error
}

// Summarize reduces r, a run of server.
func Summarize(server string, r *Result) Summary {
	s := Summary{Server: server, DivergedBy: map[string]int{}, Boards: len(r.Boards), AllBooted: r.AllBooted, Load: r.Load, ServerWarns: r.ServerWarns,
		CPU: r.Booted.CPU - r.Start.CPU, CPUByCmd: map[string]time.Duration{}, SimCPU: r.SimCPU, PeakRSS: r.Booted.HWM, IdleRSS: r.Idle.RSS, BaseRSS: r.Start.RSS}
	for c, d := range r.Booted.ByCmd {
		s.CPUByCmd[c] = d - r.Start.ByCmd[c]
	}
	var total, dhcp, tftp, nfs []time.Duration
	ops := 0
	for _, b := range r.Boards {
		s.Retries += b.Retries
		s.MaxRetries = max(s.MaxRetries, b.MaxRetries)
		s.KeepAlives += b.KeepAlives
		s.Diverged += b.Diverged
		for p, n := range b.DivergedBy {
			s.DivergedBy[p] += n
		}
		if s.FirstDiverge == "" {
			s.FirstDiverge = b.FirstDiverge
		}
		for _, e := range []error{b.Err, b.IdleErr} {
			if e != nil {
				s.Errors++
				if s.FirstErr == nil {
					s.FirstErr = e
				}
			}
		}
		if b.Err != nil {
			continue
		}
		s.Booted++
		total = append(total, b.Total)
		dhcp = append(dhcp, b.DHCP)
		tftp = append(tftp, b.TFTP)
		nfs = append(nfs, b.NFS)
		for _, n := range b.Ops {
			ops += n
		}
	}
	if s.Booted > 0 {
		s.Ops = ops / s.Booted
	}
	s.P50, s.P95, s.Max = quantile(total, 0.5), quantile(total, 0.95), quantile(total, 1)
	s.DHCP = [2]time.Duration{quantile(dhcp, 0.5), quantile(dhcp, 1)}
	s.TFTP = [2]time.Duration{quantile(tftp, 0.5), quantile(tftp, 1)}
	s.NFS = [2]time.Duration{quantile(nfs, 0.5), quantile(nfs, 1)}
	return s
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	d = slices.Clone(d)
	slices.Sort(d)
	i := int(q*float64(len(d)-1) + 0.5)
	return d[i]
}

// WriteTable prints the summaries as a Markdown table, then the replayed NFS calls
// that a server answered otherwise than captured, per procedure. Server CPU is utime +
// stime from power-on to all booted; for the peers it is the sum over every peer process
// with the children each reaped (in.tftpd's per-transfer processes), and their RSS is
// the sum over the processes (peak: sampled every 250 ms).
func WriteTable(w io.Writer, mode string, rows []Summary) {
	fmt.Fprintf(w, "| boards (%s) | server | all booted | board p50 / p95 / max | DHCP p50 / max | TFTP p50 / max | NFS p50 / max | NFS calls/board | server CPU (simulator CPU) | RSS start / peak / idle | idle RSS per board | errors (diverged calls) | retries (max one exchange) | load avg |\n", mode)
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, s := range rows {
		perBoard := float64(s.IdleRSS-s.BaseRSS) / float64(max(s.Booted, 1))
		fmt.Fprintf(w, "| %d | %s | %s | %s / %s / %s | %s / %s | %s / %s | %s / %s | %d | %s (%s) | %s / %s / %s | %s | %d (%d) | %d (%d) | %s |\n",
			s.Boards, s.Server, sec(s.AllBooted), sec(s.P50), sec(s.P95), sec(s.Max),
			sec(s.DHCP[0]), sec(s.DHCP[1]), sec(s.TFTP[0]), sec(s.TFTP[1]), sec(s.NFS[0]), sec(s.NFS[1]),
			s.Ops, sec(s.CPU), sec(s.SimCPU), mib(s.BaseRSS), mib(s.PeakRSS), mib(s.IdleRSS), mib(int64(perBoard)),
			s.Errors, s.Diverged, s.Retries, s.MaxRetries, s.Load)
	}
	for _, s := range rows {
		if len(s.CPUByCmd) == 0 {
			continue
		}
		var by []string
		for _, c := range slices.Sorted(maps.Keys(s.CPUByCmd)) {
			by = append(by, fmt.Sprintf("%s %s", c, sec(s.CPUByCmd[c])))
		}
		fmt.Fprintf(w, "\n%s, %d boards: server CPU by process: %s\n", s.Server, s.Boards, strings.Join(by, ", "))
	}
	for _, s := range rows {
		if s.Diverged == 0 {
			continue
		}
		var by []string
		for _, p := range slices.Sorted(maps.Keys(s.DivergedBy)) {
			by = append(by, fmt.Sprintf("%s %d", p, s.DivergedBy[p]))
		}
		fmt.Fprintf(w, "\n%s, %d boards: %d replayed calls answered otherwise than captured (%s); first: %s\n",
			s.Server, s.Boards, s.Diverged, strings.Join(by, ", "), s.FirstDiverge)
	}
}

func sec(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
func mib(n int64) string         { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
