package tftp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strings"

	"github.com/pifleet/pifleet/boot"
)

// maxNameLen bounds a requested name. The longest real request is a 32-character
// TFTP_PREFIX plus an overlay path; anything much longer is an attack or a bug.
const maxNameLen = 255

// Resolution failures, each answered with its own TFTP error code (see serveRead).
var (
	// errUnknownClient: neither the name's prefix nor the client's address names a board.
	errUnknownClient = errors.New("client is not in the fleet")
	// errNoSuchBoard: a serial or MAC prefix that no board has. The Pi then drops its
	// prefix, so this is an ordinary "file not found".
	errNoSuchBoard = fmt.Errorf("no board with that prefix: %w", fs.ErrNotExist)
	// errOtherBoard: a board asked for a file under another board's serial or MAC.
	errOtherBoard = errors.New("prefix names another board")
	// errNotBound: a board's prefix from an address that is not bound to any board:
	// its neighbour entry does not show the board's MAC, and it is not the board's
	// fixed IP or lease. Typing a serial is not evidence.
	errNotBound = errors.New("the address is not bound to the board the prefix names")
	// errBadName: a name that could leave the board's tree or is not a plain path.
	errBadName = errors.New("invalid file name")
	// errNotFile: directories, devices and FIFOs are never served (opening a FIFO would
	// block the transfer forever).
	errNotFile = fmt.Errorf("not a regular file: %w", fs.ErrNotExist)
)

// resolve maps a requested name to a board and a path inside that board's /boot/firmware.
// byAddr is the board the client's address is bound to (see Server.identify), or nil.
// "<serial>/x" and "<mac-with-dashes>/x" name a board by prefix, which must be byAddr's:
// a prefix never identifies a client, it only says which folder the client asks for
// (a Pi's TFTP_PREFIX). Any other name is byAddr's. A directory in a board's tree named
// like a serial or MAC is therefore never reachable, as with the Pi firmware's own
// TFTP_PREFIX handling. On errUnknownClient and errBadName the board may be nil;
// otherwise it is the board the request is charged to (for errNotBound, the board the
// prefix names: the refusal shows on its page).
func resolve(fleet boot.Fleet, byAddr *boot.Board, name string) (*boot.Board, string, error) {
	if name == "" || len(name) > maxNameLen || strings.IndexByte(name, 0) >= 0 {
		return nil, "", errBadName
	}
	board, rest := byAddr, name
	if first, after, ok := strings.Cut(name, "/"); ok {
		var byPrefix *boot.Board
		var found, isPrefix bool
		switch {
		case isSerial(first):
			isPrefix = true
			byPrefix, found = fleet.BoardBySerial(strings.ToLower(first))
		case isMACDashes(first):
			isPrefix = true
			mac, err := net.ParseMAC(first)
			if err == nil {
				byPrefix, found = fleet.BoardByMAC(mac)
			}
		}
		if isPrefix {
			rest = after
			switch {
			case !found && byAddr == nil:
				return nil, "", errUnknownClient
			case !found:
				return byAddr, "", errNoSuchBoard
			case byAddr == nil:
				return byPrefix, "", errNotBound
			case byAddr.Name != byPrefix.Name:
				return byAddr, "", errOtherBoard
			}
			board = byPrefix
		}
	}
	if board == nil {
		return nil, "", errUnknownClient
	}
	if rest == "." || !fs.ValidPath(rest) {
		return board, "", errBadName
	}
	return board, rest, nil
}

// isSerial reports whether s looks like a Pi serial prefix: 8 hex digits.
func isSerial(s string) bool {
	if len(s) != 8 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

// isMACDashes reports whether s is a MAC written as six hex pairs joined by dashes, the
// form of the Pi's TFTP_PREFIX=2 and of pxelinux.cfg names.
func isMACDashes(s string) bool {
	if len(s) != 17 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if i%3 == 2 {
			if s[i] != '-' {
				return false
			}
		} else if !isHex(s[i]) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// file is one resolved file, ready to send.
type file struct {
	r    io.Reader
	size int64 // -1 when unknown
	c    io.Closer
}

func (f *file) Close() error {
	if f.c == nil {
		return nil
	}
	return f.c.Close()
}

// open returns the content of path in board b's tree: a generated file, or the file
// from the board's /boot/firmware. Missing files wrap fs.ErrNotExist.
func open(b *boot.Board, path string) (*file, error) {
	if data, ok, err := generate(b, path); err != nil || ok {
		if err != nil {
			return nil, err
		}
		return &file{r: bytes.NewReader(data), size: int64(len(data))}, nil
	}
	if b.Firmware == nil {
		return nil, fmt.Errorf("board %s: no firmware tree: %w", b.Name, fs.ErrNotExist)
	}
	// Stat before Open: opening a FIFO someone left in the tree would block forever.
	fi, err := fs.Stat(b.Firmware, path)
	if err != nil {
		return nil, fmt.Errorf("board %s: %s: %w", b.Name, path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("board %s: %s: %w", b.Name, path, errNotFile)
	}
	f, err := b.Firmware.Open(path)
	if err != nil {
		return nil, fmt.Errorf("board %s: open %s: %w", b.Name, path, err)
	}
	fi, err = f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("board %s: stat %s: %w", b.Name, path, err)
	}
	if !fi.Mode().IsRegular() { // swapped between Stat and Open
		f.Close()
		return nil, fmt.Errorf("board %s: %s: %w", b.Name, path, errNotFile)
	}
	return &file{r: f, size: fi.Size(), c: f}, nil
}

// generate returns the per-board files pifleet writes itself; ok is false for every
// other name, which is then read from the board's tree.
func generate(b *boot.Board, path string) (data []byte, ok bool, err error) {
	switch {
	case path == cmdlineName:
		s, err := Cmdline(b)
		return []byte(s), true, err
	case path == configName:
		if len(b.Config) == 0 {
			return nil, false, nil // the image's own file, streamed as is
		}
		data, _, err := configTxt(b)
		return data, true, err
	case path == bootScriptName:
		return scriptImage("pifleet "+b.Name, bootScript), true, nil
	case strings.HasPrefix(path, pxeDir+"/"):
		// U-Boot walks 01-<mac>, then its address in hex shortened digit by digit,
		// then default-*: only the first exists, the rest must fail fast.
		if len(b.MAC) > 0 && path == pxeDir+"/01-"+macDashes(b) {
			data, err := pxeConfig(b)
			return data, true, err
		}
		return nil, true, fmt.Errorf("board %s: %s: %w", b.Name, path, fs.ErrNotExist)
	}
	return nil, false, nil
}
