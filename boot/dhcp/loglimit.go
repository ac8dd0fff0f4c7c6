package dhcp

import (
	"context"
	"log/slog"
	"time"

	"github.com/pifleet/pifleet/internal/ratelog"
)

// Log lines a client can trigger are rate-limited per client MAC (DESIGN.md, Trust and
// limits): a flood from one MAC, or from thousands of made-up MACs, must not become a
// flood of log lines. Lines about clients that are not boards listed by MAC are also
// bounded in total, since anyone can make up MACs. What is held back is counted and
// reported by flush ("suppressed log lines", per key).

const (
	// Per client: 20 lines at once (a board's boot logs about 12), then one per 5 s.
	linesPerClient = 20
	linesEvery     = 5 * time.Second
	// Lines about clients outside the fleet, all together: 50 at once, then 5 a second.
	linesShared      = 50
	linesSharedEvery = 200 * time.Millisecond
	// sharedKey is the one key of the shared bound (it names the summary line).
	sharedKey = "clients not in fleet"
	// flushEvery is how often the suppressed counts are logged.
	flushEvery = time.Minute
)

// lineLimits holds the two bounds.
type lineLimits struct {
	perClient, shared *ratelog.Limiter
}

func newLineLimits(log *slog.Logger) lineLimits {
	return lineLimits{
		perClient: ratelog.New(log, linesPerClient, linesEvery),
		shared:    ratelog.New(log, linesShared, linesSharedEvery),
	}
}

// allow reports whether a line about key may be written now; shared lines also need
// the shared bound's token.
func (l lineLimits) allow(key string, shared bool) bool {
	return l.perClient.Allow(key) && (!shared || l.shared.Allow(sharedKey))
}

// flush logs the counts of the lines held back since the last flush.
func (l lineLimits) flush() {
	l.perClient.Flush()
	l.shared.Flush()
}

// limitedLog writes a line to s.log if the limits let a line about key through.
func (s *Server) limitedLog(level slog.Level, key string, shared bool, msg string, args ...any) {
	if s.log.Enabled(context.Background(), level) && s.lines.allow(key, shared) {
		s.log.Log(context.Background(), level, msg, args...)
	}
}
