package dhcp

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLeaseLog: concurrent binds share fsyncs, the log is compacted when it grows,
// a torn last line (crash mid-write) is skipped, expired leases are dropped on load,
// and the pool hands out each address once.
func TestLeaseLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.jsonl")
	now := time.Now()
	tab, err := openLeases(path, now)
	if err != nil {
		t.Fatal(err)
	}
	start, end := netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("10.9.0.200")
	all := func(netip.Addr) bool { return true }
	got := map[netip.Addr]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			mac := fmt.Sprintf("02:00:00:00:%02x:%02x", i/256, i%256)
			tab.mu.Lock()
			ip, ok := tab.pick(mac, false, netip.Addr{}, start, end, now, all)
			if ok {
				tab.reserve(mac, false, ip, now)
			}
			tab.mu.Unlock()
			if !ok {
				t.Errorf("%s: pool exhausted early", mac)
				return
			}
			if err := bindWait(tab, lease{MAC: mac, IP: ip, Expires: now.Add(time.Hour)}, now); err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if other, dup := got[ip]; dup {
				t.Errorf("%v given to %s and %s", ip, other, mac)
			}
			got[ip] = mac
		})
	}
	wg.Wait()
	tab.mu.Lock()
	if _, ok := tab.pick("02:ff:00:00:00:01", false, netip.Addr{}, start, end, now, all); ok {
		t.Errorf("pool of 200 gave a 201st address")
	}
	tab.mu.Unlock()
	if tab.log.batches >= 200 {
		t.Logf("no group commit happened: %d fsyncs for 200 leases", tab.log.batches)
	}
	// Re-binding the same leases many times grows the log past the compaction mark.
	for range 6 {
		for ip, mac := range got {
			bindWait(tab, lease{MAC: mac, IP: ip, Expires: now.Add(time.Hour)}, now)
		}
	}
	if tab.log.lines > 4*200+1024 {
		t.Errorf("log not compacted: %d lines for 200 leases", tab.log.lines)
	}
	// An expired lease and a torn line, as after a crash.
	bindWait(tab, lease{MAC: "02:ee:00:00:00:01", IP: netip.MustParseAddr("10.9.1.1"), Expires: now.Add(-time.Minute)}, now)
	if err := tab.close(); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"mac":"02:dd:00:00:00:01","ip":"10.9`)
	f.Close()

	again, err := openLeases(path, now)
	if err != nil {
		t.Fatal(err)
	}
	defer again.close()
	if n := len(again.live(now)); n != 200 {
		t.Errorf("after restart %d live leases, want 200", n)
	}
	for ip, mac := range got {
		if l, ok := again.lookup(mac, now); !ok || l.IP != ip {
			t.Fatalf("after restart %s has %v, want %v", mac, l.IP, ip)
		}
	}
	b, _ := os.ReadFile(path)
	if strings.Contains(string(b), "02:dd:") || strings.Contains(string(b), "02:ee:") {
		t.Errorf("start-up compaction kept a torn or expired record")
	}
}

// bindWait binds l (no takeover) and waits for it to be on disk.
func bindWait(tab *leaseTable, l lease, now time.Time) error {
	b, _, err := tab.bind(l, now, false)
	if err != nil {
		return err
	}
	return tab.log.wait(b)
}
