package boot

import (
	"net"
	"testing"
	"time"
)

func TestTimelineOrderAndReset(t *testing.T) {
	tl := NewTimeline()
	var seen []Event
	tl.OnEvent = func(e Event) { seen = append(seen, e) }
	t0 := time.Now()
	tl.Record(Event{Board: "pi", Stage: StageDHCP, What: "discover", Time: t0})
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
	// A new DISCOVER starts a new boot.
	tl.Record(Event{Board: "pi", Stage: StageDHCP, What: "discover", Time: t0.Add(time.Minute)})
	if got := tl.LastBoot("pi"); len(got) != 1 {
		t.Fatalf("after a new discover: %d events", len(got))
	}
	// Bounded per board.
	for i := 0; i < 3*maxEventsPerBoard; i++ {
		tl.Record(Event{Board: "pi", Stage: StageTFTP, What: "read", Time: t0.Add(time.Hour + time.Duration(i))})
	}
	if n := len(tl.LastBoot("pi")); n > maxEventsPerBoard {
		t.Errorf("timeline grew to %d", n)
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
	if tl.SeenUnknown(mac, "9ffefdef", "Raspberry Pi 4") {
		t.Fatal("second sighting reported as first")
	}
	u := tl.Unknowns()
	if len(u) != 1 || u[0].Serial != "9ffefdef" || u[0].Count != 2 {
		t.Fatalf("unknowns = %+v", u)
	}
}
