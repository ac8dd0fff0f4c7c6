package dhcp

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func TestParseOption97(t *testing.T) {
	mac := mustMAC("dc:a6:32:01:36:c2")
	be := []byte{0, '4', 'i', 'P', 'R'}
	be = binary.BigEndian.AppendUint32(be, 0xc03141) // CM4 revision
	be = append(be, mac[2:6]...)
	be = binary.BigEndian.AppendUint32(be, 0x9ffefdef)

	rpi5 := []byte{0, 'R', 'P', 'i', '5'}
	rpi5 = binary.LittleEndian.AppendUint32(rpi5, 0xd04170)
	rpi5 = append(rpi5, mac[2:6]...)
	rpi5 = binary.LittleEndian.AppendUint32(rpi5, 0x0badcafe)

	repeated := []byte{0}
	for range 4 {
		repeated = binary.LittleEndian.AppendUint32(repeated, 0x12345678)
	}
	rom := append([]byte{0}, bytes.Repeat([]byte{0x44}, 16)...)
	pcUUID := []byte{0, 0x4c, 0x4c, 0x45, 0x44, 0, 0x10, 0x35, 0x80, 0x4e, 0xb1, 0xc0, 0x4f, 0x51, 0x4d, 0x32, 0x31}

	for _, tc := range []struct {
		name             string
		in               []byte
		ok, rom          bool
		serial, alt, mdl string
	}{
		{"pi4 little-endian", pi4Option97(0x9ffefdef, 0xc03111, mac), true, false, "9ffefdef", "", "Raspberry Pi 4 Model B"},
		{"pi4 2021 EEPROM big-endian FourCC", be, true, false, "9ffefdef", "effdfe9f", "Raspberry Pi Compute Module 4"},
		{"pi5", rpi5, true, false, "0badcafe", "", "Raspberry Pi 5"},
		{"DHCP_OPTION97=0 serial repeated", repeated, true, false, "12345678", "78563412", "Raspberry Pi 4"},
		{"pi3 ROM", rom, true, true, "", "", "Raspberry Pi 3 (boot ROM)"},
		{"PC UUID", pcUUID, false, false, "", "", ""},
		{"short", []byte{0, 'R', 'P', 'i', '4'}, false, false, "", "", ""},
		{"empty", nil, false, false, "", "", ""},
	} {
		id, ok := parseOption97(tc.in)
		if ok != tc.ok || id.rom != tc.rom || id.serial != tc.serial || id.altSerial != tc.alt || id.model != tc.mdl {
			t.Errorf("%s: got %+v ok=%v, want serial %q alt %q model %q rom %v ok %v",
				tc.name, id, ok, tc.serial, tc.alt, tc.mdl, tc.rom, tc.ok)
		}
	}
}

// TestOption43DnsmasqForm holds option 43 to the bytes dnsmasq sends for
// pxe-service=0,"Raspberry Pi Boot" (PI-BOOT.md), and the Pi 3B padded variant.
func TestOption43DnsmasqForm(t *testing.T) {
	want := []byte{6, 1, 3, 10, 4, 0, 'P', 'X', 'E', 9, 0x14, 0, 0, 0x11}
	want = append(append(want, "Raspberry Pi Boot"...), 0xff)
	if got := piOption43(piMenu); !bytes.Equal(got, want) {
		t.Errorf("option 43 = % x\nwant        % x", got, want)
	}
	got := piOption43(pi3Menu)
	if !bytes.Contains(got, []byte{9, 0x17, 0, 0, 0x14}) || !bytes.Contains(got, []byte("Raspberry Pi Boot   \xff")) {
		t.Errorf("Pi 3B option 43 = % x: want the menu padded with three spaces", got)
	}
}

// TestEncodeNoPadAndOrder checks the wire form: 53 then 54 first, no pad option,
// and that the library still parses it to the same message.
func TestEncodeNoPadAndOrder(t *testing.T) {
	d, err := dhcpv4.New(dhcpv4.WithHwAddr(mustMAC("dc:a6:32:01:36:c2")),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
		dhcpv4.WithServerIP(serverIP.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(serverIP.AsSlice())))
	if err != nil {
		t.Fatal(err)
	}
	d.OpCode = dhcpv4.OpcodeBootReply
	d.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
	// A long option must be split, not truncated (RFC 3396).
	long := bytes.Repeat([]byte{'x'}, 300)
	d.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionRootPath, long))
	pkt := encode(d)
	order, opts, end := wireOptions(t, pkt)
	if len(order) < 2 || order[0] != 53 || order[1] != 54 {
		t.Errorf("option order %v: want 53, 54 first", order)
	}
	if !bytes.Equal(opts[17], long) {
		t.Errorf("root path option: got %d bytes, want %d", len(opts[17]), len(long))
	}
	for i := end; i < len(pkt); i++ {
		if pkt[i] != 0 {
			t.Fatalf("byte %d after end option is %#x", i, pkt[i])
		}
	}
	back, err := dhcpv4.FromBytes(pkt)
	if err != nil {
		t.Fatal(err)
	}
	if back.MessageType() != dhcpv4.MessageTypeOffer || string(back.Options.Get(dhcpv4.OptionClassIdentifier)) != "PXEClient" {
		t.Errorf("round trip: %v", back.Summary())
	}

	// A short reply reaches the BOOTP minimum with zero bytes after End only.
	short := &dhcpv4.DHCPv4{OpCode: dhcpv4.OpcodeBootReply, HWType: 1, ClientHWAddr: mustMAC("02:00:00:00:00:01"),
		Options: dhcpv4.Options{53: {2}}}
	pkt = encode(short)
	_, _, end = wireOptions(t, pkt)
	if len(pkt) != bootpMinLen || end != 244 {
		t.Errorf("short reply: %d bytes, end at %d", len(pkt), end)
	}
}
