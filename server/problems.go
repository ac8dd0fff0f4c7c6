package server

import (
	"fmt"
	"sort"
	"strings"
)

// Problem is one thing wrong (or doubtful) in fleet.yaml, with where it is and what to do.
type Problem struct {
	Line, Col int
	// Msg says what is wrong; Hint says how to fix it ("" if obvious).
	Msg, Hint string
	// Warning marks something that works but is probably not what the admin wants.
	Warning bool
}

// Problems is every problem Load found, in file order.
type Problems []Problem

// Errors counts the problems that are not warnings.
func (ps Problems) Errors() int {
	n := 0
	for _, p := range ps {
		if !p.Warning {
			n++
		}
	}
	return n
}

// Format renders the problems one per line as "file:line:col: msg (hint)".
func (ps Problems) Format(file string) string {
	var b strings.Builder
	for _, p := range ps {
		kind := ""
		if p.Warning {
			kind = "warning: "
		}
		fmt.Fprintf(&b, "%s:%d:%d: %s%s", file, p.Line, p.Col, kind, p.Msg)
		if p.Hint != "" {
			fmt.Fprintf(&b, " (hint: %s)", p.Hint)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// ConfigError is returned by Load when fleet.yaml has errors; it carries all of them.
type ConfigError struct {
	File     string
	Problems Problems
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("%s: %d problem(s):\n%s", e.File, e.Problems.Errors(), strings.TrimRight(e.Problems.Format(e.File), "\n"))
}

func (ps Problems) sorted() Problems {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Line != ps[j].Line {
			return ps[i].Line < ps[j].Line
		}
		return ps[i].Col < ps[j].Col
	})
	return ps
}

// closest returns the candidate nearest to s by edit distance, if it is close enough
// to be a likely misspelling.
func closest(s string, candidates []string) string {
	best, bestD := "", 1<<30
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), c); d < bestD {
			best, bestD = c, d
		}
	}
	if bestD <= 2 || (bestD <= 3 && len(s) > 6) {
		return best
	}
	return ""
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
