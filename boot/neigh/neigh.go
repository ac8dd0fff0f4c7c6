// Package neigh reads the kernel's neighbour (ARP) table: which Ethernet address an IPv4
// address on an interface was last seen at. pifleet binds a board's address to the board
// only on evidence tied to the board's MAC; in proxy mode that evidence is this table,
// filled by the kernel from the ARP traffic every client sends before it talks to us.
package neigh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Table asks the kernel's neighbour table over one rtnetlink socket. The socket belongs
// to the network namespace of the thread that called Open, whichever goroutine uses it
// later. Safe for concurrent use.
type Table struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

// timeout bounds one lookup: the kernel answers at once, so this only guards against a
// socket that somehow never answers.
const timeout = time.Second

// Open opens the netlink socket.
func Open() (*Table, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("neighbour table: netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("neighbour table: bind netlink socket: %w", err)
	}
	// Strict checking is what lets the kernel answer a GET for one address (Linux 5.0+).
	unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1)
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("neighbour table: receive timeout: %w", err)
	}
	return &Table{fd: fd, buf: make([]byte, 4096)}, nil
}

// Close closes the socket.
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fd < 0 {
		return nil
	}
	err := unix.Close(t.fd)
	t.fd = -1
	return err
}

// Lookup returns the MAC the kernel's neighbour entry for ip on interface ifIndex holds,
// if the entry is usable evidence: reachable, stale, being re-checked, or permanent
// (an admin's static entry). An entry still being resolved, a failed one, or none at
// all gives ok false with a nil error.
func (t *Table) Lookup(ifIndex int, ip netip.Addr) (mac net.HardwareAddr, ok bool, err error) {
	if !ip.Is4() || ifIndex <= 0 {
		return nil, false, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fd < 0 {
		return nil, false, errors.New("neighbour table: closed")
	}
	t.seq++
	req := request(t.seq, ifIndex, ip)
	if err := unix.Sendto(t.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, false, fmt.Errorf("neighbour table: ask for %v: %w", ip, err)
	}
	for {
		n, _, err := unix.Recvfrom(t.fd, t.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("neighbour table: answer for %v: %w", ip, err)
		}
		mac, ok, done, err := parse(t.buf[:n], t.seq)
		if done {
			return mac, ok, err
		}
	}
}

// Resolve asks the kernel to resolve ip on interface ifIndex now (an ARP request), as
// it would before sending to it: for a client that talked to us without ARPing first
// (it took our MAC from a DHCP reply), so it has no entry yet. It does not wait; an
// existing entry's address is left as it is. Needs CAP_NET_ADMIN.
func (t *Table) Resolve(ifIndex int, ip netip.Addr) error {
	if !ip.Is4() || ifIndex <= 0 {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fd < 0 {
		return errors.New("neighbour table: closed")
	}
	t.seq++
	req := request(t.seq, ifIndex, ip)
	ne := binary.NativeEndian
	ne.PutUint16(req[4:], unix.RTM_NEWNEIGH)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	nd := req[unix.SizeofNlMsghdr:]
	ne.PutUint16(nd[8:], unix.NUD_NONE)
	nd[10] = unix.NTF_USE // start resolution, set nothing
	if err := unix.Sendto(t.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("neighbour table: resolve %v: %w", ip, err)
	}
	for {
		n, _, err := unix.Recvfrom(t.fd, t.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("neighbour table: resolve %v: %w", ip, err)
		}
		if _, _, done, err := parse(t.buf[:n], t.seq); done {
			return err
		}
	}
}

// request builds an RTM_GETNEIGH for one IPv4 address on one interface.
func request(seq uint32, ifIndex int, ip netip.Addr) []byte {
	const attrLen = 4 + 4 // NDA_DST header + IPv4 address
	l := unix.SizeofNlMsghdr + unix.SizeofNdMsg + attrLen
	b := make([]byte, l)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(l))
	ne.PutUint16(b[4:], unix.RTM_GETNEIGH)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(b[8:], seq)
	nd := b[unix.SizeofNlMsghdr:]
	nd[0] = unix.AF_INET
	ne.PutUint32(nd[4:], uint32(ifIndex))
	a := nd[unix.SizeofNdMsg:]
	ne.PutUint16(a[0:], attrLen)
	ne.PutUint16(a[2:], unix.NDA_DST)
	ip4 := ip.As4()
	copy(a[4:], ip4[:])
	return b
}

// usable are the entry states whose link-layer address the kernel has confirmed (or an
// admin set).
const usable = unix.NUD_REACHABLE | unix.NUD_STALE | unix.NUD_DELAY | unix.NUD_PROBE | unix.NUD_PERMANENT

// parse reads one netlink datagram for the answer to seq. done is false when the
// datagram holds nothing for seq (a late answer to an earlier, timed-out request).
func parse(b []byte, seq uint32) (mac net.HardwareAddr, ok, done bool, err error) {
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(ne.Uint32(b[0:]))
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return nil, false, true, errors.New("neighbour table: truncated netlink message")
		}
		typ, mseq := ne.Uint16(b[4:]), ne.Uint32(b[8:])
		body := b[unix.SizeofNlMsghdr:l]
		b = b[min(len(b), (l+3)&^3):]
		if mseq != seq {
			continue
		}
		switch typ {
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return nil, false, true, errors.New("neighbour table: short netlink error")
			}
			switch errno := unix.Errno(-int32(ne.Uint32(body))); errno {
			case 0, unix.ENOENT:
				return nil, false, true, nil // no entry
			default:
				return nil, false, true, fmt.Errorf("neighbour table: %w", errno)
			}
		case unix.RTM_NEWNEIGH:
			mac, ok := entry(body)
			return mac, ok, true, nil
		}
	}
	return nil, false, false, nil
}

// entry reads an ndmsg and its attributes: the MAC if the state makes it evidence.
func entry(b []byte) (net.HardwareAddr, bool) {
	if len(b) < unix.SizeofNdMsg {
		return nil, false
	}
	ne := binary.NativeEndian
	state := ne.Uint16(b[8:])
	if state&usable == 0 {
		return nil, false
	}
	for a := b[unix.SizeofNdMsg:]; len(a) >= 4; {
		l := int(ne.Uint16(a[0:]))
		if l < 4 || l > len(a) {
			return nil, false
		}
		if ne.Uint16(a[2:])&^unix.NLA_F_NESTED == unix.NDA_LLADDR && l == 4+6 {
			return net.HardwareAddr(append([]byte(nil), a[4:l]...)), true
		}
		a = a[min(len(a), (l+3)&^3):]
	}
	return nil, false
}
