package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pifleet/pifleet/boot"
)

// Board histories and the unknown-client table survive restarts in the state dir
// (State.BoardHistory, State.UnknownClients), one JSON-lines file each:
//
//	{"pifleet_history":1}                 header: format version
//	{"boot":{"start":...,"events":[...]}} one line per boot, oldest first
//	{"event":{...}}                       one line per board event (reset)
//
// and for the unknown clients a header {"pifleet_unknown":1} and one client per line.
// A file is replaced atomically (temporary file, fsync, rename, fsync of the dir), so a
// crash leaves the old or the new one. Writes are batched: what changed is written at
// most every historyFlush and at shutdown, never per event (a boot is dozens of TFTP
// events). A damaged file is read up to what can be read: a bad line is skipped, a
// truncated last line dropped, and the damage logged.

// historyFlush is how often changed histories are written.
const historyFlush = 5 * time.Second

// historyMaxLine bounds one line of a history file: a boot at MaxEventsPerBoot events is
// well under it; a longer line is damage and skipped without being held in memory.
const historyMaxLine = 1 << 20

// historyMaxFile bounds how much of a history file is read.
const historyMaxFile = 16 << 20

const (
	historyVersion = 1
	unknownVersion = 1
)

type historyLine struct {
	Version *int        `json:"pifleet_history,omitempty"`
	Boot    *boot.Boot  `json:"boot,omitempty"`
	Event   *boot.Event `json:"event,omitempty"`
}

type unknownHeader struct {
	Version int `json:"pifleet_unknown"`
}

// encodeHistory renders h as a history file.
func encodeHistory(h boot.History) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	v := historyVersion
	enc.Encode(historyLine{Version: &v})
	for i := range h.Boots {
		enc.Encode(historyLine{Boot: &h.Boots[i]})
	}
	for i := range h.Events {
		enc.Encode(historyLine{Event: &h.Events[i]})
	}
	return buf.Bytes()
}

// decodeHistory reads a history file, keeping every line it can read. bad counts the
// lines it could not.
func decodeHistory(r io.Reader) (h boot.History, bad int) {
	eachLine(r, func(line []byte) {
		var l historyLine
		switch {
		case json.Unmarshal(line, &l) != nil:
			bad++
		case l.Version != nil:
			if *l.Version != historyVersion {
				bad++
			}
		case l.Boot != nil && !l.Boot.Start.IsZero():
			h.Boots = append(h.Boots, *l.Boot)
		case l.Event != nil && l.Event.Stage != "":
			h.Events = append(h.Events, *l.Event)
		default:
			bad++
		}
	}, &bad)
	return h, bad
}

func encodeUnknown(us []boot.Unknown) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.Encode(unknownHeader{Version: unknownVersion})
	for _, u := range us {
		enc.Encode(u)
	}
	return buf.Bytes()
}

func decodeUnknown(r io.Reader) (us []boot.Unknown, bad int) {
	eachLine(r, func(line []byte) {
		var u boot.Unknown
		var hdr unknownHeader
		if json.Unmarshal(line, &hdr) == nil && hdr.Version != 0 {
			if hdr.Version != unknownVersion {
				bad++
			}
			return
		}
		if json.Unmarshal(line, &u) != nil || (u.MAC == "" && !u.IP.IsValid()) || len(us) >= boot.MaxUnknown*2 {
			bad++
			return
		}
		us = append(us, u)
	}, &bad)
	return us, bad
}

// eachLine calls fn with each complete line of r, up to historyMaxFile bytes. A line
// longer than historyMaxLine, or a last line without its newline (a torn write), counts
// as bad.
func eachLine(r io.Reader, fn func([]byte), bad *int) {
	br := bufio.NewReader(io.LimitReader(r, historyMaxFile))
	var line []byte
	tooLong := false
	for {
		chunk, err := br.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > historyMaxLine {
				tooLong, line = true, line[:0]
			} else {
				line = append(line, chunk...)
			}
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err != nil:
			if len(line) > 0 || tooLong {
				*bad++
			}
			return
		}
		if tooLong {
			*bad++
		} else if l := bytes.TrimSpace(line); len(l) > 0 {
			fn(l)
		}
		line, tooLong = line[:0], false
	}
}

// loadHistory reads the histories of cfg's boards and the unknown clients into the
// timeline. Files of boards no longer in the fleet are removed, as a reload forgets a
// removed board. Nothing here stops the server: a damaged file is logged and what could
// be read is kept.
func (s *Server) loadHistory(cfg *Config) {
	inFleet := map[string]bool{}
	for _, b := range cfg.Boards {
		inFleet[b.Name] = true
		h, bad, err := readHistory(s.state.BoardHistory(b.Name))
		if err != nil {
			s.log.Warn("board history unreadable; starting it afresh", "board", b.Name, "mac", b.MAC.String(), "err", err)
			continue
		}
		if bad > 0 {
			s.log.Warn("board history damaged; kept what could be read", "board", b.Name, "mac", b.MAC.String(),
				"file", s.state.BoardHistory(b.Name), "boots", len(h.Boots), "skipped_lines", bad)
		}
		if len(h.Boots)+len(h.Events) > 0 {
			s.timeline.Restore(b.Name, h)
		}
	}
	for _, dir := range []string{s.state.Histories(), filepath.Dir(s.state.UnknownClients())} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			name, ok := strings.CutSuffix(e.Name(), historyExt)
			// A removed board's history goes; so does a temporary file a crash left.
			if (ok && dir == s.state.Histories() && !inFleet[name]) || strings.HasPrefix(e.Name(), ".tmp-") {
				os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	f, err := os.Open(s.state.UnknownClients())
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		s.log.Warn("unknown clients unreadable; starting the list afresh", "err", err)
		return
	}
	defer f.Close()
	us, bad := decodeUnknown(f)
	if bad > 0 {
		s.log.Warn("unknown clients file damaged; kept what could be read", "file", s.state.UnknownClients(), "clients", len(us), "skipped_lines", bad)
	}
	s.timeline.RestoreUnknown(us)
}

func readHistory(path string) (boot.History, int, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return boot.History{}, 0, nil
	}
	if err != nil {
		return boot.History{}, 0, err
	}
	defer f.Close()
	h, bad := decodeHistory(f)
	return h, bad, nil
}

// flushHistory writes what changed since the last flush. A failed write is logged and
// retried at the next flush.
func (s *Server) flushHistory() {
	s.histMu.Lock()
	defer s.histMu.Unlock()
	boards, unknown := s.timeline.TakeDirty()
	var failed []string
	for _, b := range boards {
		h := s.timeline.History(b)
		var err error
		if len(h.Boots)+len(h.Events) == 0 {
			err = os.Remove(s.state.BoardHistory(b))
			if errors.Is(err, fs.ErrNotExist) {
				err = nil
			}
		} else {
			err = writeFileAtomic(s.state.BoardHistory(b), encodeHistory(h))
		}
		if err != nil {
			failed = append(failed, b)
			s.log.Warn("cannot save the board's history; will retry", "board", b, "err", err)
		}
	}
	if unknown {
		if err := writeFileAtomic(s.state.UnknownClients(), encodeUnknown(s.timeline.Unknowns())); err != nil {
			s.log.Warn("cannot save the unknown clients; will retry", "err", err)
		} else {
			unknown = false
			syncDir(filepath.Dir(s.state.UnknownClients()))
		}
	}
	if len(boards) > 0 {
		syncDir(s.state.Histories())
	}
	if len(failed) > 0 || unknown {
		s.timeline.MarkDirty(failed, unknown)
	}
}

// keepHistory writes changed histories every historyFlush until ctx ends (serve writes
// the last changes once every service has stopped).
func (s *Server) keepHistory(ctx context.Context) error {
	tick := time.NewTicker(historyFlush)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			s.flushHistory()
		}
	}
}

// recordOffline adds a board event to the board's history file straight in the state
// dir, for an operation done while no server runs (the caller holds the state lock).
func recordOffline(st State, e boot.Event, log *slog.Logger) error {
	h, bad, err := readHistory(st.BoardHistory(e.Board))
	if err != nil {
		return fmt.Errorf("board %s: history: %w", e.Board, err)
	}
	if bad > 0 {
		log.Warn("board history damaged; kept what could be read", "board", e.Board, "skipped_lines", bad)
	}
	tl := boot.NewTimeline()
	tl.Restore(e.Board, h)
	tl.Record(e)
	if err := writeFileAtomic(st.BoardHistory(e.Board), encodeHistory(tl.History(e.Board))); err != nil {
		return fmt.Errorf("board %s: history: %w", e.Board, err)
	}
	return syncDir(st.Histories())
}
