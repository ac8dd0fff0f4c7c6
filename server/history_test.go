package server

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
)

// TestHistorySurvivesRestart: a board's boots and its reset, and a client seen only over
// TFTP, are still in the JSON API after the server restarts; a reset is a board event,
// not a boot; a damaged history file is read as far as it goes.
func TestHistorySurvivesRestart(t *testing.T) {
	needRoot(t)
	ts := startServer(t, boardYAML("alpha", "beta"))
	if out, err := tftpGet(t, "127.0.0.2", ts.tftp, "000abc00/config.txt"); err != nil {
		t.Fatalf("tftp: %v: %s", err, out)
	}
	// A Pi that is not in the fleet, seen over TFTP only (no DHCP here: mode off).
	tftpGet(t, "127.0.0.9", ts.tftp, "deadbeef/start4.elf")
	r, err := ts.post("/api/boards/alpha/reset", nil)
	if err != nil || r.StatusCode != 200 {
		t.Fatalf("reset: %v %v", err, r)
	}
	r.Body.Close()
	var before boot.History
	ts.getJSON("/api/boards/alpha/history", &before)
	if len(before.Boots) != 1 || len(before.Events) != 1 || before.Events[0].Stage != boot.StageReset {
		t.Fatalf("history before restart: %+v", before)
	}
	ts.stop()

	// The reset was written at once; the boot at shutdown.
	data, err := os.ReadFile(ts.srv.state.BoardHistory("alpha"))
	if err != nil || !bytes.Contains(data, []byte(`"reset"`)) || !bytes.Contains(data, []byte("config.txt")) {
		t.Fatalf("history file: %v\n%s", err, data)
	}
	ts.start()
	var after boot.History
	ts.getJSON("/api/boards/alpha/history", &after)
	if len(after.Boots) != 1 || len(after.Events) != 1 || after.Events[0].What != "reset" {
		t.Fatalf("history after restart: %+v", after)
	}
	if e := after.Boots[0].Events; len(e) == 0 || e[0].Stage != boot.StageTFTP || e[0].File != "000abc00/config.txt" {
		t.Errorf("boot after restart: %+v", after.Boots[0])
	}
	var one BoardStatus
	ts.getJSON("/api/boards/alpha", &one)
	if one.Boots != 1 || one.LastBoot == nil || one.Reached != boot.StageTFTP || len(one.Events) != 1 {
		t.Errorf("board status after restart: %+v", one)
	}
	var unknown []boot.Unknown
	ts.getJSON("/api/unknown", &unknown)
	if len(unknown) != 1 || unknown[0].Serial != "deadbeef" || !unknown[0].IP.IsValid() || strings.Join(unknown[0].Via, ",") != "tftp" {
		t.Errorf("unknown clients after restart: %+v", unknown)
	}
	resp, err := http.Get(ts.http + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), `<td class="mono">deadbeef</td>`) || !strings.Contains(string(page), "<td>tftp</td>") || !strings.Contains(string(page), `<td class="mono">127.0.0.9</td>`) {
		t.Errorf("status page does not list the TFTP-only client:\n%s", page)
	}
	ts.stop()

	// Damage the file: a garbage line in the middle and a torn last line.
	lines := strings.SplitAfter(string(data), "\n")
	damaged := lines[0] + "{not json\n" + strings.Join(lines[1:], "") + `{"boot":{"start":"2026-`
	if err := os.WriteFile(ts.srv.state.BoardHistory("alpha"), []byte(damaged), 0o644); err != nil {
		t.Fatal(err)
	}
	// A crash mid-write leaves a temporary file; a board gone from the fleet leaves its history.
	tmp := filepath.Join(ts.srv.state.Histories(), ".tmp-alpha.jsonl123")
	gone := ts.srv.state.BoardHistory("gone")
	for _, p := range []string{tmp, gone} {
		if err := os.WriteFile(p, []byte(lines[0]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ts.start()
	after = boot.History{}
	ts.getJSON("/api/boards/alpha/history", &after)
	if len(after.Boots) != 1 || len(after.Events) != 1 {
		t.Errorf("history from a damaged file: %+v", after)
	}
	if !strings.Contains(ts.logs.String(), "board history damaged; kept what could be read") {
		t.Errorf("damage not logged:\n%s", ts.logs.String())
	}
	for _, p := range []string{tmp, gone} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left in the history dir: %v", p, err)
		}
	}
}

// TestUnknownFloodBounded: TFTP requests from more strangers than the table holds
// leave it, and its file, within boot.MaxUnknown.
func TestUnknownFloodBounded(t *testing.T) {
	needRoot(t)
	ts := startServer(t, boardYAML("alpha"))
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 100), Port: ts.tftp}
	rrq := []byte("\x00\x01cafe0001/start4.elf\x00octet\x00")
	const n = 2 * boot.MaxUnknown
	for i := 0; i < n; i++ {
		src := netip.AddrFrom4([4]byte{127, 3, byte(i >> 8), byte(i)})
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: src.AsSlice()})
		if err != nil {
			t.Fatal(err)
		}
		c.WriteToUDP(rrq, dst)
		c.Close()
		if i%64 == 63 {
			time.Sleep(5 * time.Millisecond) // let the server keep up: this tests the table, not the socket
		}
	}
	var unknown []boot.Unknown
	waitFor(t, "the flood to reach the table", func() bool {
		unknown = nil
		ts.getJSON("/api/unknown", &unknown)
		return len(unknown) >= boot.MaxUnknown/2
	})
	time.Sleep(200 * time.Millisecond)
	unknown = nil
	ts.getJSON("/api/unknown", &unknown)
	if len(unknown) > boot.MaxUnknown {
		t.Fatalf("unknown table grew to %d", len(unknown))
	}
	ts.stop()
	data, err := os.ReadFile(ts.srv.state.UnknownClients())
	if err != nil {
		t.Fatal(err)
	}
	if lines := bytes.Count(data, []byte("\n")); lines > boot.MaxUnknown+1 || lines < 2 {
		t.Errorf("unknown clients file has %d lines", lines)
	}
}

func TestHistoryDecode(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	h := boot.History{
		Boots:  []boot.Boot{{Start: t0, Events: []boot.Event{{Time: t0, Board: "a", Stage: boot.StageDHCP, What: "discover"}}}, {Start: t0.Add(time.Hour)}},
		Events: []boot.Event{{Time: t0, Board: "a", Stage: boot.StageReset, What: "reset"}},
	}
	good := encodeHistory(h)
	got, bad := decodeHistory(bytes.NewReader(good))
	if bad != 0 || len(got.Boots) != 2 || len(got.Events) != 1 || got.Boots[0].Events[0].What != "discover" {
		t.Fatalf("round trip: bad %d, %+v", bad, got)
	}
	lines := strings.SplitAfter(string(good), "\n")
	long := `{"boot":{"start":"2026-12-04T10:00:00Z","events":[` + strings.Repeat(" ", historyMaxLine) + "]}}\n"
	damaged := lines[0] + "\x00garbage\n" + lines[1] + long + `{"event":{}}` + "\n" + lines[2] + lines[3] + `{"boot":{"st`
	got, bad = decodeHistory(strings.NewReader(damaged))
	if bad != 4 || len(got.Boots) != 2 || len(got.Events) != 1 {
		t.Errorf("damaged: bad %d, %d boots, %d events", bad, len(got.Boots), len(got.Events))
	}
	us := []boot.Unknown{{MAC: "dc:a6:32:01:02:03", Serial: "9ffefdef", Via: []string{"dhcp"}, FirstSeen: t0, LastSeen: t0, Count: 3},
		{IP: netip.MustParseAddr("10.0.0.9"), Via: []string{"tftp"}, FirstSeen: t0, LastSeen: t0, Count: 1}}
	ug, bad := decodeUnknown(bytes.NewReader(append(encodeUnknown(us), "{}\n{\"mac\":\"dc"...)))
	if bad != 2 || len(ug) != 2 || ug[1].IP != us[1].IP {
		t.Errorf("unknown: bad %d, %+v", bad, ug)
	}
}

// FuzzHistoryDecode: whatever a damaged file holds, decoding neither panics nor keeps
// more than it read, and what it keeps survives a write and a read.
func FuzzHistoryDecode(f *testing.F) {
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	f.Add(encodeHistory(boot.History{Boots: []boot.Boot{{Start: t0, Events: []boot.Event{{Time: t0, Stage: boot.StageTFTP, What: "read", File: "start4.elf", Bytes: 1}}}}}))
	f.Add(encodeUnknown([]boot.Unknown{{MAC: "dc:a6:32:01:02:03", FirstSeen: t0, LastSeen: t0, Count: 1}}))
	f.Add([]byte("{\"boot\":{\"start\":\"2026-12-04T10:00:00Z\"}}\n{\"boot\""))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, _ := decodeHistory(bytes.NewReader(data))
		if n := bytes.Count(data, []byte("\n")); len(h.Boots)+len(h.Events) > n {
			t.Fatalf("%d records from %d lines", len(h.Boots)+len(h.Events), n)
		}
		tl := boot.NewTimeline()
		tl.Restore("b", h)
		again, bad := decodeHistory(bytes.NewReader(encodeHistory(tl.History("b"))))
		if bad != 0 || len(again.Boots) != len(tl.History("b").Boots) {
			t.Fatalf("re-read: bad %d, %d boots, want %d", bad, len(again.Boots), len(tl.History("b").Boots))
		}
		us, _ := decodeUnknown(bytes.NewReader(data))
		tl.RestoreUnknown(us)
		if len(tl.Unknowns()) > boot.MaxUnknown {
			t.Fatal("unknown table over its bound")
		}
	})
}

// TestResetEndsBootStage: a reset is a board event, not part of a boot, yet the boot
// stage metric reads it: after a reset the board has reached nothing until it boots.
func TestResetEndsBootStage(t *testing.T) {
	s := &Server{timeline: boot.NewTimeline()}
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	s.timeline.Record(boot.Event{Board: "a", Time: t0, Stage: boot.StageReset, What: "reset"})
	s.timeline.Record(boot.Event{Board: "a", Time: t0.Add(time.Minute), Stage: boot.StageTFTP, What: "read"})
	s.timeline.Record(boot.Event{Board: "a", Time: t0.Add(2 * time.Minute), Stage: boot.StageNFS, What: "mount"})
	if stage, _, took := lastBoot(s.lastBootEvents("a")); stage != stageNFS || took != time.Minute {
		t.Errorf("before the reset: stage %d took %v", stage, took)
	}
	s.timeline.Record(boot.Event{Board: "a", Time: t0.Add(time.Hour), Stage: boot.StageReset, What: "reset"})
	if stage, _, _ := lastBoot(s.lastBootEvents("a")); stage != stageNone {
		t.Errorf("after the reset: stage %d", stage)
	}
	if h := s.timeline.History("a"); len(h.Boots) != 1 || len(h.Events) != 2 {
		t.Errorf("history: %+v", h)
	}
}
