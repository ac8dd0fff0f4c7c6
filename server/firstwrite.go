package server

import (
	"sync"
	"sync/atomic"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/nfsroot"
)

// firstWrites notes, for the boot timeline, the first call that changed a board's root
// after each mount: the point where its system is running and writing (or, when it never
// comes, where a boot stopped between mounting and starting up).
type firstWrites struct {
	pending sync.Map // board name -> *atomic.Bool, false until the board writes after its mount
}

// mounted arms the board's next first write.
func (f *firstWrites) mounted(board string) {
	f.pending.Store(board, new(atomic.Bool))
}

// wrote reports whether c is the board's first successful change since its mount.
func (f *firstWrites) wrote(c nfsroot.Call) bool {
	if c.Board == "" || c.ProgramName() != "nfs" || c.Accept != 0 || c.Status != 0 {
		return false
	}
	switch c.ProcName() {
	case "setattr", "write", "create", "mkdir", "symlink", "mknod", "remove", "rmdir", "rename", "link":
	default:
		return false
	}
	done, ok := f.pending.Load(c.Board)
	return ok && done.(*atomic.Bool).CompareAndSwap(false, true)
}

// observeCall is nfsroot's Observer: the metrics see every call, the timeline a board's
// first write after its mount.
func (s *Server) observeCall(c nfsroot.Call) {
	s.metrics.observeCall(c)
	if s.nfsTrace != nil {
		s.nfsTrace.record(c)
	}
	if s.writes.wrote(c) {
		s.timeline.Record(boot.Event{Board: c.Board, Stage: boot.StageNFS, What: "first write", File: c.ProcName()})
	}
}
