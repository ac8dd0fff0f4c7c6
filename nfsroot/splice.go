package nfsroot

import (
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// A big READ's data goes from the page cache to the client's socket without passing
// through the server's memory, as knfsd's does: splice(2) moves the file range into a
// pipe (page references, no copy), which tells how many bytes the file really gave (a
// file that shrank meanwhile gives fewer, and says EOF); the reply's header is written
// with that count, then the pipe is spliced into the TCP socket, then the XDR padding.
// The copy path (pread into a pooled buffer, one socket write) stays for small READs,
// where its two syscalls cost less than splicing's four, for READs with other calls of
// their connection in flight (a client's readahead: measured, copying them costs less
// server CPU, and splicing wins only on a READ alone, by 2-3x at 1 MiB), and whenever no
// pipe is free.
//
// Pipes come from a server-wide pool (pipePool), not one per connection: a pipe is held
// only from the READ's splice until its reply has left, so thousands of idle connections
// hold none, and the pool bounds the descriptors and kernel memory they take.
const (
	// spliceMin: READs of fewer bytes are copied (measured one READ at a time: 16 and
	// 32 KiB cost less CPU copied, 64 KiB the same, 128 KiB about 10% less spliced).
	spliceMin = 128 << 10
	// pipeSize is what each pipe is asked to hold: a maxIO READ at any offset spans one
	// page more than maxIO, and the kernel rounds a pipe up to a power of two pages. A
	// server without CAP_SYS_RESOURCE gets fs.pipe-max-size (1 MiB by default): then a
	// maxIO READ is spliced only from a page-aligned offset, as the Linux client sends them.
	pipeSize = 2 << 20
	// maxPipes bounds the pipes open at once, server-wide (two descriptors each; the
	// kernel's ring for a 2 MiB pipe is 512 slots, about 20 KiB).
	maxPipes = 64
	// maxIdlePipes are kept open for the next READs; the rest are closed when let go,
	// and all idle ones when the last connection closes.
	maxIdlePipes = 8
	// pipesPerConn bounds the pipes one connection holds at once: only a READ alone on
	// its connection is spliced, so a client that does not read its replies holds one.
	pipesPerConn = 1
)

// pipe is a pipe that carries one READ reply's data; n is how many bytes it holds.
type pipe struct {
	r, w int
	n    int
}

// pipePool keeps pipes for spliced READs. Its zero value is ready: the first get makes
// the first pipe.
type pipePool struct {
	mu   sync.Mutex
	idle []*pipe
	open int // pipes open: idle and in use
	// capacity is what each pipe holds (0 until a pipe was made; -1 if the kernel keeps
	// pipes too small to be worth it: no splicing).
	capacity int
	// size is what new pipes are asked to hold (pipeSize; tests make it smaller).
	size int
	// spliced counts the READ replies whose data was spliced into a pipe.
	spliced atomic.Uint64
}

// inUse is how many pipes calls hold now.
func (pp *pipePool) inUse() int {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.open - len(pp.idle)
}

// get returns an empty pipe that can take count bytes at offset off, or nil: count too
// small or too big for splicing, or no pipe free (the caller copies instead).
func (pp *pipePool) get(off int64, count int) *pipe {
	if count < spliceMin {
		return nil
	}
	// A pipe holds a page (or part of one) per slot: the range takes one slot per page it
	// touches.
	page := int64(os.Getpagesize())
	need := int((off%page + int64(count) + page - 1) / page * page)
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.capacity < 0 || need > pp.capacity && pp.capacity > 0 {
		return nil
	}
	if n := len(pp.idle); n > 0 {
		p := pp.idle[n-1]
		pp.idle = pp.idle[:n-1]
		return p
	}
	if pp.open >= maxPipes {
		return nil
	}
	p, capacity, err := newPipe(orDefault(pp.size, pipeSize))
	if err != nil {
		return nil
	}
	if pp.capacity == 0 {
		pp.capacity = capacity
		if capacity < spliceMin {
			pp.capacity = -1 // the kernel keeps pipes small: copy every READ
		}
	}
	if pp.capacity < 0 || need > pp.capacity {
		p.close()
		return nil
	}
	pp.open++
	return p
}

func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// newPipe makes a nonblocking pipe (a splice never waits on it) of size bytes or, if the
// kernel refuses (without CAP_SYS_RESOURCE a pipe may hold fs.pipe-max-size, 1 MiB by
// default), as big as it allows, and returns its capacity.
func newPipe(size int) (*pipe, int, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, 0, err
	}
	p := &pipe{r: fds[0], w: fds[1]}
	capacity, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, size)
	if err != nil {
		if b, rerr := os.ReadFile("/proc/sys/fs/pipe-max-size"); rerr == nil {
			if m, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && m < size {
				capacity, err = unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, m)
			}
		}
	}
	if err != nil {
		capacity, err = unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
	}
	if err != nil {
		p.close()
		return nil, 0, err
	}
	return p, capacity, nil
}

// put takes back a pipe; one that still holds data (its reply was not sent whole) is
// closed, never reused.
func (pp *pipePool) put(p *pipe) {
	pp.mu.Lock()
	keep := p.n == 0 && len(pp.idle) < maxIdlePipes
	if keep {
		pp.idle = append(pp.idle, p)
	} else {
		pp.open--
	}
	pp.mu.Unlock()
	if !keep {
		p.close()
	}
}

// closeIdle closes the idle pipes (the server has no connection left).
func (pp *pipePool) closeIdle() {
	pp.mu.Lock()
	idle := pp.idle
	pp.idle = nil
	pp.open -= len(idle)
	pp.mu.Unlock()
	for _, p := range idle {
		p.close()
	}
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// fill splices up to count bytes of the file at off into the empty pipe p and returns
// how many it took (p.n) and whether the file ended first. An error leaves p.n as it is:
// the caller gives p back (put closes a pipe with data in it) and copies instead.
func (p *pipe) fill(rc syscall.RawConn, off int64, count int) (eof bool, err error) {
	cerr := rc.Control(func(fd uintptr) {
		for p.n < count {
			o := off + int64(p.n)
			m, e := unix.Splice(int(fd), &o, p.w, nil, count-p.n, 0)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN && p.n > 0:
				return // the pipe is full (it should not be): a short READ, which is valid
			case e != nil:
				err = e
				return
			case m == 0:
				eof = true
				return
			}
			p.n += int(m)
		}
	})
	if err == nil {
		err = cerr
	}
	return eof, err
}

var zeroPad [4]byte

// send writes hdr, the pipe's data, then its XDR padding to the socket behind rc, as one
// record (hdr's record mark counts all three). It waits in the netpoller while the socket
// is full, up to the connection's write deadline. On return p.n is what was not sent.
func (p *pipe) send(rc syscall.RawConn, hdr []byte) error {
	pad := (4 - p.n%4) % 4
	var err error
	werr := rc.Write(func(fd uintptr) bool {
		s := int(fd)
		for len(hdr) > 0 || p.n > 0 || pad > 0 {
			var m int
			var e error
			switch {
			case len(hdr) > 0: // MSG_MORE: the header waits for the data's first segment
				m, e = unix.SendmsgN(s, hdr, nil, nil, unix.MSG_MORE|unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			case p.n > 0:
				flags := unix.SPLICE_F_NONBLOCK
				if pad > 0 {
					flags |= unix.SPLICE_F_MORE
				}
				var m64 int64
				m64, e = unix.Splice(p.r, nil, s, nil, p.n, flags)
				m = int(m64)
				if e == nil && m == 0 {
					err = io.ErrUnexpectedEOF // the pipe holds less than it was filled with
					return true
				}
			default:
				m, e = unix.SendmsgN(s, zeroPad[:pad], nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			}
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false // socket full: the netpoller calls again when it drains
			case e != nil:
				err = e
				return true
			}
			switch {
			case len(hdr) > 0:
				hdr = hdr[m:]
			case p.n > 0:
				p.n -= m
			default:
				pad -= m
			}
		}
		return true
	})
	if err == nil {
		err = werr
	}
	return err
}
