package scale

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// dhcpRetry is how long a board waits for an answer before it sends again; the Pi 4
// EEPROM's first retransmission comes after a few seconds.
const dhcpRetry = 2 * time.Second

// maxTries bounds every client retransmission loop (the goal is at most two retries).
const maxTries = 5

// dhcpSocket is the one UDP socket on port 68 that every simulated board shares; the
// server broadcasts its answers, and a reader hands each to the board whose xid it carries.
type dhcpSocket struct {
	conn *net.UDPConn
	mu   sync.Mutex
	wait map[uint32]chan []byte
}

// listenDHCP opens the shared client socket; call it inside the client namespace.
func listenDHCP(iface string) (*dhcpSocket, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) {
			serr = errors.Join(
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20),
				unix.BindToDevice(int(fd), iface))
		})
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:68")
	if err != nil {
		return nil, fmt.Errorf("dhcp client socket: %w", err)
	}
	s := &dhcpSocket{conn: pc.(*net.UDPConn), wait: map[uint32]chan []byte{}}
	go s.demux()
	return s, nil
}

func (s *dhcpSocket) Close() error { return s.conn.Close() }

// demux runs until the socket is closed.
func (s *dhcpSocket) demux() {
	buf := make([]byte, 1500)
	for {
		n, _, err := s.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		if n < 240 || buf[0] != 2 {
			continue
		}
		xid := binary.BigEndian.Uint32(buf[4:8])
		s.mu.Lock()
		ch := s.wait[xid]
		s.mu.Unlock()
		if ch != nil {
			select {
			case ch <- append([]byte(nil), buf[:n]...):
			default:
			}
		}
	}
}

// exchange broadcasts pkt until a reply of type want comes (at most maxTries sends); it
// returns the reply and the number of retransmissions.
func (s *dhcpSocket) exchange(ctx context.Context, pkt []byte, want byte) ([]byte, int, error) {
	xid := binary.BigEndian.Uint32(pkt[4:8])
	ch := make(chan []byte, 8)
	s.mu.Lock()
	s.wait[xid] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.wait, xid)
		s.mu.Unlock()
	}()
	for try := range maxTries {
		if _, err := s.conn.WriteToUDP(pkt, &net.UDPAddr{IP: net.IPv4bcast, Port: 67}); err != nil {
			return nil, try, fmt.Errorf("dhcp send: %w", err)
		}
		timer := time.NewTimer(dhcpRetry)
	wait:
		for {
			select {
			case r := <-ch:
				if msgType(r) == want {
					timer.Stop()
					return r, try, nil
				}
			case <-timer.C:
				break wait
			case <-ctx.Done():
				timer.Stop()
				return nil, try, ctx.Err()
			}
		}
	}
	return nil, maxTries - 1, fmt.Errorf("no DHCP answer of type %d after %d sends", want, maxTries)
}

func opt(code byte, data ...byte) []byte { return append([]byte{code, byte(len(data))}, data...) }

// piParams is the Pi 4 EEPROM's parameter request list.
var piParams = []byte{1, 3, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135}

// piPacket is a Pi 4 EEPROM BOOTREQUEST (PI-BOOT.md): options 53, 55, 60, 93, 94, 97 and
// extra ones (50, 54 for a REQUEST).
func piPacket(typ byte, xid uint32, mac net.HardwareAddr, serial uint32, extra ...[]byte) []byte {
	b := make([]byte, 240, 400)
	b[0], b[1], b[2] = 1, 1, 6
	binary.BigEndian.PutUint32(b[4:8], xid)
	copy(b[28:34], mac)
	copy(b[236:240], []byte{99, 130, 83, 99})
	id := []byte{0, 'R', 'P', 'i', '4'}
	id = binary.LittleEndian.AppendUint32(id, 0xc03111)
	id = append(id, mac[2:6]...)
	id = binary.LittleEndian.AppendUint32(id, serial)
	opts := [][]byte{opt(53, typ)}
	opts = append(opts, extra...)
	opts = append(opts, opt(55, piParams...), opt(60, []byte("PXEClient:Arch:00000:UNDI:002001")...),
		opt(93, 0, 0), opt(94, 1, 2, 1), opt(97, id...))
	for _, o := range opts {
		b = append(b, o...)
	}
	return append(b, 255)
}

// options parses a reply's options (code -> value; later copies win).
func options(p []byte) map[byte][]byte {
	out := map[byte][]byte{}
	if len(p) < 240 {
		return out
	}
	o := p[240:]
	for len(o) > 0 {
		code := o[0]
		if code == 255 {
			break
		}
		if code == 0 {
			o = o[1:]
			continue
		}
		if len(o) < 2 || len(o) < 2+int(o[1]) {
			break
		}
		out[code] = o[2 : 2+int(o[1])]
		o = o[2+int(o[1]):]
	}
	return out
}

func msgType(p []byte) byte {
	if v := options(p)[53]; len(v) == 1 {
		return v[0]
	}
	return 0
}

// dhcp runs the board's DHCP: DISCOVER -> OFFER, and in full mode REQUEST -> ACK. It
// checks that the answer is a Pi boot offer naming the server, and in full mode the
// board's fixed address. It returns the retransmissions made.
func (b *board) dhcp(ctx context.Context, s *dhcpSocket, full bool, server netip.Addr) (int, error) {
	xid := 0x5a000000 | uint32(b.index)
	offer, retries, err := s.exchange(ctx, piPacket(1, xid, b.mac, b.serial), 2)
	if err != nil {
		return retries, fmt.Errorf("DISCOVER: %w", err)
	}
	if !bytes.Contains(options(offer)[43], []byte("Raspberry Pi Boot")) {
		return retries, fmt.Errorf("OFFER without the Raspberry Pi Boot menu (option 43)")
	}
	if sa := netip.AddrFrom4([4]byte(offer[20:24])); sa != server {
		return retries, fmt.Errorf("OFFER names TFTP server %s, want %s", sa, server)
	}
	yi := netip.AddrFrom4([4]byte(offer[16:20]))
	if !full {
		if yi.IsValid() && !yi.IsUnspecified() {
			return retries, fmt.Errorf("proxy OFFER gives address %s", yi)
		}
		return retries, nil
	}
	if yi != b.addr {
		return retries, fmt.Errorf("OFFER gives %s, want the fixed %s", yi, b.addr)
	}
	req := piPacket(3, xid, b.mac, b.serial, opt(50, yi.AsSlice()...), opt(54, server.AsSlice()...))
	ack, r2, err := s.exchange(ctx, req, 5)
	retries += r2
	if err != nil {
		return retries, fmt.Errorf("REQUEST: %w", err)
	}
	if got := netip.AddrFrom4([4]byte(ack[16:20])); got != b.addr {
		return retries, fmt.Errorf("ACK gives %s, want %s", got, b.addr)
	}
	return retries, nil
}
