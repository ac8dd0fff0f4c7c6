package tftp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// TFTP opcodes (RFC 1350, RFC 2347).
const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// TFTP error codes (RFC 1350).
const (
	errCodeUndefined uint16 = 0
	errCodeNotFound  uint16 = 1
	errCodeAccess    uint16 = 2
	errCodeIllegal   uint16 = 4
)

// Block size limits: RFC 2348 allows 8..65464; 1468 is what a Pi 4/5 asks for and what
// fits a 1500-byte Ethernet frame (20 IP + 8 UDP + 4 TFTP header bytes).
const (
	defaultBlockSize = 512
	maxWireBlockSize = 65464
	minBlockSize     = 8
	// DefaultMaxBlockSize is the largest block size the server grants unless configured.
	DefaultMaxBlockSize = 1468
	// frameOverhead is what a DATA packet adds to its block inside one IP packet.
	frameOverhead = 20 + 8 + 4
)

// request is a parsed RRQ or WRQ.
type request struct {
	op   uint16
	name string
	mode string // lowercase
	opts []option
}

// option is one RFC 2347 option as the client sent it (name lowercased).
type option struct{ name, value string }

// parseRequest decodes an RRQ/WRQ: opcode, then NUL-terminated name, mode and option
// name/value pairs.
func parseRequest(pkt []byte) (request, error) {
	if len(pkt) < 2 {
		return request{}, errors.New("short packet")
	}
	req := request{op: binary.BigEndian.Uint16(pkt)}
	if req.op != opRRQ && req.op != opWRQ {
		return req, fmt.Errorf("opcode %d is not a request", req.op)
	}
	fields := strings.Split(string(pkt[2:]), "\x00")
	// A well-formed request ends in NUL, so the last field is empty.
	if len(fields) < 3 || fields[len(fields)-1] != "" {
		return req, errors.New("request is not NUL-terminated name and mode")
	}
	fields = fields[:len(fields)-1]
	req.name, req.mode = fields[0], strings.ToLower(fields[1])
	for i := 2; i+1 < len(fields); i += 2 {
		req.opts = append(req.opts, option{strings.ToLower(fields[i]), fields[i+1]})
	}
	return req, nil
}

// negotiated is the outcome of option negotiation for one transfer.
type negotiated struct {
	blockSize int
	timeout   time.Duration
	oack      []option // what to acknowledge, in the client's order; empty = no OACK
}

// negotiate accepts the options pifleet supports (RFC 2348 blksize, RFC 2349 timeout and
// tsize) and ignores the rest, as RFC 2347 lets a server do. Options a lock-step Pi
// bootloader cannot follow (windowsize) are never granted.
func negotiate(opts []option, maxBlock int, size int64, timeout time.Duration) negotiated {
	n := negotiated{blockSize: defaultBlockSize, timeout: timeout}
	seen := map[string]bool{}
	for _, o := range opts {
		if seen[o.name] {
			continue
		}
		seen[o.name] = true
		switch o.name {
		case "blksize":
			v, err := strconv.Atoi(o.value)
			if err != nil || v < minBlockSize || v > maxWireBlockSize {
				continue
			}
			n.blockSize = min(v, maxBlock)
			n.oack = append(n.oack, option{o.name, strconv.Itoa(n.blockSize)})
		case "timeout":
			// RFC 2349 lets a server only accept or ignore the value. A long one
			// would let a stalled client hold its transfer for minutes (255 s times
			// the retries): not granted, the server's own timeout applies.
			v, err := strconv.Atoi(o.value)
			if err != nil || v < 1 || time.Duration(v)*time.Second > MaxClientTimeout {
				continue
			}
			n.timeout = time.Duration(v) * time.Second
			n.oack = append(n.oack, option{o.name, o.value})
		case "tsize":
			if size < 0 {
				continue
			}
			n.oack = append(n.oack, option{o.name, strconv.FormatInt(size, 10)})
		}
	}
	return n
}

// clientError is an ERROR packet the client sent in the middle of a transfer.
type clientError struct {
	code uint16
	msg  string
}

func (e *clientError) Error() string {
	return fmt.Sprintf("client sent error %d %q", e.code, e.msg)
}

// earlyTerminate reports whether the client ended the transfer on purpose after the
// first block: the Pi bootloader's way of asking whether a file exists.
func (e *clientError) earlyTerminate() bool {
	return strings.Contains(strings.ToLower(e.msg), "early terminate")
}

// errRetriesExhausted: the client stopped answering.
var errRetriesExhausted = errors.New("no answer from client")

// readChunk is how much of a file one read syscall fetches: a lock-step sender would
// otherwise pay one read per 512..1468-byte block, as much as a send.
const readChunk = 64 << 10

// sender runs the data phase of one read transfer, strictly lock-step (RFC 1350): one
// DATA in flight, the next sent only after its ACK. A Pi bootloader cannot cope with
// anything else. The packet buffer is allocated once per transfer; the block loop
// allocates nothing.
type sender struct {
	sock    *socket
	timeout time.Duration
	retries int
	pkt     []byte // 4-byte header + one block; also holds OACK/ERROR packets
	ack     []byte
	sent    int64
	ackedAt *atomic.Int64 // when the first ACK was taken (Unix ns): the client is past its RRQ; may be nil
}

// run sends the OACK (if any options were granted) and then r in blocks. It returns the
// bytes sent and why it stopped (nil = the last block was acknowledged).
func (s *sender) run(ctx context.Context, r io.Reader, n negotiated) (int64, error) {
	stop := context.AfterFunc(ctx, s.sock.shutdown)
	defer stop()

	if len(n.oack) > 0 {
		l := 2
		binary.BigEndian.PutUint16(s.pkt, opOACK)
		for _, o := range n.oack {
			for _, f := range [2]string{o.name, o.value} {
				l += copy(s.pkt[l:], f)
				s.pkt[l] = 0
				l++
			}
		}
		if err := s.exchange(s.pkt[:l], 0); err != nil {
			return 0, fmt.Errorf("option acknowledgement: %w", err)
		}
	}
	blk := s.pkt[:4+n.blockSize]
	binary.BigEndian.PutUint16(blk, opDATA)
	for block := uint16(1); ; block++ { // wraps past 65535 to 0, as tftp-hpa and curl expect
		l, err := io.ReadFull(r, blk[4:])
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			s.sendError(errCodeUndefined, "read error")
			return s.sent, fmt.Errorf("read block %d: %w", block, err)
		}
		binary.BigEndian.PutUint16(blk[2:], block)
		err = s.exchange(blk[:4+l], block)
		s.sent += int64(l) // sent, if not acknowledged: a probe's first block counts
		if err != nil {
			return s.sent, fmt.Errorf("block %d: %w", block, err)
		}
		if l < n.blockSize {
			return s.sent, nil
		}
	}
}

// exchange sends pkt and waits for the ACK of block want, resending on timeout.
// Duplicate ACKs of earlier blocks are ignored rather than answered, which avoids the
// Sorcerer's Apprentice syndrome (RFC 1123 4.2.3.1).
func (s *sender) exchange(pkt []byte, want uint16) error {
	for try := 0; try <= s.retries; try++ {
		out := pkt             // nil once sent: after a stray packet, keep waiting
		var deadline time.Time // set once a stray packet arrives, so strays cannot stall us
		for {
			n, err := s.sock.roundTrip(out, s.ack, s.timeout)
			out = nil
			if errors.Is(err, errTimeout) {
				break // resend
			}
			if err != nil {
				// Shut down, or ECONNREFUSED: an ICMP port unreachable answered an
				// earlier send, the client is gone.
				return err
			}
			if n >= 4 {
				switch binary.BigEndian.Uint16(s.ack) {
				case opACK:
					if binary.BigEndian.Uint16(s.ack[2:]) == want {
						if s.ackedAt != nil && s.ackedAt.Load() == 0 {
							s.ackedAt.Store(time.Now().UnixNano())
						}
						return nil
					}
				case opERROR:
					msg, _, _ := strings.Cut(string(s.ack[4:n]), "\x00")
					return &clientError{code: binary.BigEndian.Uint16(s.ack[2:]), msg: msg}
				}
			}
			if deadline.IsZero() {
				deadline = time.Now().Add(s.timeout)
			} else if time.Now().After(deadline) {
				break
			}
		}
	}
	return errRetriesExhausted
}

// sendError tells the client why its transfer ends. Best effort: the client may be gone.
func (s *sender) sendError(code uint16, msg string) {
	l := packError(s.pkt, code, msg)
	s.sock.send(s.pkt[:l])
}

// packError writes an ERROR packet into buf (which must hold 5 bytes more than msg).
func packError(buf []byte, code uint16, msg string) int {
	binary.BigEndian.PutUint16(buf, opERROR)
	binary.BigEndian.PutUint16(buf[2:], code)
	l := 4 + copy(buf[4:len(buf)-1], msg)
	buf[l] = 0
	return l + 1
}
