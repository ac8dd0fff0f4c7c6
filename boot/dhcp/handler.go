package dhcp

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/pifleet/pifleet/boot"
)

// clientKind is what kind of boot client sent a packet; it decides the boot options.
type clientKind int

const (
	kindPlain clientKind = iota // an ordinary DHCP client (e.g. the board's OS once booted)
	kindPi                      // Pi 4/5 EEPROM bootloader (option 97 with FourCC or serial)
	kindPiROM                   // Pi 3 boot ROM: padded option 43, never sends a REQUEST
	kindPXE                     // U-Boot or another PXE client: bootfile + next-server
)

func (k clientKind) String() string {
	switch k {
	case kindPi:
		return "pi"
	case kindPiROM:
		return "pi3-rom"
	case kindPXE:
		return "pxe"
	}
	return "plain"
}

// request is one packet with everything learned about its sender.
type request struct {
	msg        *dhcpv4.DHCPv4
	typ        dhcpv4.MessageType
	mac        net.HardwareAddr
	macStr     string
	kind       clientKind
	pxeVendor  bool   // option 60 starts with "PXEClient"
	serial     string // Pi serial, 8 lowercase hex digits, "" if unknown
	model      string
	board      *boot.Board // nil = not in the fleet
	at         time.Time   // when the packet arrived
	discoverAt time.Time   // when this MAC's last DISCOVER arrived (zero if unseen)
	client     netip.Addr  // the client's address once known (ciaddr, or what we gave it)
	log        reqLog
}

// reqLog logs with the request's board, mac, serial, xid and client kind. It adds them
// per line, only for lines the handler enables, instead of a Logger.With per packet:
// under load most packets log nothing (Debug is off). Lines are rate-limited per
// client MAC (key); lines about clients that are not boards listed by MAC (shared)
// are also bounded in total, since anyone can make up MACs (loglimit.go).
type reqLog struct {
	l      *slog.Logger
	lines  *lineLimits // nil = no limit
	key    string
	shared bool
	attrs  []any
}

func (r reqLog) log(level slog.Level, msg string, args []any) {
	ctx := context.Background()
	if !r.l.Enabled(ctx, level) {
		return
	}
	if r.lines != nil && !r.lines.allow(r.key, r.shared) {
		return
	}
	r.l.Log(ctx, level, msg, append(append(make([]any, 0, len(r.attrs)+len(args)), r.attrs...), args...)...)
}

func (r reqLog) Debug(msg string, args ...any) { r.log(slog.LevelDebug, msg, args) }
func (r reqLog) Info(msg string, args ...any)  { r.log(slog.LevelInfo, msg, args) }
func (r reqLog) Warn(msg string, args ...any)  { r.log(slog.LevelWarn, msg, args) }
func (r reqLog) Error(msg string, args ...any) { r.log(slog.LevelError, msg, args) }

// boardName is the board's name for logs, "-" for clients not in the fleet.
func (r *request) boardName() string {
	if r.board == nil {
		return "-"
	}
	return r.board.Name
}

// handle turns one received packet into a reply and where to send it, or nothing.
// It never panics on any input (FuzzHandle).
func (s *Server) handle(pkt []byte, at time.Time) ([]byte, netip.AddrPort) {
	msg, err := dhcpv4.FromBytes(pkt)
	if err != nil || msg.OpCode != dhcpv4.OpcodeBootRequest ||
		msg.HWType != iana.HWTypeEthernet || len(msg.ClientHWAddr) != 6 {
		// Not a DHCP request from an Ethernet client: our own broadcast replies
		// (BOOTREPLY) come back here too.
		s.malformed.Add(1)
		return nil, netip.AddrPort{}
	}
	typ := msg.MessageType()
	switch typ {
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeRelease,
		dhcpv4.MessageTypeDecline, dhcpv4.MessageTypeInform:
	default:
		s.ignored.Add(1)
		s.requests[reqOther][outNone].Add(1)
		return nil, netip.AddrPort{}
	}
	macStr := msg.ClientHWAddr.String()
	// The fleet first: a board's MAC is looked up before the table of unknown clients
	// is touched, so no flood of other MACs can crowd a board out.
	byMAC, isBoard := s.cfg.Fleet.BoardByMAC(msg.ClientHWAddr)
	if !s.clients.allow(macStr, isBoard, at) {
		s.limited.Add(1)
		s.requests[requestIndex(typ)][outRateLimited].Add(1)
		return nil, netip.AddrPort{}
	}
	r := s.identify(msg, typ, macStr, byMAC, at)

	var reply *dhcpv4.DHCPv4
	if s.cfg.Mode == ModeFull {
		reply = s.full(r)
	} else {
		reply = s.proxy(r)
	}
	if reply == nil {
		s.requests[requestIndex(typ)][outNone].Add(1)
		return nil, netip.AddrPort{}
	}
	s.requests[requestIndex(typ)][outcomeIndex(reply.MessageType())].Add(1)
	return encode(reply), s.destination(msg, reply)
}

// identify works out what kind of client sent msg and which board it is. byMAC is the
// board listed with msg's MAC, if any: a board listed with a MAC is that MAC and
// nothing else. A board listed without one (a Pi known by serial) is found by the
// serial in option 97, or by the one this MAC's DISCOVER carried (a REQUEST may lack
// option 97 and 60). The serial of a board listed with another MAC is never evidence
// (DESIGN.md, Boot): anyone can type it.
func (s *Server) identify(msg *dhcpv4.DHCPv4, typ dhcpv4.MessageType, macStr string, byMAC *boot.Board, at time.Time) *request {
	r := &request{msg: msg, typ: typ, mac: msg.ClientHWAddr, macStr: macStr, at: at,
		client: addrOf(msg.ClientIPAddr)}
	vc := string(msg.Options.Get(dhcpv4.OptionClassIdentifier))
	r.pxeVendor = strings.HasPrefix(vc, "PXEClient")
	id, isPi := parseOption97(msg.Options.Get(dhcpv4.OptionClientMachineIdentifier))
	switch {
	case isPi && id.rom, r.pxeVendor && binary.BigEndian.Uint32(msg.TransactionID[:]) == pi3ROMXID:
		r.kind, r.model = kindPiROM, "Raspberry Pi 3 (boot ROM)"
	case isPi:
		r.kind, r.model = kindPi, id.model
	case r.pxeVendor || strings.HasPrefix(vc, "U-Boot") || msg.Options.Has(dhcpv4.OptionClientSystemArchitectureType):
		r.kind = kindPXE
	}
	kind0, serial0, model0, discoverAt := s.clients.recall(macStr)
	if r.kind == kindPlain && typ != dhcpv4.MessageTypeDiscover {
		// A REQUEST following a boot client's DISCOVER is still that boot client.
		r.kind = kind0
		if r.model == "" {
			r.model = model0
		}
	}
	r.discoverAt = discoverAt

	board, ok := byMAC, byMAC != nil
	var claimed *boot.Board // a board listed with another MAC whose serial this client sent
	for _, serial := range []string{id.serial, id.altSerial, serial0} {
		if ok {
			break
		}
		if serial == "" {
			continue
		}
		b, found := s.cfg.Fleet.BoardBySerial(serial)
		switch {
		case !found:
		case len(b.MAC) == 0:
			board, ok = b, true
		default:
			claimed = b
		}
	}
	switch {
	case ok && board.Serial != "":
		r.serial = board.Serial
	case id.serial != "":
		r.serial = id.serial
	default:
		r.serial = serial0
	}
	if ok {
		r.board = board
	}
	if typ == dhcpv4.MessageTypeDiscover {
		r.discoverAt = at
	}
	s.clients.learn(macStr, r.kind, r.serial, r.model, typ == dhcpv4.MessageTypeDiscover, at)
	r.log = reqLog{l: s.log, lines: &s.lines, key: macStr, shared: byMAC == nil,
		attrs: []any{"board", r.boardName(), "mac", macStr, "serial", r.serial, "xid", msg.TransactionID.String(), "client", r.kind.String()}}
	if claimed != nil && !ok {
		r.log.Warn("option 97 carries the serial of a board listed with another MAC: not treated as that board",
			"claimed_board", claimed.Name, "board_mac", claimed.MAC.String())
	}
	return r
}

// record logs one DHCP step and, for boards of the fleet, keeps it in the timeline.
// The duration is the time since this client's DISCOVER: how long the exchange took.
func (s *Server) record(r *request, what string, attrs ...any) {
	var d time.Duration
	if !r.discoverAt.IsZero() && what != "discover" {
		d = time.Since(r.discoverAt)
	}
	if r.board == nil {
		r.log.Debug("dhcp "+what, append(attrs, "duration", d)...)
		return
	}
	r.log.Info("dhcp "+what, append(attrs, "duration", d)...)
	s.events.Record(boot.Event{
		Board: r.board.Name, MAC: r.macStr, Serial: r.serial,
		Client: r.client, Stage: boot.StageDHCP, What: what, Agent: r.kind.String(), Duration: d,
	})
}

// unknown remembers a client that is not in the fleet, logging it once per MAC.
func (s *Server) unknown(r *request, answered bool) {
	if s.events.Seen(boot.Sighting{Via: "dhcp", MAC: r.mac, IP: r.client, Serial: r.serial, Model: r.model}) {
		vc := string(r.msg.Options.Get(dhcpv4.OptionClassIdentifier))
		msg := "client not in fleet: ignored (add its mac or serial to fleet.yaml to boot it)"
		if answered {
			msg = "client not in fleet: served from the pool"
		}
		r.log.Info(msg, "model", r.model, "vendor_class", vc)
	}
}

// baseReply starts a reply to r: header fields RFC 2131 table 3 asks to copy, the
// message type and our server identifier, and the relay agent option echoed
// (RFC 3046 section 2.2).
func (s *Server) baseReply(r *request, typ dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	m := r.msg
	reply := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        m.HWType,
		TransactionID: m.TransactionID,
		Flags:         m.Flags,
		GatewayIPAddr: m.GatewayIPAddr,
		ClientHWAddr:  m.ClientHWAddr,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		Options:       dhcpv4.Options{},
	}
	if typ == dhcpv4.MessageTypeAck {
		reply.ClientIPAddr = m.ClientIPAddr
	}
	reply.UpdateOption(dhcpv4.OptMessageType(typ))
	reply.UpdateOption(dhcpv4.OptServerIdentifier(net.IP(s.cfg.ServerIP.AsSlice())))
	if v := m.Options.Get(dhcpv4.OptionRelayAgentInformation); v != nil && !isZero(m.GatewayIPAddr) {
		reply.Options[dhcpv4.OptionRelayAgentInformation.Code()] = v
	}
	return reply
}

// destination applies RFC 2131 section 4.1: through the relay if there is one; a NAK
// is broadcast; a client that has an address gets unicast; one without gets the
// limited broadcast (we do not inject ARP entries to unicast to a yiaddr).
func (s *Server) destination(req, reply *dhcpv4.DHCPv4) netip.AddrPort {
	if !isZero(req.GatewayIPAddr) {
		a, _ := netip.AddrFromSlice(req.GatewayIPAddr.To4())
		return netip.AddrPortFrom(a, uint16(s.cfg.Port))
	}
	if reply.MessageType() != dhcpv4.MessageTypeNak && !isZero(req.ClientIPAddr) {
		a, _ := netip.AddrFromSlice(req.ClientIPAddr.To4())
		return netip.AddrPortFrom(a, uint16(s.clientPort))
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), uint16(s.clientPort))
}

func isZero(ip net.IP) bool {
	ip4 := ip.To4()
	return ip4 == nil || ip4.Equal(net.IPv4zero)
}

// addrOf converts a packet's IP field; the zero Addr when unset.
func addrOf(ip net.IP) netip.Addr {
	if isZero(ip) {
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}
