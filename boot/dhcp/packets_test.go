package dhcp

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

// Crafted client packets, byte by byte as the captures in PI-BOOT.md describe them
// (not built with the library under test, so its quirks cannot hide ours).

const piVendorClass = "PXEClient:Arch:00000:UNDI:002001"

func opt(code byte, data ...byte) []byte { return append([]byte{code, byte(len(data))}, data...) }

// rawPacket builds a BOOTREQUEST with the given options (already encoded), then End.
func rawPacket(xid uint32, mac net.HardwareAddr, ciaddr netip.Addr, opts ...[]byte) []byte {
	b := make([]byte, 240)
	b[0], b[1], b[2] = 1, 1, 6
	binary.BigEndian.PutUint32(b[4:8], xid)
	if ciaddr.IsValid() {
		a := ciaddr.As4()
		copy(b[12:16], a[:])
	}
	copy(b[28:34], mac)
	copy(b[236:240], []byte{99, 130, 83, 99})
	for _, o := range opts {
		b = append(b, o...)
	}
	return append(b, 255)
}

// pi4Option97 is the Pi 4 EEPROM's client identifier: type 0, FourCC "RPi4", board
// revision, the low 4 bytes of the MAC, the serial (little-endian words).
func pi4Option97(serial, rev uint32, mac net.HardwareAddr) []byte {
	v := []byte{0, 'R', 'P', 'i', '4'}
	v = binary.LittleEndian.AppendUint32(v, rev)
	v = append(v, mac[2:6]...)
	return binary.LittleEndian.AppendUint32(v, serial)
}

var piParamList = []byte{1, 3, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135}

// pi4Discover is a Pi 4 EEPROM DISCOVER: options 53, 55, 60, 93, 94, 97; 322 bytes.
func pi4Discover(t testing.TB, xid uint32, mac net.HardwareAddr, serial uint32) []byte {
	p := rawPacket(xid, mac, netip.Addr{},
		opt(53, 1),
		opt(55, piParamList...),
		opt(60, []byte(piVendorClass)...),
		opt(93, 0, 0),
		opt(94, 1, 2, 1),
		opt(97, pi4Option97(serial, 0xc03111, mac)...),
	)
	if t != nil && len(p) != 322 {
		t.Fatalf("crafted Pi 4 DISCOVER is %d bytes, captures show 322", len(p))
	}
	return p
}

// pi4Request is a Pi 4 REQUEST as early EEPROMs send it: no option 60.
func pi4Request(xid uint32, mac net.HardwareAddr, serial uint32, server, requested netip.Addr) []byte {
	opts := [][]byte{opt(53, 3)}
	if requested.IsValid() {
		a := requested.As4()
		opts = append(opts, opt(50, a[:]...))
	}
	if server.IsValid() {
		a := server.As4()
		opts = append(opts, opt(54, a[:]...))
	}
	opts = append(opts, opt(55, piParamList...), opt(97, pi4Option97(serial, 0xc03111, mac)...))
	return rawPacket(xid, mac, netip.Addr{}, opts...)
}

// pi3ROMDiscover is the Pi 3B boot ROM's DISCOVER: fixed xid, option 97 full of 0x44.
func pi3ROMDiscover(mac net.HardwareAddr) []byte {
	guid := make([]byte, 17)
	for i := 1; i < 17; i++ {
		guid[i] = 0x44
	}
	return rawPacket(pi3ROMXID, mac, netip.Addr{},
		opt(53, 1),
		opt(55, piParamList...),
		opt(60, []byte(piVendorClass)...),
		opt(93, 0, 0),
		opt(94, 1, 2, 1),
		opt(97, guid...),
	)
}

// ubootDiscover is a U-Boot (CONFIG_BOOTP_PXE) arm64 DISCOVER: arch 11 in 60 and 93.
func ubootDiscover(xid uint32, mac net.HardwareAddr) []byte {
	return rawPacket(xid, mac, netip.Addr{},
		opt(53, 1),
		opt(55, 1, 3, 6, 12, 15, 17, 43, 66, 67),
		opt(60, []byte("PXEClient:Arch:00011:UNDI:003000")...),
		opt(93, 0, 11),
		opt(94, 1, 3, 0),
	)
}

// plainDiscover is an ordinary client's DISCOVER, optionally asking for an address.
func plainDiscover(xid uint32, mac net.HardwareAddr, requested netip.Addr) []byte {
	opts := [][]byte{opt(53, 1), opt(55, 1, 3, 6, 51)}
	if requested.IsValid() {
		a := requested.As4()
		opts = append(opts, opt(50, a[:]...))
	}
	return rawPacket(xid, mac, netip.Addr{}, opts...)
}

// plainRequest is a SELECTING-state REQUEST.
func plainRequest(xid uint32, mac net.HardwareAddr, server, requested netip.Addr) []byte {
	s, r := server.As4(), requested.As4()
	return rawPacket(xid, mac, netip.Addr{}, opt(53, 3), opt(50, r[:]...), opt(54, s[:]...))
}

// release is a DHCPRELEASE of ciaddr.
func release(xid uint32, mac net.HardwareAddr, server, ciaddr netip.Addr) []byte {
	s := server.As4()
	return rawPacket(xid, mac, ciaddr, opt(53, 7), opt(54, s[:]...))
}

// wireOptions walks a reply's options as a strict client does, failing on any pad
// option (early Pi 4 EEPROMs drop such replies), and returns them in wire order and
// the offset just past the end option.
func wireOptions(t testing.TB, pkt []byte) (order []byte, opts map[byte][]byte, end int) {
	t.Helper()
	if len(pkt) < 241 || string(pkt[236:240]) != string([]byte{99, 130, 83, 99}) {
		t.Fatalf("reply of %d bytes has no magic cookie", len(pkt))
	}
	opts = map[byte][]byte{}
	i := 240
	for i < len(pkt) {
		code := pkt[i]
		switch code {
		case 0:
			t.Fatalf("reply has a pad option at offset %d", i)
		case 255:
			return order, opts, i + 1
		}
		if i+1 >= len(pkt) || i+2+int(pkt[i+1]) > len(pkt) {
			t.Fatalf("option %d at %d overruns the packet", code, i)
		}
		n := int(pkt[i+1])
		order = append(order, code)
		opts[code] = append(opts[code], pkt[i+2:i+2+n]...)
		i += 2 + n
	}
	t.Fatalf("reply has no end option")
	return nil, nil, 0
}

func ipField(pkt []byte, off int) netip.Addr {
	return netip.AddrFrom4([4]byte(pkt[off : off+4]))
}

func yiaddr(pkt []byte) netip.Addr { return ipField(pkt, 16) }
func siaddr(pkt []byte) netip.Addr { return ipField(pkt, 20) }
