// Package boot gets every board from power-on to its kernel. Its subpackages speak the
// protocols (boot/dhcp, boot/tftp); this package holds what they share: how a board looks
// to them, how they ask the fleet which board a packet came from, and the per-board boot
// timeline they record.
//
// boot never reads fleet.yaml: the server package implements Fleet from its fleet model and
// swaps it atomically on reload.
package boot

import (
	"io/fs"
	"net"
	"net/netip"
)

// Board is what the boot protocols need to know about one board of the fleet.
// The server builds it from fleet.yaml; boot treats it as read-only.
type Board struct {
	// Name is the board's name in fleet.yaml (a valid hostname); used in every log line.
	Name string
	// MAC is the board's Ethernet address.
	MAC net.HardwareAddr
	// Serial is the Pi's serial number as 8 lowercase hex digits, the TFTP prefix the
	// Pi firmware uses; empty for boards that are not Pis (U-Boot/PXE boards).
	Serial string
	// IP is the board's fixed address from fleet.yaml; the zero Addr when it has none
	// (proxy mode, where the LAN's router assigns addresses).
	IP netip.Addr
	// Hostname is the board's host name (defaults to Name).
	Hostname string
	// Firmware is the board's /boot/firmware directory, read through the board's own
	// overlay, so a kernel the board upgraded itself is what it gets next boot.
	// Implementations resolve every path inside that directory only.
	Firmware fs.FS
	// NFSRoot is the value of the nfsroot= kernel argument for this board, e.g.
	// "10.0.0.1:/boards/pi-01,vers=3,tcp,nolock" (see server.NFSRoot). The server
	// computes it once; TFTP puts it into the generated cmdline.txt and pxelinux.cfg,
	// and nfsroot serves the export it names.
	NFSRoot string
	// Cmdline holds extra kernel arguments for this board (fleet defaults, then the
	// board's own), appended after the generated ones.
	Cmdline string
	// Config holds extra config.txt lines for this board (fleet defaults, then the
	// board's own), appended to the image's config.txt.
	Config []string
}

// Fleet answers which board of the fleet a request came from. Each lookup returns
// (nil, false) for a client that is not in the fleet. Implementations must be safe for
// concurrent use; the server swaps in a new Fleet on reload.
//
// An address belongs to a board only on evidence tied to the board's MAC: its fixed IP,
// the lease pifleet's own DHCP server gave that MAC (full mode), or the kernel's
// neighbour (ARP) entry for the address showing that MAC when a request arrives (Bind).
// A serial or MAC typed into a request (a TFTP path prefix, DHCP option 97) is never
// evidence: anyone can type them.
type Fleet interface {
	// BoardByMAC finds a board by its Ethernet address.
	BoardByMAC(mac net.HardwareAddr) (*Board, bool)
	// BoardBySerial finds a board by its Pi serial (8 lowercase hex digits).
	BoardBySerial(serial string) (*Board, bool)
	// BoardByIP finds the board an address is bound to: its fixed IP from fleet.yaml,
	// pifleet's own lease to its MAC, or an address bound earlier by Bind.
	BoardByIP(ip netip.Addr) (*Board, bool)
	// Bind is told that the kernel's neighbour table shows mac at ip, as a request
	// from ip arrives, and returns the board ip belongs to now. A fixed IP or a lease
	// decides before the neighbour entry does. Otherwise the board with that MAC is
	// bound to ip (unless it has a fixed IP elsewhere), and a MAC that is no board's
	// unbinds ip: the address is someone else's now.
	Bind(ip netip.Addr, mac net.HardwareAddr) (*Board, bool)
}

// Leases tells which MAC pifleet's own DHCP server (full mode) gave an address: evidence
// that ties the address to a board. boot/dhcp implements it.
type Leases interface {
	// LeaseHolder returns the MAC holding a live lease on ip.
	LeaseHolder(ip netip.Addr) (net.HardwareAddr, bool)
}
