package server

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// One `pifleet serve` owns a state dir at a time: it holds an exclusive flock on
// <state>/lock for its whole life, and records in <state>/serve.json how to reach it.
// Offline CLI operations that change the state dir (board reset, image rm, import
// --replace) take the same lock for their duration, so they refuse while a server runs
// and a server cannot start under them. The kernel drops a flock when its holder dies,
// so a crash never leaves the dir locked.

// StateLock is an exclusive hold on a state dir.
type StateLock struct {
	f   *os.File
	dir string
}

// HeldError says who holds a state dir's lock.
type HeldError struct {
	// Dir is the state dir.
	Dir string
	// PID holds the lock (0 if unknown).
	PID int
	// Serve is the running server's record, when the holder is `pifleet serve`.
	Serve *ServeInfo
}

func (e *HeldError) Error() string {
	who := "another pifleet command"
	if e.Serve != nil {
		who = "pifleet serve"
	}
	if e.PID > 0 {
		who += fmt.Sprintf(" (pid %d)", e.PID)
	}
	return fmt.Sprintf("%s holds the state dir %s", who, e.Dir)
}

// ServeInfo is <state>/serve.json: how the CLI reaches the server that holds the lock.
type ServeInfo struct {
	// PID is the server's process id.
	PID int `json:"pid"`
	// HTTP lists the addresses its HTTP API listens on (host:port), loopback first.
	// Empty while the server is still starting.
	HTTP []string `json:"http"`
	// TokenFile holds the bearer token its state-changing API calls need (mode 0600).
	TokenFile string `json:"token_file"`
	// Config is the fleet file the server runs.
	Config string `json:"config"`
}

func lockPath(dir string) string      { return filepath.Join(dir, "lock") }
func serveInfoPath(dir string) string { return filepath.Join(dir, "serve.json") }
func tokenPath(dir string) string     { return filepath.Join(dir, "api-token") }

// LockState takes the state dir's lock (creating the dir if needed) without waiting.
// If it is held, the error is a *HeldError naming the holder.
func LockState(dir string) (*StateLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	f, err := os.OpenFile(lockPath(dir), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("state dir: lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, heldError(dir, f)
		}
		return nil, fmt.Errorf("state dir: lock %s: %w", lockPath(dir), err)
	}
	return &StateLock{f: f, dir: dir}, nil
}

// LockOffline takes the state dir's lock for an offline CLI operation; while a server (or
// another command) holds it, the error says who and what to do.
func LockOffline(dir string) (*StateLock, error) {
	l, err := LockState(dir)
	var held *HeldError
	if errors.As(err, &held) {
		return nil, fmt.Errorf("%w; this works on the state dir directly, so it is refused while the state dir is held: stop pifleet serve first", err)
	}
	return l, err
}

// Release drops the lock.
func (l *StateLock) Release() {
	if l != nil && l.f != nil {
		l.f.Close() // closing the last descriptor drops the flock
		l.f = nil
	}
}

// StateHolder reports whether a process holds dir's lock, and who (a *HeldError), without
// holding it past the call. A dir that does not exist is not held.
func StateHolder(dir string) (*HeldError, error) {
	f, err := os.Open(lockPath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state dir: lock: %w", err)
	}
	defer f.Close()
	// A shared probe: it conflicts with a holder's exclusive lock only.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return heldError(dir, f), nil
		}
		return nil, fmt.Errorf("state dir: lock %s: %w", lockPath(dir), err)
	}
	return nil, nil
}

// heldError describes the holder of the lock on f: its pid from /proc/locks, and the
// server record if that pid is the server's.
func heldError(dir string, f *os.File) *HeldError {
	e := &HeldError{Dir: dir, PID: flockHolder(f)}
	if si, err := ReadServeInfo(dir); err == nil && (e.PID == 0 || si.PID == e.PID) {
		e.Serve = si
		if e.PID == 0 {
			e.PID = si.PID
		}
	}
	return e
}

// flockHolder finds the pid holding a flock on f's file in /proc/locks (0 if unknown).
// Lines look like "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF".
func flockHolder(f *os.File) int {
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil {
		return 0
	}
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	pl, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer pl.Close()
	sc := bufio.NewScanner(pl)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != want || fields[3] != "WRITE" {
			continue
		}
		if pid, err := strconv.Atoi(fields[4]); err == nil {
			return pid
		}
	}
	return 0
}

// ReadServeInfo reads <dir>/serve.json.
func ReadServeInfo(dir string) (*ServeInfo, error) {
	data, err := os.ReadFile(serveInfoPath(dir))
	if err != nil {
		return nil, err
	}
	var si ServeInfo
	if err := json.Unmarshal(data, &si); err != nil {
		return nil, fmt.Errorf("%s: %w", serveInfoPath(dir), err)
	}
	return &si, nil
}

// ReadToken reads the API token file a ServeInfo names.
func (si *ServeInfo) ReadToken() (string, error) {
	data, err := os.ReadFile(si.TokenFile)
	if err != nil {
		return "", fmt.Errorf("the server's API token: %w (state-changing calls need it: run as the user that runs pifleet serve, usually root)", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// writeServeInfo records si in the locked dir (atomically).
func (l *StateLock) writeServeInfo(si ServeInfo) error {
	data, err := json.MarshalIndent(si, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(serveInfoPath(l.dir), append(data, '\n')); err != nil {
		return err
	}
	return os.Chmod(serveInfoPath(l.dir), 0o644) // read-only CLI commands need no privilege
}
