// Package boottest has helpers for testing code that takes a boot.Fleet.
package boottest

import (
	"bytes"
	"net"
	"net/netip"
	"sync"

	"github.com/pifleet/pifleet/boot"
)

// Fleet is a boot.Fleet over a fixed list of boards, the way server implements it over
// fleet.yaml. A board matches only by what it has: no MAC, serial or IP matches nothing.
// Addresses bound by Bind are kept in Bound.
type Fleet struct {
	Boards []*boot.Board

	mu    sync.Mutex
	bound map[netip.Addr]*boot.Board
}

var _ boot.Fleet = (*Fleet)(nil)

// BoardByMAC implements boot.Fleet.
func (f *Fleet) BoardByMAC(mac net.HardwareAddr) (*boot.Board, bool) {
	for _, b := range f.Boards {
		if len(b.MAC) > 0 && bytes.Equal(b.MAC, mac) {
			return b, true
		}
	}
	return nil, false
}

// BoardBySerial implements boot.Fleet.
func (f *Fleet) BoardBySerial(serial string) (*boot.Board, bool) {
	for _, b := range f.Boards {
		if b.Serial != "" && b.Serial == serial {
			return b, true
		}
	}
	return nil, false
}

// BoardByIP implements boot.Fleet: a fixed IP, else an address bound by Bind.
func (f *Fleet) BoardByIP(ip netip.Addr) (*boot.Board, bool) {
	if b, ok := f.fixed(ip); ok {
		return b, true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.bound[ip]
	return b, ok
}

func (f *Fleet) fixed(ip netip.Addr) (*boot.Board, bool) {
	for _, b := range f.Boards {
		if b.IP.IsValid() && b.IP == ip {
			return b, true
		}
	}
	return nil, false
}

// Bind implements boot.Fleet.
func (f *Fleet) Bind(ip netip.Addr, mac net.HardwareAddr) (*boot.Board, bool) {
	if b, ok := f.fixed(ip); ok {
		return b, true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.BoardByMAC(mac)
	if !ok || b.IP.IsValid() {
		delete(f.bound, ip)
		return nil, false
	}
	if f.bound == nil {
		f.bound = map[netip.Addr]*boot.Board{}
	}
	for a, x := range f.bound {
		if x == b {
			delete(f.bound, a)
		}
	}
	f.bound[ip] = b
	return b, true
}

// Bound returns the board an address was bound to by Bind.
func (f *Fleet) Bound(ip netip.Addr) (*boot.Board, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.bound[ip]
	return b, ok
}
