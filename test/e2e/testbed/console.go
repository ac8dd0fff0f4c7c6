package testbed

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// Console collects a board's serial output into a log file and a buffer that tests match
// against, in order: each Expect starts where the previous match ended.
type Console struct {
	mu     sync.Mutex
	buf    []byte
	cursor int
	closed bool
	change chan struct{} // closed and replaced on every write
	log    *os.File
	in     io.Writer
	// arrivals[i] is when the output up to ends[i] had arrived, for MatchedAt.
	arrivals []time.Time
	ends     []int
	matched  time.Time
}

// NewConsole starts copying out into the log file at logPath; in is where Send writes.
func NewConsole(out io.Reader, in io.Writer, logPath string) (*Console, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	c := &Console{change: make(chan struct{}), log: f, in: in}
	go c.copy(out)
	return c, nil
}

func (c *Console) copy(out io.Reader) {
	b := make([]byte, 4096)
	for {
		n, err := out.Read(b)
		c.mu.Lock()
		if n > 0 {
			c.buf = append(c.buf, b[:n]...)
			c.log.Write(b[:n])
			c.arrivals = append(c.arrivals, time.Now())
			c.ends = append(c.ends, len(c.buf))
		}
		if err != nil {
			c.closed = true
		}
		close(c.change)
		c.change = make(chan struct{})
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// Send types line and a carriage return on the console.
func (c *Console) Send(line string) error {
	_, err := io.WriteString(c.in, line+"\r")
	return err
}

// Expect waits until the output after the cursor matches re (a regular expression), moves
// the cursor past the match and returns the matched text. It fails when timeout passes or
// the console closes first, and a match of failRe (if not nil) ends the wait early with an
// error: a guest's "FAIL" line need not wait for the deadline.
func (c *Console) Expect(re *regexp.Regexp, failRe *regexp.Regexp, timeout time.Duration) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		rest := c.buf[c.cursor:]
		loc := re.FindIndex(rest)
		var failLoc []int
		if failRe != nil {
			failLoc = failRe.FindIndex(rest)
		}
		if failLoc != nil && (loc == nil || failLoc[0] < loc[0]) {
			line := lineAt(rest, failLoc[0])
			c.cursor += failLoc[1]
			c.mu.Unlock()
			return "", fmt.Errorf("console shows %q while waiting for /%s/", line, re)
		}
		if loc != nil {
			m := string(rest[loc[0]:loc[1]])
			c.cursor += loc[1]
			c.matched = c.arrivalOf(c.cursor)
			c.mu.Unlock()
			return m, nil
		}
		closed, change := c.closed, c.change
		c.mu.Unlock()
		if closed {
			return "", fmt.Errorf("console closed while waiting for /%s/", re)
		}
		select {
		case <-change:
		case <-deadline.C:
			return "", fmt.Errorf("no /%s/ on the console within %v", re, timeout)
		}
	}
}

// ExpectString is Expect for a literal string.
func (c *Console) ExpectString(s string, timeout time.Duration) error {
	_, err := c.Expect(regexp.MustCompile(regexp.QuoteMeta(s)), nil, timeout)
	return err
}

// MatchedAt returns when the end of the last Expect's match arrived on the console: the time
// the guest printed it, not when the test looked.
func (c *Console) MatchedAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.matched
}

// arrivalOf returns when byte offset off (exclusive end) of the output arrived. c.mu held.
func (c *Console) arrivalOf(off int) time.Time {
	i := sort.SearchInts(c.ends, off)
	if i == len(c.ends) {
		return time.Now()
	}
	return c.arrivals[i]
}

// Tail returns the last n bytes of output, for failure messages.
func (c *Console) Tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.buf
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.ReplaceAll(string(b), "\r", "")
}

// Close closes the log file.
func (c *Console) Close() error { return c.log.Close() }

func lineAt(b []byte, i int) string {
	s := string(b[i:])
	if j := strings.IndexAny(s, "\r\n"); j >= 0 {
		s = s[:j]
	}
	return s
}
