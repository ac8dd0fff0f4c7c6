package dhcp

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Pi-specific DHCP data: what option 97 tells about a Raspberry Pi, and the option 43
// a Pi needs to see before it trusts a reply (PI-BOOT.md, "DHCP: what a Pi sends").

// pi3ROMXID is the transaction id the Pi 3B boot ROM uses in every DISCOVER. Captures
// show it fixed, so it is a strong hint that the sender is the ROM that never REQUESTs.
const pi3ROMXID = 0x26f30339

// piMenu is the PXE boot menu text every Pi bootloader looks for in option 43.
const piMenu = "Raspberry Pi Boot"

// pi3Menu is piMenu padded with three spaces: the Pi 3B ROM compares a fixed-length
// field and ignores the reply without the padding (3B+ and later accept both).
const pi3Menu = piMenu + "   "

// piIdentity is what option 97 says about a Pi.
type piIdentity struct {
	// serial is the board serial as 8 lowercase hex digits ("" when unknown).
	serial string
	// altSerial is the same serial read in the other byte order, for option 97 forms
	// whose byte order is not self-describing (the serial-repeated form); "" otherwise.
	altSerial string
	// model is a human name, e.g. "Raspberry Pi 4", "" when unknown.
	model string
	// rom is true for the Pi 3 boot ROM (option 97 full of 0x44, no serial, no REQUEST).
	rom bool
}

// parseOption97 decodes the client machine identifier (RFC 4578 section 2.3) a Pi
// sends. Pi 4/5 EEPROMs send type 0, then the FourCC "RPi4"/"RPi5" (or "4iPR"/"5iPR"
// from a 2021 EEPROM that wrote the word big-endian), the board revision, the low 4
// bytes of the MAC and the serial. DHCP_OPTION97=0 gives the serial repeated four
// times. The Pi 3 ROM fills it with 0x44. ok is false for anything else (a PC's UUID).
func parseOption97(v []byte) (id piIdentity, ok bool) {
	if len(v) != 17 || v[0] != 0 {
		return piIdentity{}, false
	}
	g := v[1:]
	if bytes.Count(g, []byte{0x44}) == len(g) {
		return piIdentity{model: "Raspberry Pi 3 (boot ROM)", rom: true}, true
	}
	var order binary.ByteOrder
	switch string(g[:4]) {
	case "RPi4", "RPi5":
		order = binary.LittleEndian
	case "4iPR", "5iPR":
		order = binary.BigEndian
	}
	if order != nil {
		var gen byte
		if order == binary.LittleEndian {
			gen = g[3]
		} else {
			gen = g[0]
		}
		rev := order.Uint32(g[4:8])
		id := piIdentity{serial: fmt.Sprintf("%08x", order.Uint32(g[12:16])), model: piModel(gen, rev)}
		if order == binary.BigEndian {
			// Only one capture of this form exists; should its serial be little-endian
			// after all, the fleet lookup finds the board by the other reading.
			id.altSerial = fmt.Sprintf("%08x", binary.LittleEndian.Uint32(g[12:16]))
		}
		return id, true
	}
	// The serial-repeated form: four equal words. Its byte order is not documented,
	// so both readings are kept and the fleet decides which one it knows.
	w := g[:4]
	if bytes.Equal(w, g[4:8]) && bytes.Equal(w, g[8:12]) && bytes.Equal(w, g[12:16]) &&
		!bytes.Equal(w, []byte{0, 0, 0, 0}) {
		le := binary.LittleEndian.Uint32(w)
		be := binary.BigEndian.Uint32(w)
		return piIdentity{
			serial:    fmt.Sprintf("%08x", le),
			altSerial: fmt.Sprintf("%08x", be),
			model:     "Raspberry Pi 4",
		}, true
	}
	return piIdentity{}, false
}

// piModel names a board from the FourCC generation digit and, when it is a new-style
// revision code (bit 23), its type field, so a CM4 is not shown as a "Pi 4".
func piModel(gen byte, rev uint32) string {
	if rev&(1<<23) != 0 {
		switch (rev >> 4) & 0xff {
		case 0x11:
			return "Raspberry Pi 4 Model B"
		case 0x13:
			return "Raspberry Pi 400"
		case 0x14:
			return "Raspberry Pi Compute Module 4"
		case 0x15:
			return "Raspberry Pi Compute Module 4S"
		case 0x17:
			return "Raspberry Pi 5"
		case 0x18:
			return "Raspberry Pi Compute Module 5"
		case 0x19:
			return "Raspberry Pi 500"
		case 0x1a:
			return "Raspberry Pi Compute Module 5 Lite"
		}
	}
	return "Raspberry Pi " + string(gen)
}

// piOption43 builds the vendor options dnsmasq sends for pxe-service=0,"<menu>": PXE
// discovery control 3 (skip broadcast/multicast discovery, boot from this reply), a
// menu prompt with timeout 0, and one boot menu item of type 0. The Pi bootloader
// looks for the menu text; the rest keeps PXE-spec parsers happy (PXE spec 2.1,
// table 2-1; RFC 2132 section 8.4).
func piOption43(menu string) []byte {
	b := make([]byte, 0, 40)
	b = append(b, 6, 1, 3)                 // PXE_DISCOVERY_CONTROL
	b = append(b, 10, 4, 0, 'P', 'X', 'E') // PXE_MENU_PROMPT: timeout 0, "PXE"
	b = append(b, 9, byte(3+len(menu)), 0, 0, byte(len(menu)))
	b = append(b, menu...) // PXE_BOOT_MENU: type 0, description
	return append(b, 255)
}
