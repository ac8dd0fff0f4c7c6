package nfsroot

import "sync"

// callGate counts the calls running against an export, so that removing the export (a
// board reset, a reload that replaced it) can wait for them: a call that got past its
// handle check before the reset would otherwise go on against the board's upper path
// after it was moved aside, and land in the fresh one.
type callGate struct {
	mu      sync.Mutex
	drained sync.Cond
	calls   int
	fenced  bool
}

// enter counts a call in; false when the export is being removed (the caller looks the
// export up again: it finds the new one or none, so STALE).
func (g *callGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fenced {
		return false
	}
	g.calls++
	return true
}

func (g *callGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.calls--; g.calls == 0 && g.fenced {
		g.drained.Broadcast()
	}
}

// fence lets no new call in and returns once the calls inside have finished. Calls do
// not wait on the network while counted (dispatch leaves before the reply is sent), so
// this waits for the file system at most.
func (g *callGate) fence() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fenced = true
	if g.drained.L == nil {
		g.drained.L = &g.mu
	}
	for g.calls > 0 {
		g.drained.Wait()
	}
}

// waiting reports a fence waiting for calls (tests watch for it).
func (g *callGate) waiting() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fenced && g.calls > 0
}

// hold counts the call h in on export e until dispatch has answered it; false when e is
// being removed.
func (h *rpcCallHdr) hold(e *export) bool {
	if !e.gate.enter() {
		return false
	}
	h.held = append(h.held, e)
	return true
}

// release lets go of the exports the call held.
func (h *rpcCallHdr) release() {
	for _, e := range h.held {
		e.gate.leave()
	}
	h.held = nil
}

// exportByID returns the current export with the given id, counted in for the call; nil
// if there is none. An export being removed is looked up again: by then the new export
// table is in place.
func (s *Server) exportByID(h *rpcCallHdr, id uint64) *export {
	for range 4 {
		e := s.exports.Load().byID[id]
		if e == nil || h.hold(e) {
			return e
		}
	}
	return nil
}
