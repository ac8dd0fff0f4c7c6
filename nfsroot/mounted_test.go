package nfsroot

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"
)

// TestMountedExpires: a board counts as mounted for mountIdle after its last NFS call or
// its last MNT without UMNT, and no longer (a board switched off never says UMNT).
func TestMountedExpires(t *testing.T) {
	e := newExport(Export{Board: "pi-a", Path: "/boards/pi-a"}, slog.New(slog.DiscardHandler))
	if e.mounted() {
		t.Fatal("never mounted, never called: counts as mounted")
	}
	ago := func(d time.Duration) time.Time { return time.Now().Add(-d) }

	e.lastNFS.Store(ago(mountIdle - time.Minute).Unix())
	if !e.mounted() {
		t.Error("NFS call a minute inside mountIdle: not mounted")
	}
	e.lastNFS.Store(ago(mountIdle + time.Minute).Unix())
	if e.mounted() {
		t.Error("last NFS call a minute past mountIdle: still mounted")
	}

	board := netip.MustParseAddr("192.0.2.10")
	e.mu.Lock()
	e.mounts[board] = ago(mountIdle - time.Minute)
	e.mu.Unlock()
	if !e.mounted() {
		t.Error("MNT a minute inside mountIdle: not mounted")
	}
	e.mu.Lock()
	e.mounts[board] = ago(mountIdle + time.Minute)
	e.mu.Unlock()
	if e.mounted() {
		t.Error("MNT a minute past mountIdle, no NFS since: still mounted")
	}
}
