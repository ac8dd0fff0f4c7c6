package boot_test

// The test network for scripted boards: two network namespaces joined by a veth pair.
// The server side (198.18.0.1/15, the benchmarking range of RFC 2544) runs pifleet's
// DHCP and TFTP servers; the client side starts without an address, like a board at
// power-on, and is where the scripted boards and the real clients (curl, tftp-hpa) run.
// Nothing leaves the two namespaces; t.Cleanup deletes them.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/dhcp"
	"github.com/pifleet/pifleet/boot/tftp"
	"github.com/pifleet/pifleet/test/netns"
)

var (
	serverIP = netip.MustParseAddr("198.18.0.1")
	testNet  = netip.MustParsePrefix("198.18.0.0/15")
)

func newNetns(t testing.TB) *netns.Pair {
	t.Helper()
	netns.RequireRoot(t, "creates network namespaces and binds ports 67/69 inside them")
	return netns.NewPair(t, "pfboot", netip.PrefixFrom(serverIP, testNet.Bits()))
}

// bootServers is pifleet's boot half (DHCP + TFTP) running in the server namespace.
type bootServers struct {
	dhcp   *dhcp.Server
	tftp   *tftp.Server
	events *boot.Timeline
	logs   *netns.LogBuffer
}

// startBootServers runs DHCP (in mode) and TFTP on serverIP until the test ends.
func startBootServers(t *testing.T, n *netns.Pair, fleet boot.Fleet, mode dhcp.Mode) *bootServers {
	t.Helper()
	bs := &bootServers{events: boot.NewTimeline(), logs: &netns.LogBuffer{}}
	logger := slog.New(slog.NewTextHandler(bs.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := dhcp.New(dhcp.Config{
		Mode: mode, Interface: n.ServerIf, ServerIP: serverIP, Subnet: testNet,
		LeaseFile: filepath.Join(t.TempDir(), "leases.jsonl"), LeaseTime: 10 * time.Minute,
		Port: 67, Fleet: fleet, Events: bs.events, Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	bs.dhcp = d
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("boot servers did not stop 10 s after cancel")
		}
	})
	wg.Go(func() {
		if err := netns.Do(n.Server, func() error { return d.Serve(ctx) }); err != nil {
			t.Errorf("dhcp: %v", err)
		}
	})
	ready := make(chan error, 1)
	wg.Go(func() {
		err := netns.Do(n.Server, func() error {
			s, err := tftp.New(tftp.Config{Addr: serverIP.String() + ":69", Fleet: fleet, Events: bs.events, Logger: logger})
			if err != nil {
				return err
			}
			bs.tftp = s
			ready <- nil
			return s.Serve(ctx)
		})
		if err != nil {
			select {
			case ready <- err:
			default:
				t.Errorf("tftp: %v", err)
			}
		}
	})
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	return bs
}

// setClientAddr gives the client side its address (from our ACK, or as the LAN's router
// would in proxy mode).
func setClientAddr(t *testing.T, n *netns.Pair, ip netip.Addr) {
	netns.Run(t, "ip", "-n", n.Client, "addr", "add", ip.String()+"/15", "dev", n.ClientIf)
}

// --- DHCP, crafted byte by byte as the captures in PI-BOOT.md describe it ---

const piVendorClass = "PXEClient:Arch:00000:UNDI:002001"

var piParamList = []byte{1, 3, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135}

func opt(code byte, data ...byte) []byte { return append([]byte{code, byte(len(data))}, data...) }

func dhcpPacket(xid uint32, mac net.HardwareAddr, opts ...[]byte) []byte {
	b := make([]byte, 240)
	b[0], b[1], b[2] = 1, 1, 6
	binary.BigEndian.PutUint32(b[4:8], xid)
	copy(b[28:34], mac)
	copy(b[236:240], []byte{99, 130, 83, 99})
	for _, o := range opts {
		b = append(b, o...)
	}
	return append(b, 255)
}

// piOption97 is a Pi 4/5 EEPROM's client identifier: type 0, FourCC, board revision,
// low 4 bytes of the MAC, serial (little-endian words).
func piOption97(fourCC string, serial, rev uint32, mac net.HardwareAddr) []byte {
	v := append([]byte{0}, fourCC...)
	v = binary.LittleEndian.AppendUint32(v, rev)
	v = append(v, mac[2:6]...)
	return binary.LittleEndian.AppendUint32(v, serial)
}

func piDiscover(xid uint32, mac net.HardwareAddr, opt97 []byte) []byte {
	return dhcpPacket(xid, mac, opt(53, 1), opt(55, piParamList...), opt(60, []byte(piVendorClass)...),
		opt(93, 0, 0), opt(94, 1, 2, 1), opt(97, opt97...))
}

func piRequest(xid uint32, mac net.HardwareAddr, server, requested netip.Addr, opt97 []byte) []byte {
	s, r := server.As4(), requested.As4()
	return dhcpPacket(xid, mac, opt(53, 3), opt(50, r[:]...), opt(54, s[:]...), opt(55, piParamList...),
		opt(60, []byte(piVendorClass)...), opt(97, opt97...))
}

// dhcpReply is a parsed server reply.
type dhcpReply struct {
	xid    uint32
	yiaddr netip.Addr
	siaddr netip.Addr
	opts   map[byte][]byte
}

func parseReply(p []byte) (dhcpReply, error) {
	if len(p) < 240 || p[0] != 2 || !bytes.Equal(p[236:240], []byte{99, 130, 83, 99}) {
		return dhcpReply{}, errors.New("not a BOOTREPLY")
	}
	r := dhcpReply{xid: binary.BigEndian.Uint32(p[4:8]), yiaddr: netip.AddrFrom4([4]byte(p[16:20])),
		siaddr: netip.AddrFrom4([4]byte(p[20:24])), opts: map[byte][]byte{}}
	for i := 240; i < len(p) && p[i] != 255; {
		if p[i] == 0 {
			return r, errors.New("pad option in reply (early Pi 4 EEPROMs drop such replies)")
		}
		if i+2 > len(p) || i+2+int(p[i+1]) > len(p) {
			return r, errors.New("truncated option")
		}
		r.opts[p[i]] = append(r.opts[p[i]], p[i+2:i+2+int(p[i+1])]...)
		i += 2 + int(p[i+1])
	}
	return r, nil
}

// dhcpClient is the board's port 68 socket on the client veth (no address yet).
type dhcpClient struct{ conn *net.UDPConn }

// newDHCPClient opens the socket; call it inside the client namespace.
func newDHCPClient(iface string) (*dhcpClient, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr == nil {
				serr = unix.BindToDevice(int(fd), iface)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:68")
	if err != nil {
		return nil, err
	}
	return &dhcpClient{conn: pc.(*net.UDPConn)}, nil
}

// exchange broadcasts pkt and returns the first reply with the same xid and the wanted
// message type, resending like a Pi does (bounded: 5 tries).
func (c *dhcpClient) exchange(pkt []byte, wantType byte) (dhcpReply, error) {
	xid := binary.BigEndian.Uint32(pkt[4:8])
	buf := make([]byte, 1500)
	for try := 0; try < 5; try++ {
		if _, err := c.conn.WriteToUDP(pkt, &net.UDPAddr{IP: net.IPv4bcast, Port: 67}); err != nil {
			return dhcpReply{}, err
		}
		c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			n, _, err := c.conn.ReadFromUDP(buf)
			if err != nil {
				break
			}
			r, err := parseReply(buf[:n])
			if err != nil {
				return r, err
			}
			if r.xid == xid && len(r.opts[53]) == 1 && r.opts[53][0] == wantType {
				return r, nil
			}
		}
	}
	return dhcpReply{}, fmt.Errorf("no DHCP reply of type %d", wantType)
}
