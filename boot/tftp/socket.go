package tftp

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// socket is one transfer's UDP socket, connected to the client, switched to blocking
// mode and used with direct read/write syscalls.
//
// Why: lock-step TFTP is one round trip per block, so what waiting for each ACK costs
// is what the transfer costs. Measured (8 MiB at blksize 512, server and curl pinned to
// one CPU, server CPU time; see bench_test.go):
//   - Go's netpoller (conn.Read with a deadline) pays a read that fails with EAGAIN, an
//     epoll_wait, a wake-up and a second read per ACK: about 10% more server CPU than
//     this. Parking before the first read is not possible: RawConn.Read resets the
//     readiness the poller may already have seen, and the transfer then stalls until
//     the timeout.
//   - a blocking read with SO_RCVTIMEO is one syscall per ACK, as in the C servers. Its
//     cost is the runtime's: with GOMAXPROCS=1 sysmon retakes the P of a thread blocked
//     past 20 us, so it wakes often (about 15% of the server's CPU) and the goroutine
//     hops between threads. GOMAXPROCS=2 on one CPU was worse (spinning Ms).
//
// The threads this blocks are cheap next to tftpd-hpa's process per transfer.
type socket struct {
	conn    *net.UDPConn
	rc      syscall.RawConn
	timeout time.Duration // SO_RCVTIMEO currently set
	closing atomic.Bool
}

// errTimeout: no packet within the timeout.
var errTimeout = errors.New("timeout")

// errShutdown: the server is shutting down.
var errShutdown = errors.New("server shutting down")

func newSocket(conn *net.UDPConn) (*socket, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("transfer socket: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetNonblock(int(fd), false) }); err != nil {
		return nil, fmt.Errorf("transfer socket: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("transfer socket: blocking mode: %w", serr)
	}
	return &socket{conn: conn, rc: rc}, nil
}

func (s *socket) send(p []byte) error {
	var err error
	if cerr := s.rc.Write(func(fd uintptr) bool {
		for {
			_, err = unix.Write(int(fd), p)
			if err != unix.EINTR {
				return true
			}
		}
	}); cerr != nil {
		return cerr
	}
	return err
}

// recv waits up to timeout for one datagram.
func (s *socket) recv(p []byte, timeout time.Duration) (int, error) {
	if timeout != s.timeout {
		tv := unix.NsecToTimeval(timeout.Nanoseconds())
		var err error
		if cerr := s.rc.Control(func(fd uintptr) {
			err = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		}); cerr != nil {
			return 0, cerr
		}
		if err != nil {
			return 0, fmt.Errorf("set receive timeout: %w", err)
		}
		s.timeout = timeout
	}
	var n int
	var err error
	if cerr := s.rc.Read(func(fd uintptr) bool {
		for {
			n, err = unix.Read(int(fd), p)
			if err != unix.EINTR {
				return true
			}
		}
	}); cerr != nil {
		return 0, cerr
	}
	switch {
	case err == unix.EAGAIN:
		return 0, errTimeout
	case err != nil:
		return 0, err
	case n == 0 && s.closing.Load():
		return 0, errShutdown
	}
	return n, nil
}

// shutdown wakes a blocked recv (a close alone would wait for it: the runtime defers
// closing an fd in use).
func (s *socket) shutdown() {
	s.closing.Store(true)
	s.rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
}

func (s *socket) Close() error { return s.conn.Close() }
