package tftp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// socket is one transfer's UDP socket, connected to the client: it sends a packet and
// waits in Go's netpoller for the answer, as any Go network read does.
//
// The descriptor is nonblocking and registered with the netpoller (os.NewFile). Only
// the transfer's own goroutine sends and receives: a round trip is one RawConn.Read
// with the send in its callback (see roundTrip), and allocates nothing. shutdown, from
// another goroutine, ends a wait.
//
// The round trip's send and receive are nonblocking (MSG_DONTWAIT), so they are made as
// raw system calls (unix.RawSyscall6, for calls that do not block), which leave the Go
// scheduler out. A unix.Syscall6 tells the scheduler that its thread may block, and when
// every P had been idle, as the server is while its transfers wait for their ACKs, that
// wakes the runtime's monitor thread: with clients that answer after 150 µs it woke and
// slept again every block, two more thread switches per block on top of the one wait
// for the ACK (TestOneSleepPerBlock): a quarter to half of the server's CPU in a
// single transfer (README).
type socket struct {
	f        *os.File
	rc       syscall.RawConn
	deadline time.Time // read deadline set on f
	mtu      int       // the path MTU to the client when the socket was made; 0: unknown
	closing  atomic.Bool

	// One round trip: what step sends first (nil once sent), where it receives, and
	// what it got.
	out, in []byte
	n       int
	err     error
	step    func(fd uintptr) bool // s.roundStep, bound once
}

// errTimeout: no packet within the timeout.
var errTimeout = errors.New("timeout")

// errShutdown: the server is shutting down.
var errShutdown = errors.New("server shutting down")

// dialSocket opens a transfer's socket: bound to local (any address if nil), connected
// to client, so the kernel drops strangers' packets and routes once.
func dialSocket(local net.IP, client netip.AddrPort) (*socket, error) {
	if !client.Addr().Is4() {
		return nil, fmt.Errorf("transfer socket: client %v is not IPv4", client)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
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
	s := &socket{}
	if mtu, err := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU); err == nil {
		s.mtu = mtu
	}
	s.f = os.NewFile(uintptr(fd), "tftp transfer") // nonblocking: in the netpoller
	if s.rc, err = s.f.SyscallConn(); err != nil {
		s.f.Close()
		return nil, fmt.Errorf("transfer socket: %w", err)
	}
	s.step = s.roundStep
	return s, nil
}

// send writes one datagram without waiting for an answer (an ERROR the transfer ends
// with). EAGAIN (send buffer full) counts as a lost packet: the timeout resends.
func (s *socket) send(p []byte) error {
	var err error
	if cerr := s.rc.Control(func(fd uintptr) { err = unix.Send(int(fd), p, unix.MSG_DONTWAIT) }); cerr != nil {
		return cerr
	}
	if err == unix.EAGAIN {
		return nil
	}
	return err
}

// roundTrip sends out (unless it is nil: the packet was already sent, keep waiting)
// and waits up to timeout for one datagram into in. It returns errTimeout if nothing
// came.
func (s *socket) roundTrip(out, in []byte, timeout time.Duration) (int, error) {
	// Moving the deadline costs a timer update per block; it is only pushed out when
	// less than half a timeout is left, so a lost packet is resent after between
	// timeout/2 and timeout.
	if now := time.Now(); s.deadline.Sub(now) < timeout/2 {
		s.deadline = now.Add(timeout)
		if err := s.f.SetReadDeadline(s.deadline); err != nil {
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

// roundStep is roundTrip's RawConn.Read callback: the first call sends, every call
// reads; false means "park until readable".
func (s *socket) roundStep(fd uintptr) bool {
	if s.out != nil {
		out := s.out
		s.out = nil
		_, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&out[0])), uintptr(len(out)),
			unix.MSG_DONTWAIT, 0, 0)
		if errno != 0 && errno != unix.EAGAIN {
			s.err = s.sendFailure(errno)
			return true
		}
		return false // the answer cannot be there yet
	}
	for {
		n, _, err := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&s.in[0])), uintptr(len(s.in)),
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

// shutdown wakes a waiting roundTrip: the socket reads as at end of file. It may run on
// any goroutine; after Close it does nothing.
func (s *socket) shutdown() {
	s.closing.Store(true)
	s.rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
}

// Close closes the socket.
func (s *socket) Close() error { return s.f.Close() }
