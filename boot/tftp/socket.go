package tftp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// socket is one transfer's UDP socket, connected to the client. It waits for ACKs in
// one of two ways, chosen per wait by how many transfers are running.
//
// Lock-step TFTP is one round trip per block, so what waiting for each ACK costs is
// what the transfer costs. Measured (bench_test.go: server and curl pinned to one CPU,
// server CPU time per transfer, next to tftpd-hpa and dnsmasq):
//   - Alone, a blocking read with SO_RCVTIMEO is best: one syscall per ACK, as in the C
//     servers. Go's netpoller pays a read that fails with EAGAIN, an epoll_wait, a
//     wake-up and a second read: about 10% more CPU. (Parking before the first read is
//     not possible: RawConn.Read resets readiness the poller may already have seen, and
//     the transfer then stalls until the timeout.)
//   - With many transfers at once (a boot storm) blocking reads cost more: with few Ps,
//     a thread whose read returns waits for sysmon to retake the P from another blocked
//     one, and goroutines hop between threads. 20 Pi 4 boot sets at once, pinned to one
//     CPU: always blocking 3.4-4.3 s, netpoller when not alone 2.9-3.5 s (bare pin/tftp
//     3.0-3.9 s), with 10-20% less CPU. The netpoller waits for all of them on one
//     thread, and one epoll_wait often returns several ACKs.
//
// The mode switch (O_NONBLOCK on or off) happens only when the concurrency changes.
type socket struct {
	conn     *net.UDPConn
	rc       syscall.RawConn
	blocking bool          // the fd is in blocking mode
	timeout  time.Duration // SO_RCVTIMEO currently set (blocking mode)
	deadline time.Time     // read deadline currently set (netpoller mode)
	closing  atomic.Bool
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
	return &socket{conn: conn, rc: rc}, nil
}

func (s *socket) send(p []byte) error {
	_, err := s.conn.Write(p) // UDP: never blocks for long, whatever the mode
	return err
}

// recv waits up to timeout for one datagram, in a blocking read if block is set, else
// in the netpoller.
func (s *socket) recv(p []byte, timeout time.Duration, block bool) (int, error) {
	if block != s.blocking {
		var err error
		if cerr := s.rc.Control(func(fd uintptr) { err = unix.SetNonblock(int(fd), !block) }); cerr != nil {
			return 0, cerr
		}
		if err != nil {
			return 0, fmt.Errorf("switch socket mode: %w", err)
		}
		s.blocking = block
	}
	var n int
	var err error
	if block {
		n, err = s.recvBlocking(p, timeout)
	} else {
		n, err = s.recvPoll(p, timeout)
	}
	if err == nil && n == 0 && s.closing.Load() {
		return 0, errShutdown
	}
	return n, err
}

func (s *socket) recvBlocking(p []byte, timeout time.Duration) (int, error) {
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
	if err == unix.EAGAIN {
		return 0, errTimeout
	}
	return n, err
}

func (s *socket) recvPoll(p []byte, timeout time.Duration) (int, error) {
	// Moving the deadline costs a timer update per block; it is only pushed out when
	// less than half a timeout is left, so a lost packet is resent after between
	// timeout/2 and timeout.
	if now := time.Now(); s.deadline.Sub(now) < timeout/2 {
		s.deadline = now.Add(timeout)
		if err := s.conn.SetReadDeadline(s.deadline); err != nil {
			return 0, err
		}
	}
	n, err := s.conn.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		s.deadline = time.Time{} // the resend starts a full timeout
		return 0, errTimeout
	}
	return n, err
}

// shutdown wakes a waiting recv in either mode: the socket reads as at end of file. (A
// close alone would not wake a blocking read: the runtime defers closing an fd in use.)
func (s *socket) shutdown() {
	s.closing.Store(true)
	s.rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
}

// Close closes the socket.
func (s *socket) Close() error { return s.conn.Close() }
