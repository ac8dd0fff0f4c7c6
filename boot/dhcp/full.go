package dhcp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Full mode: we are the LAN's DHCP server (RFC 2131 section 4.3). A board of the fleet
// gets its fixed address from fleet.yaml; a board without one, and any other client,
// gets one from the pool if there is a pool, and nothing otherwise. Boot clients also
// get the boot options (bootopts.go), so U-Boot boards, which do not merge proxy
// offers, boot too.

// declineHold keeps an address a client DECLINEd (someone else uses it) out of the pool.
const declineHold = 10 * time.Minute

// full answers r in full mode, or returns nil.
func (s *Server) full(r *request) *dhcpv4.DHCPv4 {
	if gi := addrOf(r.msg.GatewayIPAddr); gi.IsValid() && !s.cfg.Subnet.Contains(gi) {
		// Relayed from another subnet: our addresses would be wrong there. One pifleet
		// per segment (DESIGN.md, Scale).
		r.log.Debug("relayed from another subnet: ignored", "giaddr", gi)
		s.ignored.Add(1)
		return nil
	}
	if r.board == nil {
		s.unknown(r, s.pool)
		if !s.pool {
			s.ignored.Add(1)
			return nil
		}
	} else if !r.board.IP.IsValid() && !s.pool {
		if r.typ == dhcpv4.MessageTypeDiscover {
			r.log.Warn("board has no ip in fleet.yaml and there is no pool: not answering")
		}
		s.ignored.Add(1)
		return nil
	}
	switch r.typ {
	case dhcpv4.MessageTypeDiscover:
		return s.fullDiscover(r)
	case dhcpv4.MessageTypeRequest:
		return s.fullRequest(r)
	case dhcpv4.MessageTypeRelease:
		s.fullRelease(r)
	case dhcpv4.MessageTypeDecline:
		s.fullDecline(r)
	case dhcpv4.MessageTypeInform:
		return s.fullInform(r)
	}
	return nil
}

// fixed returns the board's address from fleet.yaml.
func (r *request) fixed() (netip.Addr, bool) {
	if r.board != nil && r.board.IP.IsValid() {
		return r.board.IP, true
	}
	return netip.Addr{}, false
}

// pinned reports whether r comes from the MAC its board is listed with: then the
// board's fixed IP is this MAC's whoever holds it now. A board listed only by serial
// is not pinned: its fixed IP goes to the first MAC that leases it, until that lease
// ends (list the MAC to pin it).
func (r *request) pinned() bool {
	return r.board != nil && len(r.board.MAC) > 0 && r.board.MAC.String() == r.macStr
}

// fixedTaken reports whether the board's fixed ip is held by another MAC that r may
// not take it from, and logs it.
func (s *Server) fixedTaken(r *request, ip netip.Addr) bool {
	if r.pinned() {
		return false
	}
	s.leases.mu.Lock()
	holder, held := s.leases.holder(ip, r.at)
	s.leases.mu.Unlock()
	if !held || holder == r.macStr {
		return false
	}
	r.log.Warn("fixed address of a board listed by serial is leased to another MAC: not answering "+
		"(list the board's mac in fleet.yaml to pin the address to it)", "ip", ip, "holder", holder)
	s.ignored.Add(1)
	return true
}

// usable reports whether a pool address may go to a client: not ours, not the
// router's, not the subnet's network or broadcast address, not a board's fixed IP.
func (s *Server) usable(a netip.Addr) bool {
	if a == s.cfg.ServerIP || a == s.cfg.Router || !s.cfg.Subnet.Contains(a) {
		return false
	}
	p := s.cfg.Subnet.Masked()
	if a == p.Addr() || a == lastAddr(p) {
		return false
	}
	if b, ok := s.cfg.Fleet.BoardByIP(a); ok && b.IP == a {
		return false
	}
	return true
}

func (s *Server) fullDiscover(r *request) *dhcpv4.DHCPv4 {
	s.record(r, "discover")
	ip, ok := r.fixed()
	if ok && s.fixedTaken(r, ip) {
		return nil
	}
	if !ok {
		requested := addrOf(r.msg.RequestedIPAddress())
		s.leases.mu.Lock()
		ip, ok = s.leases.pick(r.macStr, r.board != nil, requested, s.cfg.PoolStart, s.cfg.PoolEnd, r.at, s.usable)
		if ok {
			s.leases.reserve(r.macStr, r.board != nil, ip, r.at)
		}
		s.leases.mu.Unlock()
		if !ok {
			// One line per period for the whole pool, not per client.
			s.limitedLog(slog.LevelWarn, "pool exhausted", false, "pool exhausted: no address to offer",
				"pool_start", s.cfg.PoolStart, "pool_end", s.cfg.PoolEnd, "board", r.boardName(), "mac", r.macStr)
			s.ignored.Add(1)
			return nil
		}
	}
	if r.kind == kindPiROM {
		// The Pi 3 ROM boots from the OFFER and never REQUESTs: the offer is its lease,
		// so it is persisted like an ACK before it is sent.
		if err := s.commit(r, ip); err != nil {
			if !errors.Is(err, errTaken) {
				r.log.Error("persist lease: not offering", "ip", ip, "err", err)
			}
			s.ignored.Add(1)
			return nil
		}
	}
	reply := s.fullReply(r, dhcpv4.MessageTypeOffer, ip)
	r.client = ip
	s.record(r, "offer", "ip", ip)
	return reply
}

func (s *Server) fullRequest(r *request) *dhcpv4.DHCPv4 {
	sid := r.msg.ServerIdentifier()
	if sid != nil && !sid.Equal(net.IP(s.cfg.ServerIP.AsSlice())) {
		// SELECTING another server's offer: free what we held for it.
		s.record(r, "request", "server", sid.String(), "note", "chose another server")
		s.leases.dropOfferOf(r.macStr)
		s.ignored.Add(1)
		return nil
	}
	want := addrOf(r.msg.RequestedIPAddress())
	if !want.IsValid() {
		want = addrOf(r.msg.ClientIPAddr) // RENEWING/REBINDING carry it in ciaddr
	}
	s.record(r, "request", "ip", want)
	if !want.IsValid() {
		s.ignored.Add(1)
		return nil
	}
	if ip, ok := r.fixed(); ok {
		if want != ip {
			return s.nak(r, fmt.Sprintf("requested %v; this board's address is %v", want, ip))
		}
		if s.fixedTaken(r, ip) {
			return s.nak(r, fmt.Sprintf("requested %v is not available", want))
		}
	} else {
		if !s.cfg.Subnet.Contains(want) {
			return s.nak(r, fmt.Sprintf("requested %v is not on this network %v", want, s.cfg.Subnet))
		}
		s.leases.mu.Lock()
		holder, held := s.leases.holder(want, r.at)
		inPool := s.cfg.PoolStart.Compare(want) <= 0 && want.Compare(s.cfg.PoolEnd) <= 0 && s.usable(want)
		s.leases.mu.Unlock()
		if !inPool || (held && holder != r.macStr) {
			return s.nak(r, fmt.Sprintf("requested %v is not available", want))
		}
	}
	if err := s.commit(r, want); errors.Is(err, errTaken) {
		// Another client's REQUEST for the same address won the race.
		return s.nak(r, fmt.Sprintf("requested %v is not available", want))
	} else if err != nil {
		// No ACK for a lease we could not persist: the client retransmits.
		r.log.Error("persist lease: not acknowledging", "ip", want, "err", err)
		return nil
	}
	reply := s.fullReply(r, dhcpv4.MessageTypeAck, want)
	r.client = want
	s.record(r, "ack", "ip", want, "lease", s.cfg.LeaseTime)
	return reply
}

func (s *Server) nak(r *request, why string) *dhcpv4.DHCPv4 {
	reply := s.baseReply(r, dhcpv4.MessageTypeNak)
	reply.UpdateOption(dhcpv4.OptMessage(why))
	s.record(r, "nak", "reason", why)
	return reply
}

func (s *Server) fullRelease(r *request) {
	ip := addrOf(r.msg.ClientIPAddr)
	s.record(r, "release", "ip", ip)
	if b := s.leases.release(r.macStr, ip); b != nil {
		if err := s.leases.log.wait(b); err != nil {
			r.log.Error("persist release", "ip", ip, "err", err)
		}
	}
}

func (s *Server) fullDecline(r *request) {
	ip := addrOf(r.msg.RequestedIPAddress())
	s.record(r, "decline", "ip", ip)
	if !ip.IsValid() {
		return
	}
	if b := s.leases.release(r.macStr, ip); b != nil {
		if err := s.leases.log.wait(b); err != nil {
			r.log.Error("persist decline", "ip", ip, "err", err)
		}
	}
	// RFC 2131 section 4.3.3: the address is in use by someone else; keep it out of
	// the pool for a while.
	s.leases.hold(ip, r.at.Add(declineHold))
	if _, fixed := r.fixed(); fixed {
		r.log.Warn("board declined its fixed address: another host uses it", "ip", ip)
	}
}

// fullInform answers DHCPINFORM (RFC 2131 section 3.4): configuration, no address.
func (s *Server) fullInform(r *request) *dhcpv4.DHCPv4 {
	reply := s.baseReply(r, dhcpv4.MessageTypeAck)
	s.addNetworkOptions(r, reply)
	s.addBootOptions(r, reply)
	s.record(r, "ack", "note", "inform")
	return reply
}

// commit persists r's lease on ip; errTaken if another MAC holds ip and r may not
// take it over (only a pinned board takes over its own fixed IP).
func (s *Server) commit(r *request, ip netip.Addr) error {
	name := ""
	if r.board != nil {
		name = r.board.Name
	}
	fixed, isFixed := r.fixed()
	takeover := isFixed && fixed == ip && r.pinned()
	b, ended, err := s.leases.bind(lease{MAC: r.macStr, IP: ip, Expires: r.at.Add(s.cfg.LeaseTime), Board: name}, r.at, takeover)
	if err != nil {
		return err
	}
	if ended != "" {
		r.log.Warn("the board's fixed address was leased to another MAC: that lease is ended", "ip", ip, "holder", ended)
	}
	return s.leases.log.wait(b)
}

func (s *Server) fullReply(r *request, typ dhcpv4.MessageType, ip netip.Addr) *dhcpv4.DHCPv4 {
	reply := s.baseReply(r, typ)
	reply.YourIPAddr = net.IP(ip.AsSlice())
	lt := s.cfg.LeaseTime
	reply.UpdateOption(dhcpv4.OptIPAddressLeaseTime(lt))
	reply.UpdateOption(dhcpv4.OptRenewTimeValue(lt / 2))
	reply.UpdateOption(dhcpv4.OptRebindingTimeValue(lt * 7 / 8))
	s.addNetworkOptions(r, reply)
	s.addBootOptions(r, reply)
	return reply
}

// addNetworkOptions adds the LAN's configuration: mask, router, DNS, and the board's
// host name (the kernel's ip=dhcp sets it from option 12).
func (s *Server) addNetworkOptions(r *request, reply *dhcpv4.DHCPv4) {
	reply.UpdateOption(dhcpv4.OptSubnetMask(net.CIDRMask(s.cfg.Subnet.Bits(), 32)))
	if s.cfg.Router.Is4() {
		reply.UpdateOption(dhcpv4.OptRouter(net.IP(s.cfg.Router.AsSlice())))
	}
	if len(s.cfg.DNS) > 0 {
		var ips []net.IP
		for _, a := range s.cfg.DNS {
			if a.Is4() {
				ips = append(ips, net.IP(a.AsSlice()))
			}
		}
		if len(ips) > 0 {
			reply.UpdateOption(dhcpv4.OptDNS(ips...))
		}
	}
	if r.board != nil {
		name := r.board.Hostname
		if name == "" {
			name = r.board.Name
		}
		reply.UpdateOption(dhcpv4.OptHostName(name))
	}
}

// lastAddr is the highest address of p (its broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	if host > 0 {
		v |= (1 << host) - 1
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
