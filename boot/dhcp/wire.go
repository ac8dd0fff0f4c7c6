package dhcp

import (
	"encoding/binary"
	"net"
	"slices"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Replies are encoded here rather than with dhcpv4's ToBytes for two reasons:
//   - ToBytes fills a short packet up to 300 bytes with option 0 (pad) before the
//     options end, and early Pi 4 EEPROMs drop replies containing a pad option;
//   - ToBytes sorts options by code, while dnsmasq (whose replies every Pi model is
//     known to accept) sends 53 and 54 first; PXE ROMs have been seen to care.
//
// The layout is RFC 2131 section 2: fixed header, magic cookie, options, end.

// bootpMinLen is the minimum BOOTP message size (RFC 951, RFC 1542 section 2.1): some
// relays drop shorter ones. Shorter replies get zero bytes AFTER the end option, as
// dnsmasq does; these are not options and no pad is ever placed among the options.
const bootpMinLen = 300

// encode writes d to its wire form.
func encode(d *dhcpv4.DHCPv4) []byte {
	b := make([]byte, 240, 576)
	b[0] = byte(d.OpCode)
	b[1] = byte(d.HWType)
	b[2] = byte(len(d.ClientHWAddr))
	b[3] = d.HopCount
	copy(b[4:8], d.TransactionID[:])
	binary.BigEndian.PutUint16(b[8:10], d.NumSeconds)
	binary.BigEndian.PutUint16(b[10:12], d.Flags)
	putIP(b[12:16], d.ClientIPAddr)
	putIP(b[16:20], d.YourIPAddr)
	putIP(b[20:24], d.ServerIPAddr)
	putIP(b[24:28], d.GatewayIPAddr)
	copy(b[28:44], d.ClientHWAddr)
	copy(b[44:44+63], d.ServerHostName)
	copy(b[108:108+127], d.BootFileName)
	copy(b[236:240], []byte{99, 130, 83, 99})

	put := func(code uint8) {
		v, ok := d.Options[code]
		if !ok {
			return
		}
		if len(v) == 0 {
			b = append(b, code, 0)
			return
		}
		// RFC 3396: longer values are split into consecutive instances.
		for len(v) > 0 {
			n := min(len(v), 255)
			b = append(b, code, byte(n))
			b = append(b, v[:n]...)
			v = v[n:]
		}
	}
	put(dhcpv4.OptionDHCPMessageType.Code())
	put(dhcpv4.OptionServerIdentifier.Code())
	codes := make([]uint8, 0, len(d.Options))
	for code := range d.Options {
		switch code {
		case 0, 255, dhcpv4.OptionDHCPMessageType.Code(), dhcpv4.OptionServerIdentifier.Code(),
			dhcpv4.OptionRelayAgentInformation.Code():
			continue
		}
		codes = append(codes, code)
	}
	slices.Sort(codes)
	for _, code := range codes {
		put(code)
	}
	// RFC 3046 section 2.1: the relay agent option comes last.
	put(dhcpv4.OptionRelayAgentInformation.Code())
	b = append(b, 255)
	if len(b) < bootpMinLen {
		b = append(b, make([]byte, bootpMinLen-len(b))...)
	}
	return b
}

func putIP(dst []byte, ip net.IP) {
	if ip4 := ip.To4(); ip4 != nil {
		copy(dst, ip4)
	}
}
