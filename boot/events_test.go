package boot

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestTimelineOrderAndBoots(t *testing.T) {
	tl := NewTimeline()
	var seen []Event
	tl.OnEvent = func(e Event) { seen = append(seen, e) }
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	tl.Record(Event{Board: "pi", Stage: StageDHCP, What: "discover", Agent: AgentPi, Time: t0.Add(-5 * time.Second)})
	// The bootloader retrying DHCP is the same boot.
	tl.Record(Event{Board: "pi", Stage: StageDHCP, What: "discover", Agent: AgentPi, Time: t0})
	if h := tl.History("pi"); len(h.Boots) != 1 {
		t.Fatalf("a DHCP retry started a boot: %+v", h.Boots)
	}
	tl.Forget("pi")
	seen = nil
	tl.Record(Event{Board: "pi", Stage: StageDHCP, What: "discover", Agent: AgentPi, Time: t0})
	tl.Record(Event{Board: "pi", Stage: StageTFTP, What: "read", File: "kernel8.img", Time: t0.Add(2 * time.Second)})
	// Started earlier, finished later: recorded second, listed first.
	tl.Record(Event{Board: "pi", Stage: StageTFTP, What: "read", File: "config.txt", Time: t0.Add(time.Second)})
	got := tl.LastBoot("pi")
	if len(got) != 3 || got[1].File != "config.txt" || got[2].File != "kernel8.img" {
		t.Fatalf("timeline order: %+v", got)
	}
	if len(seen) != 3 {
		t.Errorf("OnEvent saw %d events", len(seen))
	}
	// The kernel's own DHCP (ip=dhcp) and the mount belong to the same boot.
	tl.Record(Event{Board: "pi", Stage: StageDHCP, What: "discover", Agent: AgentOS, Time: t0.Add(10 * time.Second)})
	tl.Record(Event{Board: "pi", Stage: StageNFS, What: "mount", Time: t0.Add(12 * time.Second)})
	if h := tl.History("pi"); len(h.Boots) != 1 || len(h.Boots[0].Events) != 5 {
		t.Fatalf("kernel DHCP or mount started a boot: %+v", h.Boots)
	}
	// A reset is a board event, not a boot.
	tl.Record(Event{Board: "pi", Stage: StageReset, What: "reset", Time: t0.Add(time.Minute)})
	if h := tl.History("pi"); len(h.Boots) != 1 || len(h.Events) != 1 || len(tl.LastBoot("pi")) != 5 {
		t.Fatalf("after a reset: %+v", h)
	}
	// The bootloader's DISCOVER starts a new boot; so does TFTP after the board was up.
	tl.Record(Event{Board: "pi", Stage: StageDHCP, What: "discover", Agent: AgentPi, Time: t0.Add(2 * time.Minute)})
	if got := tl.LastBoot("pi"); len(got) != 1 {
		t.Fatalf("after a new discover: %d events", len(got))
	}
	tl.Record(Event{Board: "pi", Stage: StageNFS, What: "mount", Time: t0.Add(3 * time.Minute)})
	tl.Record(Event{Board: "pi", Stage: StageTFTP, What: "read", Time: t0.Add(4 * time.Minute)})
	// With DHCP off: TFTP after a silence longer than BootGap starts a boot too.
	tl.Record(Event{Board: "pi", Stage: StageTFTP, What: "read", Time: t0.Add(4*time.Minute + BootGap + time.Second)})
	if h := tl.History("pi"); len(h.Boots) != 4 {
		t.Fatalf("boots = %d, want 4: %+v", len(h.Boots), h.Boots)
	}
	// Bounded: events per boot, boots per board.
	for i := 0; i < 3*MaxEventsPerBoot; i++ {
		tl.Record(Event{Board: "pi", Stage: StageTFTP, What: "read", Time: t0.Add(time.Hour + time.Duration(i))})
	}
	h := tl.History("pi")
	last := h.Boots[len(h.Boots)-1]
	if n := len(last.Events); n > MaxEventsPerBoot || last.Dropped == 0 || n+last.Dropped != 3*MaxEventsPerBoot {
		t.Errorf("boot grew to %d events, %d dropped", n, last.Dropped)
	}
	if !last.Events[0].Time.Equal(t0.Add(time.Hour)) {
		t.Errorf("a cut boot lost its first event: %v", last.Events[0].Time)
	}
	for i := 0; i < 3*MaxBoots; i++ {
		tl.Record(Event{Board: "pi", Stage: StageDHCP, What: "discover", Agent: AgentPi, Time: t0.Add(2*time.Hour + time.Duration(i)*2*BootGap)})
	}
	h = tl.History("pi")
	if len(h.Boots) != MaxBoots {
		t.Errorf("boots = %d, want %d", len(h.Boots), MaxBoots)
	}
	for i := 0; i < 2*MaxBoardEvents; i++ {
		tl.Record(Event{Board: "pi", Stage: StageReset, What: "reset"})
	}
	if n := len(tl.History("pi").Events); n != MaxBoardEvents {
		t.Errorf("board events = %d, want %d", n, MaxBoardEvents)
	}
	if d, _ := tl.TakeDirty(); len(d) != 1 || d[0] != "pi" {
		t.Errorf("dirty = %v", d)
	}
	if d, u := tl.TakeDirty(); len(d) != 0 || u {
		t.Errorf("dirty after take = %v %v", d, u)
	}
	tl.Forget("pi")
	if len(tl.LastBoot("pi")) != 0 {
		t.Error("Forget kept events")
	}
}

func TestSeenUnknownOncePerMAC(t *testing.T) {
	tl := NewTimeline()
	mac := net.HardwareAddr{0xdc, 0xa6, 0x32, 1, 2, 3}
	if !tl.SeenUnknown(mac, "", "") {
		t.Fatal("first sighting not reported as first")
	}
	if tl.Seen(Sighting{Via: "dhcp", MAC: mac, Serial: "9ffefdef", Model: "Raspberry Pi 4"}) {
		t.Fatal("second sighting reported as first")
	}
	u := tl.Unknowns()
	if len(u) != 1 || u[0].Serial != "9ffefdef" || u[0].Count != 2 {
		t.Fatalf("unknowns = %+v", u)
	}
	// A TFTP request with that serial prefix joins the DHCP client's entry.
	ip := netip.MustParseAddr("192.168.1.50")
	if tl.Seen(Sighting{Via: "tftp", IP: ip, Serial: "9ffefdef"}) {
		t.Error("TFTP sighting of a known serial reported as new")
	}
	// A TFTP-only client is listed by its address.
	if !tl.Seen(Sighting{Via: "tftp", IP: netip.MustParseAddr("192.168.1.51")}) {
		t.Error("TFTP-only client not new")
	}
	u = tl.Unknowns()
	if len(u) != 2 || u[1].IP != ip || fmt.Sprint(u[1].Via) != "[dhcp tftp]" || u[0].MAC != "" || fmt.Sprint(u[0].Via) != "[tftp]" {
		t.Fatalf("unknowns = %+v", u)
	}
	if _, dirty := tl.TakeDirty(); !dirty {
		t.Error("unknown table not dirty")
	}
}

func TestUnknownTableBounded(t *testing.T) {
	tl := NewTimeline()
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	for i := 0; i < 10*MaxUnknown; i++ {
		mac := net.HardwareAddr{2, 0, byte(i >> 16), byte(i >> 8), byte(i), 1}
		tl.Seen(Sighting{Via: "dhcp", MAC: mac, Time: t0.Add(time.Duration(i) * time.Millisecond)})
		if i%7 == 0 {
			tl.Seen(Sighting{Via: "tftp", IP: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), Time: t0.Add(time.Duration(i) * time.Millisecond)})
		}
	}
	u := tl.Unknowns()
	if len(u) > MaxUnknown {
		t.Fatalf("unknown table grew to %d", len(u))
	}
	// Least recently seen go first: the newest client is still there.
	n := 10*MaxUnknown - 1
	if u[0].MAC != (net.HardwareAddr{2, 0, byte(n >> 16), byte(n >> 8), byte(n), 1}).String() {
		t.Errorf("newest client evicted: %+v", u[0])
	}
	tl.RestoreUnknown(append(u, u...))
	if n := len(tl.Unknowns()); n > MaxUnknown {
		t.Errorf("restore grew the table to %d", n)
	}
}
