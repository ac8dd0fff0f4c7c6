package server

import (
	"net"
	"net/netip"
	"sync"
)

// HTTP connection bounds: the status page and API are open to the boot LAN, so one host
// must not be able to hold every descriptor (or every slot) with idle connections. Live
// pages keep one stream each (at most 8 per address, see the UI hub), well under the
// per-address bound.
const (
	httpMaxConns        = 256
	httpMaxConnsPerAddr = 32
)

// connLimiter counts the open HTTP connections, in total and per peer address, across
// every listener that shares it.
type connLimiter struct {
	mu      sync.Mutex
	total   int
	perAddr map[netip.Addr]int
}

func newConnLimiter() *connLimiter { return &connLimiter{perAddr: map[netip.Addr]int{}} }

// wrap returns l with its connections counted; a connection over a bound is closed as
// soon as it is accepted.
func (cl *connLimiter) wrap(l net.Listener) net.Listener {
	return &limitedListener{Listener: l, cl: cl}
}

func (cl *connLimiter) take(a netip.Addr) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.total >= httpMaxConns || cl.perAddr[a] >= httpMaxConnsPerAddr {
		return false
	}
	cl.total++
	cl.perAddr[a]++
	return true
}

func (cl *connLimiter) release(a netip.Addr) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.total--
	if cl.perAddr[a]--; cl.perAddr[a] <= 0 {
		delete(cl.perAddr, a)
	}
}

type limitedListener struct {
	net.Listener
	cl *connLimiter
}

// Accept returns the next connection within the bounds, closing those over them.
func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		a := ap.Addr().Unmap()
		if !l.cl.take(a) {
			c.Close()
			continue
		}
		return &limitedConn{Conn: c, release: sync.OnceFunc(func() { l.cl.release(a) })}, nil
	}
}

type limitedConn struct {
	net.Conn
	release func()
}

// Close closes the connection and gives its slot back (once, however often it is called).
func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
