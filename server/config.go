package server

import (
	"net"
	"net/netip"
	"time"
)

// Config is a loaded, validated fleet.yaml: the single source of truth an admin edits.
// Every field is already parsed (addresses, durations, MACs); Load fills defaults.
type Config struct {
	// Path is the file the config was read from, for messages.
	Path string
	// Server holds the server-wide settings.
	Server ServerConfig
	// Images maps an image name to where its layers live.
	Images map[string]Image
	// Boards lists the fleet in file order.
	Boards []Board
}

// ServerConfig is fleet.yaml's `server` section.
type ServerConfig struct {
	// Interface is the network interface that faces the boards; "" means the one that
	// carries Address, or the default route's.
	Interface string
	// Address is the server's own address and the boards' subnet (CIDR). The zero
	// Prefix means "detect from Interface at start-up".
	Address netip.Prefix
	// State is the state directory: images, board uppers, leases.
	State string
	// DHCP holds the DHCP mode and, for full mode, the address plan.
	DHCP DHCPConfig
	// Ports are the service ports.
	Ports Ports
	// HTTP lists the addresses the HTTP API listens on (fleet.yaml server.http); nil
	// means the default: loopback and Address, on Ports.HTTP.
	HTTP []netip.AddrPort
	// CommitExclude are fleet.yaml's server.commit.exclude patterns: paths a new layer
	// (`pifleet board commit`, `pifleet image shell`) leaves out besides
	// images.LayerExcludes (see LayerExcludes).
	CommitExclude []string
}

// DHCP modes.
const (
	DHCPProxy = "proxy" // answer only fleet boot clients, with boot options, never an address
	DHCPFull  = "full"  // a closed lab network: hand out addresses too
	DHCPOff   = "off"   // someone else points boards at pifleet
)

// DHCPConfig is fleet.yaml's `server.dhcp` section.
type DHCPConfig struct {
	// Mode is DHCPProxy, DHCPFull or DHCPOff.
	Mode string
	// PoolStart and PoolEnd bound the dynamic pool in full mode (both zero: no pool,
	// so only boards listed in the fleet get an address).
	PoolStart, PoolEnd netip.Addr
	// Router and DNS are handed out in full mode (optional).
	Router netip.Addr
	DNS    []netip.Addr
	// Lease is the lease time in full mode.
	Lease time.Duration
	// ProxyPXE makes proxy mode answer U-Boot/PXE clients too (off: U-Boot takes the
	// first OFFER and fails on an address-less one; on for U-Boot builds that merge
	// proxy offers).
	ProxyPXE bool
}

// InPool reports whether ip lies in the dynamic pool.
func (d DHCPConfig) InPool(ip netip.Addr) bool {
	return d.PoolStart.IsValid() && ip.Compare(d.PoolStart) >= 0 && ip.Compare(d.PoolEnd) <= 0
}

// Ports are the UDP/TCP ports of the services. DHCP is always 67 on the wire for real
// boards; tests move it.
type Ports struct {
	DHCP  int
	TFTP  int
	NFS   int
	Mount int
	HTTP  int
	// Portmap is the portmapper (rpcbind) port, TCP and UDP; 0 means not served. Clients
	// look for it on 111 only: otherwise cmdline.txt must carry NFS's and MOUNT's ports
	// (see NFSRoot).
	Portmap int
}

// Image is one entry of fleet.yaml's `images` section.
type Image struct {
	// Name is the key in fleet.yaml.
	Name string
	// Path is an existing root tree to use as the image's only layer; "" means the
	// image lives in the state dir (imported with `pifleet image import`).
	Path string
	// Base, when set, is the store image this one must be stacked on (at any depth, with
	// the base's current layers): `pifleet check` and serve refuse the image otherwise.
	Base string
	// Line and Col locate the image's key in fleet.yaml, for messages.
	Line, Col int
	// BaseLine and BaseCol locate its base: value.
	BaseLine, BaseCol int
}

// User is an optional first user created on a board (its identity layer).
type User struct {
	Name           string
	PasswordHash   string
	AuthorizedKeys []string
}

// Board is one entry of fleet.yaml's `boards` list, with defaults applied.
type Board struct {
	// Name is unique and a valid hostname label.
	Name string
	// MAC is the board's Ethernet address (nil if only the serial is known).
	MAC net.HardwareAddr
	// Serial is the Pi serial, 8 lowercase hex digits ("" for non-Pi boards).
	Serial string
	// IP is the board's fixed address (zero: none; proxy mode).
	IP netip.Addr
	// Image names the base image (an Images key).
	Image string
	// Hostname defaults to Name.
	Hostname string
	// Cmdline is extra kernel arguments: defaults' then the board's.
	Cmdline string
	// Config is extra config.txt lines: defaults' then the board's.
	Config []string
	// RootSquash maps uid 0 to nobody over NFS.
	RootSquash bool
	// User is the optional first user (board's, else defaults').
	User *User
	// Group names the board's group: `board reset --group`, and the group's settings
	// from fleet.yaml's groups: (board > group > defaults). With a groups: section it is
	// one of its groups; without one, a free label.
	Group string
}

// Default ports and settings, used when fleet.yaml leaves them out.
const (
	DefaultState = "/var/lib/pifleet"
	DefaultLease = 12 * time.Hour
)

// DefaultPorts returns the well-known ports Pis and Linux NFS clients expect.
func DefaultPorts() Ports {
	return Ports{DHCP: 67, TFTP: 69, NFS: 2049, Mount: 20048, HTTP: 8080, Portmap: 111}
}
