package images

import (
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// progress reports bytes, rate and ETA of one import phase. On a terminal it redraws one line;
// anywhere else (logs, CI, a pipe) it prints a plain line every few seconds.
type progress struct {
	w        io.Writer
	tty      bool
	image    string
	phase    string
	total    int64 // 0 when unknown: no percentage, no ETA
	done     int64
	start    time.Time
	last     time.Time
	interval time.Duration
	now      func() time.Time
}

func newProgress(w io.Writer, image string) *progress {
	p := &progress{w: w, image: image, now: time.Now, interval: 5 * time.Second}
	if f, ok := w.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			p.tty = true
			p.interval = 200 * time.Millisecond
		}
	}
	return p
}

// begin starts a phase ("decompress", "copy") of total bytes (0 if unknown).
func (p *progress) begin(phase string, total int64) {
	if p == nil || p.w == nil {
		return
	}
	p.end()
	p.phase, p.total, p.done = phase, total, 0
	p.start = p.now()
	p.last = p.start
}

func (p *progress) add(n int64) {
	if p == nil || p.w == nil || p.phase == "" {
		return
	}
	p.done += n
	if t := p.now(); t.Sub(p.last) >= p.interval {
		p.last = t
		p.print(false)
	}
}

// end prints the phase's final line.
func (p *progress) end() {
	if p == nil || p.w == nil || p.phase == "" {
		return
	}
	p.print(true)
	p.phase = ""
}

// fail ends the phase that an error stopped. It never says "done" nor a percentage: all of
// a truncated .xz is read (100% of its bytes) before xz reports that it ends early.
func (p *progress) fail() {
	if p == nil || p.w == nil || p.phase == "" {
		return
	}
	s := fmt.Sprintf("image %s: %s failed after %s, %s read", p.image, p.phase,
		p.now().Sub(p.start).Round(100*time.Millisecond), HumanBytes(p.done))
	if p.tty {
		s = "\r\x1b[K" + s
	}
	fmt.Fprintln(p.w, s)
	p.phase = ""
}

func (p *progress) print(final bool) {
	fmt.Fprint(p.w, p.line(final))
}

// line formats e.g. "image pios: copy 312.0 MiB / 1.2 GiB (25%) 45.2 MiB/s ETA 0:21".
func (p *progress) line(final bool) string {
	el := p.now().Sub(p.start)
	rate := 0.0
	if el > 0 {
		rate = float64(p.done) / el.Seconds()
	}
	s := fmt.Sprintf("image %s: %s %s", p.image, p.phase, HumanBytes(p.done))
	if p.total > 0 {
		s += fmt.Sprintf(" / %s (%d%%)", HumanBytes(p.total), p.done*100/p.total)
	}
	s += fmt.Sprintf(" %s/s", HumanBytes(int64(rate)))
	switch {
	case final:
		s += fmt.Sprintf(" done in %s", el.Round(100*time.Millisecond))
	case p.total > 0 && rate > 0 && p.done < p.total:
		eta := time.Duration(float64(p.total-p.done) / rate * float64(time.Second))
		s += fmt.Sprintf(" ETA %d:%02d", int(eta.Minutes()), int(eta.Seconds())%60)
	}
	if p.tty {
		end := ""
		if final {
			end = "\n"
		}
		return "\r\x1b[K" + s + end
	}
	return s + "\n"
}

// HumanBytes renders a byte count for people: "512 B", "1.5 MiB".
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// countingReader feeds a progress from a stream.
type countingReader struct {
	r io.Reader
	p *progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.p.add(int64(n))
	return n, err
}
