package dhcp

import (
	"net"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// proxyDHCP (PXE spec 2.1, section 2.2.3): the LAN's router gives the address, we give
// only boot options, on port 67. The client merges both OFFERs (Pi bootloaders do;
// U-Boot does not, so U-Boot boards need full mode or the router's next-server, and
// are not answered unless Config.ProxyPXE). A
// proxy reply therefore never carries yiaddr, lease time, mask or router: a client
// that took them from us would fight the router.

// proxy answers r in proxy mode, or returns nil.
func (s *Server) proxy(r *request) *dhcpv4.DHCPv4 {
	if r.board == nil {
		// Only boot clients are remembered: every phone on the LAN asks the router,
		// and the status page is about boards that wanted to boot.
		if r.kind != kindPlain {
			s.unknown(r, false)
		}
		s.ignored.Add(1)
		return nil
	}
	if r.kind == kindPlain {
		// The board's own OS renewing its address: the router's business.
		r.log.Debug("not a boot client: left to the router", "type", r.typ.String())
		s.ignored.Add(1)
		return nil
	}
	if r.kind == kindPXE && !s.cfg.ProxyPXE {
		// U-Boot takes the first OFFER and does not merge: our address-less one,
		// arriving before the router's, would make it fail even when the router's
		// next-server points here. Silent unless server.dhcp.proxy_pxe says otherwise.
		if r.typ == dhcpv4.MessageTypeDiscover && s.clients.warnOnce(r.macStr) {
			r.log.Warn("U-Boot/PXE board in proxy mode: not answered (U-Boot takes the first offer and " +
				"does not merge proxy offers); set the router's next-server to this host, use dhcp mode " +
				"full, or server.dhcp.proxy_pxe: true for a U-Boot built with CONFIG_SERVERIP_FROM_PROXYDHCP")
		}
		s.record(r, strings.ToLower(r.typ.String()), "note", "U-Boot/PXE in proxy mode: left to the router")
		s.ignored.Add(1)
		return nil
	}
	switch r.typ {
	case dhcpv4.MessageTypeDiscover:
		s.record(r, "discover")
		reply := s.proxyReply(r, dhcpv4.MessageTypeOffer)
		s.record(r, "offer", "tftp", s.cfg.ServerIP)
		return reply
	case dhcpv4.MessageTypeRequest:
		// A boot client REQUESTs the router's address (option 54 = router); that is
		// the router's to ACK. A PXE client that REQUESTs from us gets the boot
		// options again. Not filtered on option 60: early Pi 4 EEPROMs omit it.
		sid := r.msg.ServerIdentifier()
		if sid == nil || !sid.Equal(net.IP(s.cfg.ServerIP.AsSlice())) {
			s.record(r, "request", "server", sid.String(), "note", "addressed to the router")
			s.ignored.Add(1)
			return nil
		}
		s.record(r, "request")
		reply := s.proxyReply(r, dhcpv4.MessageTypeAck)
		s.record(r, "ack")
		return reply
	}
	s.ignored.Add(1)
	return nil
}

func (s *Server) proxyReply(r *request, typ dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	reply := s.baseReply(r, typ)
	s.addBootOptions(r, reply)
	return reply
}
