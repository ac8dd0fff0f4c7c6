package tftp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// socket is one transfer's UDP socket, connected to the client. It sends a packet and
// waits for the answer in one of two ways, chosen per block by the sender's pacer:
//
//   - direct: the send and a blocking read, as raw system calls the Go scheduler does
//     not see, exactly what a C server does. The goroutine keeps its thread and its P
//     while it waits, so nothing else runs on that P: the pacer uses it only for
//     clients that answer within microseconds, for a bounded run of blocks at a time,
//     and the read gives up after SO_RCVTIMEO (directWait; see there). A signal, such
//     as the runtime preempting the goroutine for a GC stop, ends the read at once:
//     socket reads with SO_RCVTIMEO are never restarted. (With
//     GODEBUG=asyncpreemptoff=1 no such signal comes, and a stop waits out the read.)
//   - netpoller: the send, then the goroutine parks until the socket is readable, as
//     any Go network read does.
//
// Lock-step TFTP is one round trip per block, so what a round trip costs is what the
// transfer costs. With server and client on one CPU (bench_test.go) a netpoller round
// trip adds about a microsecond of scheduler work to the kernel's (park, a scheduling
// pass, epoll_wait, wake), and the order in which a boot storm's transfers then run
// costs the clients more context switches too. A blocking read that the runtime sees
// is no better: sysmon takes the P from a thread blocked for more than 20 µs, and
// goroutines hop between threads. (ppoll with a microsecond timeout would bound a
// direct wait more tightly, but arming its high-resolution timer costs more than the
// whole round trip in a virtual machine.)
//
// The socket is in the netpoller only while netpoller waits are used: a registered
// socket wakes an idle thread's epoll_wait on every ACK, even when no goroutine waits
// for it. It joins through a dup of its descriptor (os.NewFile) and leaves by closing
// the dup. The descriptor stays blocking for direct reads; every netpoller-side call
// passes MSG_DONTWAIT. Only the transfer's own goroutine sends, receives and closes,
// so no net.Conn locks are needed; the netpoller callback and its results live in the
// socket, so a round trip allocates nothing (joining the netpoller allocates the
// dup's os.File, once per run of direct waits).
type socket struct {
	fd       int             // the transfer's UDP socket
	polled   *os.File        // a dup of fd registered with the netpoller, or nil
	rc       syscall.RawConn // polled's
	deadline time.Time       // read deadline set on polled

	mu      sync.Mutex // shutdown vs Close: fd must not be reused under shutdown
	closed  bool
	closing atomic.Bool

	// One netpoller round trip: what step sends first (nil once sent), where it
	// receives, and what it got.
	out, in []byte
	n       int
	err     error
	step    func(fd uintptr) bool // s.pollStep, bound once
}

// directWait is the receive timeout of a direct read. The kernel counts it in timer
// ticks and rounds up: 1-2 ticks and a wake-up, 4-12 ms at HZ=250, the longest a
// direct wait holds a P in vain when a client that answered quickly stops answering.
const directWait = time.Millisecond

// errTimeout: no packet within the timeout.
var errTimeout = errors.New("timeout")

// errNotYet: no packet within a direct wait (the packet was sent).
var errNotYet = errors.New("no answer yet")

// errShutdown: the server is shutting down.
var errShutdown = errors.New("server shutting down")

// dialSocket opens a transfer's socket: bound to local (any address if nil), connected
// to client, so the kernel drops strangers' packets and routes once.
func dialSocket(local net.IP, client netip.AddrPort) (*socket, error) {
	if !client.Addr().Is4() {
		return nil, fmt.Errorf("transfer socket: client %v is not IPv4", client)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("transfer socket: %w", err)
	}
	sa := &unix.SockaddrInet4{}
	if ip4 := local.To4(); ip4 != nil {
		sa.Addr = [4]byte(ip4)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("transfer socket: bind %v: %w", local, err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: client.Addr().As4(), Port: int(client.Port())}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("transfer socket: connect %v: %w", client, err)
	}
	tv := unix.NsecToTimeval(directWait.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("transfer socket: receive timeout: %w", err)
	}
	s := &socket{fd: fd}
	s.step = s.pollStep
	return s, nil
}

// send writes one datagram without waiting for an answer (an ERROR the transfer ends
// with). EAGAIN (send buffer full) counts as a lost packet: the timeout resends.
func (s *socket) send(p []byte) error {
	err := unix.Send(s.fd, p, unix.MSG_DONTWAIT)
	if err == unix.EAGAIN {
		return nil
	}
	return err
}

// direct sends out and waits up to directWait for one datagram into in, in raw system
// calls (see socket). It returns errNotYet if none came in time or a signal cut the
// wait short; the caller goes on waiting in the netpoller.
func (s *socket) direct(out, in []byte) (int, error) {
	if s.polled != nil {
		if err := s.leavePoller(); err != nil {
			return 0, err
		}
	}
	if _, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(s.fd), uintptr(unsafe.Pointer(&out[0])), uintptr(len(out)),
		unix.MSG_DONTWAIT, 0, 0); e != 0 && e != unix.EAGAIN {
		return 0, s.sendFailure(e)
	}
	// recvfrom rather than read: signal(7) promises EINTR for it with SO_RCVTIMEO set.
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(s.fd), uintptr(unsafe.Pointer(&in[0])), uintptr(len(in)),
		0, 0, 0)
	switch e {
	case 0:
		if n == 0 && s.closing.Load() {
			return 0, errShutdown
		}
		return int(n), nil
	case unix.EAGAIN, unix.EINTR:
		if s.closing.Load() {
			return 0, errShutdown
		}
		return 0, errNotYet // timed out, or a signal (perhaps the runtime preempting us)
	}
	return 0, fmt.Errorf("receive: %w", e)
}

// poll sends out (unless it is nil: the packet was already sent, keep waiting) and
// waits in the netpoller up to timeout for one datagram into in. It returns errTimeout
// if nothing came.
func (s *socket) poll(out, in []byte, timeout time.Duration) (int, error) {
	if s.polled == nil {
		if err := s.joinPoller(); err != nil {
			return 0, err
		}
	}
	// Moving the deadline costs a timer update per block; it is only pushed out when
	// less than half a timeout is left, so a lost packet is resent after between
	// timeout/2 and timeout.
	if now := time.Now(); s.deadline.Sub(now) < timeout/2 {
		s.deadline = now.Add(timeout)
		if err := s.polled.SetReadDeadline(s.deadline); err != nil {
			return 0, err
		}
	}
	// The packet is sent from inside RawConn.Read's callback: Read clears the
	// descriptor's readiness before the callback's first call, so readiness caused by
	// the answer is never lost, and no read that could only fail with EAGAIN is made
	// before parking.
	s.out, s.in, s.n, s.err = out, in, 0, nil
	if err := s.rc.Read(s.step); err != nil {
		s.out = nil
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.deadline = time.Time{} // the resend starts a full timeout
			return 0, errTimeout
		}
		return 0, err
	}
	if s.err == nil && s.n == 0 && s.closing.Load() {
		return 0, errShutdown
	}
	return s.n, s.err
}

// pollStep is poll's RawConn.Read callback: the first call sends, every call reads;
// false means "park until readable".
func (s *socket) pollStep(fd uintptr) bool {
	if s.out != nil {
		out := s.out
		s.out = nil
		if err := unix.Send(int(fd), out, unix.MSG_DONTWAIT); err != nil && err != unix.EAGAIN {
			s.err = s.sendFailure(err)
			return true
		}
		return false // the answer cannot be there yet
	}
	for {
		n, _, err := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&s.in[0])), uintptr(len(s.in)),
			unix.MSG_DONTWAIT, 0, 0) // no source address: the socket is connected
		switch err {
		case 0:
			s.n = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if s.closing.Load() { // a shut-down socket reads EAGAIN when nonblocking
				s.err = errShutdown
				return true
			}
			return false
		}
		s.err = fmt.Errorf("receive: %w", err)
		return true
	}
}

// sendFailure wraps a failed send; EPIPE means shutdown came first.
func (s *socket) sendFailure(err error) error {
	if err == unix.EPIPE && s.closing.Load() {
		return errShutdown
	}
	return fmt.Errorf("send: %w", err)
}

// joinPoller registers a dup of the descriptor with the netpoller.
func (s *socket) joinPoller() error {
	dup, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("enter netpoller: %w", err)
	}
	// os.NewFile registers only a nonblocking descriptor; the flag is shared with
	// fd, whose direct reads must block, and every netpoller call says MSG_DONTWAIT.
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return fmt.Errorf("enter netpoller: %w", err)
	}
	f := os.NewFile(uintptr(dup), "tftp transfer")
	if err := unix.SetNonblock(dup, false); err != nil {
		f.Close()
		return fmt.Errorf("enter netpoller: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return fmt.Errorf("enter netpoller: %w", err)
	}
	s.polled, s.rc, s.deadline = f, rc, time.Time{}
	return nil
}

// leavePoller closes the dup, which unregisters it.
func (s *socket) leavePoller() error {
	err := s.polled.Close()
	s.polled, s.rc = nil, nil
	if err != nil {
		return fmt.Errorf("leave netpoller: %w", err)
	}
	return nil
}

// shutdown wakes a waiting direct or poll: the socket reads as at end of file. It may
// run on any goroutine.
func (s *socket) shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing.Store(true)
	if !s.closed {
		unix.Shutdown(s.fd, unix.SHUT_RDWR)
	}
}

// Close closes the socket.
func (s *socket) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.polled != nil {
		s.polled.Close()
	}
	return unix.Close(s.fd)
}
