package nfsroot

import (
	"fmt"
	"testing"
)

// Listings are cached between calls, but a listing after any change shows the change.
func TestReaddirplusSeesChanges(t *testing.T) {
	f := newFixture(t)
	c, root := f.client("pi-a")
	_, d, _ := c.mkdir(c.walk(root, "tmp"), "d", mode(0o755))
	for i := range 300 {
		if st, _, _ := c.create(d, fmt.Sprintf("f%03d", i), 0, mode(0o644)); st != 0 {
			t.Fatalf("create: %d", st)
		}
	}
	modes := func() map[string]uint32 {
		st, ents := c.readdirplus(d)
		wantStatus(t, "readdirplus", st, 0)
		m := map[string]uint32{}
		for _, e := range ents {
			m[e.Name] = e.Attr.Attr.FileMode
		}
		return m
	}
	if m := modes(); len(m) != 300 || m["f007"] != 0o644 {
		t.Fatalf("first listing: %d entries, f007 %o", len(m), m["f007"])
	}
	_, f7, _ := c.lookup(d, "f007")
	wantStatus(t, "chmod", c.setattr(f7, mode(0o600)), 0)
	wantStatus(t, "remove", c.remove(d, "f008"), 0)
	c.create(d, "new", 0, mode(0o644))
	m := modes()
	if m["f007"] != 0o600 {
		t.Fatalf("listing after chmod shows %o", m["f007"])
	}
	if _, ok := m["f008"]; ok || len(m) != 300 {
		t.Fatalf("listing after remove+create: %d entries, f008 listed %v", len(m), ok)
	}
	if _, ok := m["new"]; !ok {
		t.Fatal("new file not listed")
	}
	// Another board's listing of its own tree is untouched by pi-a's changes.
	b, rootB := f.client("pi-b")
	if st, ents := b.readdirplus(b.walk(rootB, "tmp")); st != 0 || len(ents) != 0 {
		t.Fatalf("pi-b's /tmp: %d, %d entries", st, len(ents))
	}
}
