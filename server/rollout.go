package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/pifleet/pifleet/boot"
)

// Rolling an image out (and back): a board's image changes in fleet.yaml (its own image:,
// its group's, or the defaults'), and the board takes the new stack of lowers at its next
// boot, never under a mounted root. Its upper stays: its changes shadow the new image
// like a rebased container layer.
//
// On a reload, a board whose lowers change switches at once unless it has its root
// mounted (nfsroot.Server.Mounted, the check a reset makes; in the first minutes after a
// start, also a board whose last boot mounted its root: mayBeMounted). A mounted board
// keeps its running stack and is pending; it switches at the first of:
//   - its first read of its firmware tree over TFTP in a new boot, before the file is
//     opened: the boot's first such read after its bootloader's DHCP (the timeline starts
//     a boot there), or after its last boot had mounted its root (a board whose DHCP
//     pifleet does not see), or after boot.BootGap of silence. Every Pi and U-Boot board reads its firmware from pifleet
//     first, so firmware, config.txt, kernel and root of that boot all come from the new
//     image. A read is honoured only from the board's own address (on the evidence
//     boot.Fleet requires), so only a host that can pass for the board can make it switch;
//     the DHCP DISCOVER itself is not a switch point, as anyone can put the board's MAC
//     in one;
//   - it no longer counts as mounted (it unmounted, or it has been silent for five
//     minutes: powered off); the server's housekeeping checks every second.
//
// An NFS MOUNT is not a switch point: by then the board's kernel and config.txt came
// from the stack it runs, and a MOUNT may come from a board that is running.
// The switch replaces the board's export; nfsroot fences it, so the calls running on
// the old stack finish before the new one is in place (as a reset does). Handles of the
// board's own (upper) files stay valid; one of an image file that is not the same file in
// the new stack answers STALE (nfsroot checks the FileID at the path), never another file.
//
// The stack a board runs is recorded in boards/<board>/image.json with the one it ran
// before its last switch: `board diff --conflicts` compares them, and a restarted server
// opens a board on the stack it ran (pending the new one) rather than switching it under
// a system that may have kept running across the restart.

// imageStack is an image by name and the dirs of its layers, topmost first (without the
// board's identity layer, which tops every board's lowers).
type imageStack struct {
	Image  string   `json:"image"`
	Layers []string `json:"layers"`
}

func (a imageStack) same(b imageStack) bool { return slices.Equal(a.Layers, b.Layers) }

// imageRecord is boards/<board>/image.json.
type imageRecord struct {
	imageStack
	// Previous is what the board ran before its last switch (nil: it never switched).
	Previous *imageStack `json:"previous,omitempty"`
	Switched time.Time   `json:"switched,omitzero"`
}

// restartGrace is how long after a start a board whose last boot mounted its root counts
// as mounted although it shows no sign of it yet: its system may have kept running
// across the restart and not have called since. It matches nfsroot's idle time for a
// mount.
const restartGrace = 5 * time.Minute

// mayBeMounted is the "not mounted" test of a switch: nfsroot sees a mount (as a reset
// checks), or the server started less than restartGrace ago and the board's last boot
// had mounted its root.
func (s *Server) mayBeMounted(name string) bool {
	if s.nfs.Mounted(name) {
		return true
	}
	if time.Since(s.started) >= restartGrace {
		return false
	}
	last, boots := s.timeline.Last(name)
	return boots > 0 && last.Mounted()
}

func readImageRecord(st State, board string) (imageRecord, bool) {
	var r imageRecord
	data, err := os.ReadFile(st.ImageRecord(board))
	if err != nil || json.Unmarshal(data, &r) != nil || len(r.Layers) == 0 {
		return imageRecord{}, false
	}
	return r, true
}

// layersExist reports whether every layer dir is still there (an image removed from
// the store while a board ran it is not brought back).
func layersExist(layers []string) bool {
	for _, l := range layers {
		if fi, err := os.Stat(l); err != nil || !fi.IsDir() {
			return false
		}
	}
	return len(layers) > 0
}

// recordImages writes the image record of every board of snap whose running stack is
// not the one recorded: the previous one becomes Previous.
func (s *Server) recordImages(snap *snapshot) {
	for name, rt := range snap.boards {
		rec, ok := readImageRecord(s.state, name)
		if ok && rec.same(rt.run) {
			continue
		}
		next := imageRecord{imageStack: rt.run}
		if ok {
			prev := rec.imageStack
			next.Previous, next.Switched = &prev, time.Now().UTC()
		}
		data, _ := json.MarshalIndent(next, "", "  ")
		if err := writeFileAtomic(s.state.ImageRecord(name), append(data, '\n')); err != nil {
			s.log.Warn("cannot record the board's image (board diff --conflicts needs it)", "board", name, "image", rt.run.Image, "err", err)
		}
	}
}

// runningStack decides which stack a board of a new snapshot runs: want (fleet.yaml's)
// unless the board has its root mounted on another stack, which it then keeps, with
// want pending. At start (no previous snapshot) the stack recorded for the board counts
// as the one it runs.
func (s *Server) runningStack(name string, want imageStack, prev *snapshot) (run imageStack, pending *imageStack) {
	if prev != nil {
		old, ok := prev.boards[name]
		if !ok || old.run.same(want) || !s.mayBeMounted(name) {
			return want, nil
		}
		return old.run, &want
	}
	rec, ok := readImageRecord(s.state, name)
	if !ok || rec.same(want) || !layersExist(rec.Layers) {
		return want, nil
	}
	return rec.imageStack, &want
}

// switchRetry is how long the "not mounted" check leaves a board whose switch failed
// (its boot retries at once).
const switchRetry = time.Minute

// switchPending moves a pending board to the stack fleet.yaml gives it. why says what
// made it safe (for the log); retry is false for the periodic check, which leaves a
// board whose switch failed within switchRetry.
func (s *Server) switchPending(name, why string, retry bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := s.fleet.cur.Load()
	rt, ok := snap.boards[name]
	if !ok || rt.pending == nil {
		return
	}
	if at, failed := s.switchFailed[name]; failed && !retry && time.Since(at) < switchRetry {
		return
	}
	nrt, err := s.openBoard(snap.cfg, rt.cfg, *rt.pending)
	if err != nil {
		if s.switchFailed == nil {
			s.switchFailed = map[string]time.Time{}
		}
		s.switchFailed[name] = time.Now()
		s.log.Error("board keeps its image: cannot open the new one", "board", name, "mac", macString(rt.cfg),
			"image", rt.run.Image, "pending", rt.pending.Image, "err", err)
		return
	}
	delete(s.switchFailed, name)
	boards := maps.Clone(snap.boards)
	boards[name] = nrt
	next := newSnapshot(snap.cfg, snap.serverIP, boards)
	s.install(next) // fences the old export: no call runs on the old stack after this
	s.recordImages(next)
	s.log.Info("board switched image", "board", name, "mac", macString(rt.cfg), "image", nrt.run.Image,
		"was", rt.run.Image, "at", why)
}

// switchAtTFTPBoot switches a pending board whose TFTP read starts a new boot (see the
// comment at the top).
func (s *Server) switchAtTFTPBoot(name string) {
	rt, ok := s.fleet.cur.Load().boards[name]
	if !ok || rt.pending == nil || !s.tftpStartsBoot(name) {
		return
	}
	s.switchPending(name, "boot (its first TFTP read of its firmware)", true)
}

// tftpStartsBoot reports whether a read of the board's firmware tree now is the first of
// a boot: the board's last boot (as the timeline counts boots) has mounted its root (the
// board reads its firmware again: it restarted), or was silent for boot.BootGap, or has
// not read from the firmware tree yet (it began with the bootloader's DHCP; files TFTP
// generates without reading the tree, such as U-Boot's boot.scr.uimg, do not count). A
// read in a boot that has read the tree and not mounted is part of that boot: it stays
// on its stack.
func (s *Server) tftpStartsBoot(name string) bool {
	last, boots := s.timeline.Last(name)
	if boots == 0 || last.Mounted() {
		return true
	}
	latest := last.Start
	for _, e := range last.Events {
		if e.Time.After(latest) {
			latest = e.Time
		}
	}
	return time.Since(latest) > boot.BootGap || !s.fwReads.since(name, last.Start)
}

// firmwareReads remembers when each board last read its firmware tree over TFTP.
type firmwareReads struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (f *firmwareReads) note(board string, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last == nil {
		f.last = map[string]time.Time{}
	}
	f.last[board] = at
}

// since reports a read at or after t.
func (f *firmwareReads) since(board string, t time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.last[board]
	return ok && !at.Before(t)
}

// forget drops a board (removed from the fleet).
func (f *firmwareReads) forget(board string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.last, board)
}

// switchUnmounted switches the pending boards that no longer count as mounted. The
// server's housekeeping calls it every second.
func (s *Server) switchUnmounted() {
	for name, rt := range s.fleet.cur.Load().boards {
		if rt.pending == nil || s.mayBeMounted(name) {
			continue
		}
		s.switchPending(name, "not mounted", false)
	}
}

// firmwareFS is a board's /boot/firmware for TFTP: a read that starts a new boot
// switches a pending board first, and every file comes from the stack the board runs
// at that moment.
type firmwareFS struct {
	s     *Server
	board string
	own   fs.FS // the firmware of the boardRT it was made for
}

// Open implements fs.FS.
func (f *firmwareFS) Open(name string) (fs.File, error) {
	f.s.switchAtTFTPBoot(f.board)
	f.s.fwReads.note(f.board, time.Now())
	if rt, ok := f.s.fleet.cur.Load().boards[f.board]; ok {
		return rt.fs.IOFS("boot/firmware").Open(name)
	}
	return f.own.Open(name)
}

// stacks returns the stacks `board diff --conflicts` compares for a board: old is what
// it runs (pending a switch) or ran before its last switch; new is what it will run or
// runs now.
func (s *Server) stacks(name string) (old, new imageStack, pending bool, err error) {
	rt, ok := s.fleet.cur.Load().boards[name]
	if !ok {
		return old, new, false, fmt.Errorf("board %s: not in the fleet", name)
	}
	if rt.pending != nil {
		return rt.run, *rt.pending, true, nil
	}
	rec, ok := readImageRecord(s.state, name)
	if !ok || rec.Previous == nil || !rec.same(rt.run) {
		return old, new, false, fmt.Errorf("board %s: %w: it runs image %s", name, ErrNoSwitch, rt.run.Image)
	}
	if !layersExist(rec.Previous.Layers) {
		return old, new, false, fmt.Errorf("board %s: the image it ran before, %s, is no longer there (removed from the store?): nothing to compare", name, rec.Previous.Image)
	}
	return *rec.Previous, rt.run, false, nil
}

// ErrNoSwitch: `board diff --conflicts` of a board that has no image switch pending
// and never switched.
var ErrNoSwitch = errors.New("no image switch to compare (change its image in fleet.yaml first)")

// Conflicts lists what the board changed that its image changed too, between the stack
// it ran and the one it runs (or, pending, between the one it runs and the one it will
// run): see ImageConflicts.
func (s *Server) Conflicts(name string) (Conflict, error) {
	old, new, pending, err := s.stacks(name)
	if err != nil {
		return Conflict{}, err
	}
	c, err := boardConflicts(s.state, name, old, new)
	c.Pending = pending
	return c, err
}

// Conflict is the answer of `board diff --conflicts`.
type Conflict struct {
	From    string   `json:"from"`    // the image the board ran (or runs, pending)
	To      string   `json:"to"`      // the image it runs (or will run)
	Pending bool     `json:"pending"` // the switch has not happened yet
	Changes []Change `json:"changes"` // the board's changes that the image changed too
}

func boardConflicts(st State, name string, old, new imageStack) (Conflict, error) {
	oldLowers, newLowers := old.Layers, new.Layers
	if id := st.Identity(name); layersExist([]string{id}) { // made at the board's first start
		oldLowers, newLowers = append([]string{id}, oldLowers...), append([]string{id}, newLowers...)
	}
	ch, err := ImageConflicts(st.Upper(name), oldLowers, newLowers)
	if err != nil {
		return Conflict{}, fmt.Errorf("board %s: conflicts %s -> %s: %w", name, old.Image, new.Image, err)
	}
	return Conflict{From: old.Image, To: new.Image, Changes: ch}, nil
}

// ImageUsers lists the boards of cfg that use image: fleet.yaml gives it to them, or
// they still run it (their image record, read from the state dir: a board pending a
// switch away from it). `image rm` refuses while there are any.
func ImageUsers(cfg *Config, image string) []string {
	st := State{Dir: cfg.Server.State}
	var out []string
	for _, b := range cfg.Boards {
		if rec, ok := readImageRecord(st, b.Name); b.Image == image || ok && rec.Image == image {
			out = append(out, b.Name)
		}
	}
	return out
}
