// Package boottest has helpers for testing code that takes a boot.Fleet.
package boottest

import (
	"bytes"
	"net"
	"net/netip"

	"github.com/pifleet/pifleet/boot"
)

// Fleet is a boot.Fleet over a fixed list of boards, the way server implements it over
// fleet.yaml. A board matches only by what it has: no MAC, serial or IP matches nothing.
type Fleet struct{ Boards []*boot.Board }

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

// BoardByIP implements boot.Fleet.
func (f *Fleet) BoardByIP(ip netip.Addr) (*boot.Board, bool) {
	for _, b := range f.Boards {
		if b.IP.IsValid() && b.IP == ip {
			return b, true
		}
	}
	return nil, false
}
