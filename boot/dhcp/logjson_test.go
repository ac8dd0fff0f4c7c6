package dhcp

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
)

// TestLogJSONStrings: with a JSON logger (pifleet serve --log-json) a request's xid is a
// hex string, its MAC the usual colon form and its client kind a name, not numbers.
func TestLogJSONStrings(t *testing.T) {
	var logs bytes.Buffer
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-01", MAC: mustMAC("dc:a6:32:01:36:c2"), Serial: "9ffefdef"}}}
	s, err := New(Config{Mode: ModeProxy, ServerIP: serverIP, Fleet: fleet,
		Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := s.handle(pi4Discover(t, 0x1234abcd, mustMAC("dc:a6:32:01:36:c2"), 0x9ffefdef), time.Now()); out == nil {
		t.Fatal("no reply to the board's DISCOVER")
	}
	lines := bytes.Split(bytes.TrimSpace(logs.Bytes()), []byte("\n"))
	var seen int
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal(l, &rec); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if x, ok := rec["xid"]; ok {
			seen++
			if x != "0x1234abcd" {
				t.Errorf("xid logged as %#v, want \"0x1234abcd\": %s", x, l)
			}
			if c, ok := rec["client"].(string); !ok || c == "" {
				t.Errorf("client kind logged as %#v, want its name: %s", rec["client"], l)
			}
			if m := rec["mac"]; m != "dc:a6:32:01:36:c2" {
				t.Errorf("mac logged as %#v: %s", m, l)
			}
		}
	}
	if seen == 0 {
		t.Fatalf("no log line carries the xid:\n%s", logs.String())
	}
}
