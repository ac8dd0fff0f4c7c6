package dhcp

import (
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot/boottest"
)

// BenchmarkHandleExchange measures one full-mode DISCOVER+REQUEST through the handler
// (lease fsync included), from parallel goroutines as the server's workers run it.
func BenchmarkHandleExchange(b *testing.B) {
	s, err := New(Config{Mode: ModeFull, ServerIP: serverIP, Subnet: testNet, Fleet: &boottest.Fleet{},
		PoolStart: netip.MustParseAddr("198.18.1.1"), PoolEnd: netip.MustParseAddr("198.18.200.254"),
		LeaseFile: filepath.Join(b.TempDir(), "leases"),
		Logger:    slog.New(slog.NewTextHandler(discard{}, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer s.leases.close()
	var mu sync.Mutex
	next := uint32(0)
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			next++
			i := next
			mu.Unlock()
			mac := net.HardwareAddr{2, 0, 0, 0, 0, 0}
			binary.BigEndian.PutUint32(mac[2:], i)
			now := time.Now()
			out, _ := s.handle(plainDiscover(i, mac, netip.Addr{}), now)
			if out == nil {
				b.Fatal("no offer")
			}
			ack, _ := s.handle(plainRequest(i, mac, serverIP, yiaddr(out)), now)
			if ack == nil || ack[242] != 5 {
				b.Fatal("no ack")
			}
		}
	})
	b.StopTimer()
	s.leases.log.mu.Lock()
	if n := s.leases.log.batches; n > 0 {
		b.ReportMetric(float64(s.leases.log.records)/float64(n), "leases/fsync")
	}
	s.leases.log.mu.Unlock()
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
