package server

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/pifleet/pifleet/boot"
)

// leaseTable stands in for the full-mode DHCP server's leases (boot.Leases).
type leaseTable map[netip.Addr]net.HardwareAddr

func (l leaseTable) LeaseHolder(ip netip.Addr) (net.HardwareAddr, bool) {
	m, ok := l[ip]
	return m, ok
}

func testFleet(boards ...Board) *liveFleet {
	rts := map[string]*boardRT{}
	for _, b := range boards {
		rts[b.Name] = &boardRT{cfg: b, boot: &boot.Board{Name: b.Name, MAC: b.MAC, IP: b.IP}}
	}
	f := newLiveFleet()
	f.cur.Store(newSnapshot(&Config{}, netip.MustParseAddr("10.0.0.1"), rts))
	return f
}

// TestFleetEvidence: which address is which board's, on each kind of evidence.
func TestFleetEvidence(t *testing.T) {
	macA, _ := net.ParseMAC("02:00:00:00:00:0a")
	macB, _ := net.ParseMAC("02:00:00:00:00:0b")
	macC, _ := net.ParseMAC("02:00:00:00:00:0c")
	stranger, _ := net.ParseMAC("02:00:00:00:00:99")
	ip := netip.MustParseAddr
	f := testFleet(Board{Name: "a", MAC: macA}, Board{Name: "b", MAC: macB}, Board{Name: "c", MAC: macC, IP: ip("10.0.0.30")})
	var binds []string
	f.onBind = func(board string, a netip.Addr) { binds = append(binds, board+"@"+a.String()) }
	name := func(b *boot.Board, ok bool) string {
		if !ok {
			return "-"
		}
		return b.Name
	}

	// Nothing is anyone's until there is evidence.
	if got := name(f.BoardByIP(ip("10.0.0.77"))); got != "-" || f.allows("a", ip("10.0.0.77")) {
		t.Fatalf("an address with no evidence: %s", got)
	}
	// The neighbour table shows a's MAC at .10: bound, allowed, remembered.
	if got := name(f.Bind(ip("10.0.0.10"), macA)); got != "a" || !f.allows("a", ip("10.0.0.10")) || f.allows("b", ip("10.0.0.10")) {
		t.Errorf("neighbour evidence for a: %s", got)
	}
	// a shows up at .11: one address at a time.
	f.Bind(ip("10.0.0.11"), macA)
	if f.allows("a", ip("10.0.0.10")) || !f.allows("a", ip("10.0.0.11")) {
		t.Error("a kept its old address after moving")
	}
	// A stranger's MAC at a's address: the address is no longer a's.
	if got := name(f.Bind(ip("10.0.0.11"), stranger)); got != "-" || f.allows("a", ip("10.0.0.11")) {
		t.Errorf("stranger at a's address: %s, still allowed %v", got, f.allows("a", ip("10.0.0.11")))
	}
	// A fixed IP decides, and its board is never bound elsewhere.
	if got := name(f.Bind(ip("10.0.0.30"), stranger)); got != "c" {
		t.Errorf("fixed IP: %s", got)
	}
	if got := name(f.Bind(ip("10.0.0.31"), macC)); got != "-" || f.allows("c", ip("10.0.0.31")) {
		t.Errorf("fixed-IP board bound at another address: %s", got)
	}
	// Full mode: pifleet's lease to b's MAC decides, whatever the neighbour table says.
	f.setLeases(leaseTable{ip("10.0.0.50"): macB, ip("10.0.0.51"): stranger})
	if got := name(f.BoardByIP(ip("10.0.0.50"))); got != "b" || !f.allows("b", ip("10.0.0.50")) {
		t.Errorf("lease to b: %s", got)
	}
	if got := name(f.Bind(ip("10.0.0.50"), macA)); got != "b" || f.allows("a", ip("10.0.0.50")) {
		t.Errorf("lease to b, neighbour entry says a: %s", got)
	}
	if got := name(f.Bind(ip("10.0.0.51"), macA)); got != "-" || f.allows("a", ip("10.0.0.51")) {
		t.Errorf("leased to a stranger, neighbour entry says a: %s", got)
	}
	// A remembered address grants nothing by itself (no neighbour table here to confirm it).
	f.restore("b", ip("10.0.0.60"))
	if f.allows("b", ip("10.0.0.60")) {
		t.Error("a remembered address was allowed without confirmation")
	}
	if want := "[a@10.0.0.10 a@10.0.0.11]"; fmt.Sprint(binds) != want {
		t.Errorf("bindings persisted %v, want %s", binds, want)
	}
}
