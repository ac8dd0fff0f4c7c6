package nfsroot

import (
	"net/netip"
	"testing"
)

func TestSetExportsReload(t *testing.T) {
	f := newFixture(t)
	a, rootA := f.client("pi-a")
	host := a.walk(rootA, "etc", "hostname")
	b, rootB := f.client("pi-b")

	// A reload that changes only pi-a's allowed address: its state stays (same handles),
	// the old address is refused at once.
	exps := append([]Export(nil), f.exps...)
	exps[0].Allow = func(c netip.Addr) bool { return c == addrOther }
	f.srv.SetExports(exps)
	if st, _ := a.getattr(host); st != stAccess {
		t.Fatalf("pi-a's old address after reload: %d, want ACCES", st)
	}
	if st, _ := a.mnt("/boards/pi-a"); st != 13 {
		t.Fatalf("mount from old address after reload: %d", st)
	}
	f.srv.SetExports(f.exps)
	if st, data := a.readAll(host); st != 0 || data != "base\n" {
		t.Fatalf("pi-a after reload back: %d %q", st, data)
	}
	if !f.srv.Mounted("pi-a") {
		t.Fatal("reload with the same export forgot the mount")
	}

	// pi-b removed from the fleet: its handles are STALE, its mount refused.
	f.srv.SetExports([]Export{f.exps[0], f.exps[2]})
	if st, _ := b.getattr(rootB); st != stStale {
		t.Fatalf("removed board's handle: %d, want STALE", st)
	}
	if st, _ := b.mnt("/boards/pi-b"); st != 13 {
		t.Fatalf("removed board mounts: %d", st)
	}
	if f.srv.Mounted("pi-b") {
		t.Fatal("removed board still counted as mounted")
	}

	// pi-a's overlay replaced by a new one over the same dirs (e.g. a new image layer list):
	// the persisted handle table keeps its handles valid.
	fresh := f.exports()
	f.srv.SetExports([]Export{fresh[0], f.exps[2]})
	if st, data := a.readAll(host); st != 0 || data != "base\n" {
		t.Fatalf("pi-a after its overlay was replaced: %d %q", st, data)
	}
	f.exps = []Export{fresh[0], f.exps[2]}
}
