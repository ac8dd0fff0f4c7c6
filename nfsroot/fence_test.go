package nfsroot

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/overlay"
)

// gatedFS holds every open for writing of one path until released: a WRITE caught
// between its handle check and its copy-up, as a slow WRITE stream is during a reset.
type gatedFS struct {
	FileSystem
	path    string
	entered chan struct{}
	release chan struct{}
}

func (g *gatedFS) OpenFile(name string, flag int, perm os.FileMode) (*overlay.File, error) {
	if name == g.path && flag&(os.O_WRONLY|os.O_RDWR) != 0 {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		<-g.release
	}
	return g.FileSystem.OpenFile(name, flag, perm)
}

// TestResetFencesCallsInFlight resets a board (export removed, board dir moved aside,
// fresh export on the same paths, as server.ResetBoard does) while one of its WRITEs is
// in flight: removing the export must wait for the WRITE, so nothing lands in the fresh
// upper, and the old handle is STALE afterwards.
func TestResetFencesCallsInFlight(t *testing.T) {
	f := newFixture(t)
	gate := &gatedFS{path: "/etc/hostname", entered: make(chan struct{}, 1), release: make(chan struct{})}
	var released bool
	defer func() {
		if !released {
			close(gate.release)
		}
	}()
	exps := append([]Export(nil), f.exps...)
	for i := range exps {
		if exps[i].Board == "pi-a" {
			gate.FileSystem = exps[i].FS
			exps[i].FS = gate
		}
	}
	f.srv.SetExports(exps)
	old := f.srv.exports.Load().byID[exportID("pi-a", exportPath("pi-a"))]

	c, root := f.client("pi-a")
	fh := c.walk(root, "etc", "hostname")
	wrote := make(chan uint32, 1)
	go func() {
		c2 := dialFrom(t, addrA, f.nfs)
		st, _ := c2.write(fh, 0, []byte(strings.Repeat("x", 64<<10)), unstable)
		wrote <- st
	}()
	select {
	case <-gate.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("the WRITE never reached the file system")
	}

	boardDir := filepath.Join(f.dir, "boards", "pi-a")
	reset := make(chan struct{})
	go func() {
		defer close(reset)
		var without []Export
		for _, e := range exps {
			if e.Board != "pi-a" {
				without = append(without, e)
			}
		}
		f.srv.SetExports(without)
		if err := os.Rename(boardDir, boardDir+".trash"); err != nil {
			t.Error(err)
			return
		}
		fs, err := overlay.New(overlay.Options{Upper: f.upper("pi-a"), Work: filepath.Join(boardDir, "work"), Lowers: []string{f.lower}})
		if err != nil {
			t.Error(err)
			return
		}
		f.srv.SetExports(append(without, Export{Board: "pi-a", Path: exportPath("pi-a"), FS: fs,
			StateDir: f.stateDir("pi-a"), Allow: func(a netip.Addr) bool { return a == addrA }}))
	}()
	// Wait until the reset either finished (no fencing: the bug) or waits on the WRITE.
	for !old.gate.waiting() {
		select {
		case <-reset:
		case <-time.After(5 * time.Millisecond):
			continue
		}
		break
	}
	close(gate.release)
	released = true
	<-reset
	select {
	case st := <-wrote:
		t.Logf("the WRITE in flight answered %d", st)
	case <-time.After(20 * time.Second):
		t.Fatal("the WRITE in flight never answered")
	}
	var landed []string
	_ = filepath.Walk(f.upper("pi-a"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && p != f.upper("pi-a") {
			landed = append(landed, strings.TrimPrefix(p, f.upper("pi-a")))
		}
		return nil
	})
	if len(landed) > 0 {
		t.Fatalf("a call from before the reset wrote into the fresh upper: %q", landed)
	}
	if st, _ := c.getattr(fh); st != 70 {
		t.Fatalf("old handle after the reset: status %d, want STALE", st)
	}
}
