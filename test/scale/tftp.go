package scale

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// TFTP opcodes.
const (
	opRRQ   = 1
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// tftpRetry is the board's retransmission timeout for an RRQ or an ACK.
const tftpRetry = time.Second

// blksize is what Pi 4 EEPROMs since late 2022 ask for.
const blksize = 1468

// pause is a board's think time. time.Sleep rounds sub-millisecond waits up to the
// netpoller's millisecond when the process is otherwise idle; nanosleep(2) keeps close
// to the asked time (plus the kernel's timer slack, 50 µs by default).
func pause(d time.Duration) {
	if d <= 0 {
		return
	}
	ts := unix.NsecToTimespec(d.Nanoseconds())
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}

// tftpErr is an ERROR packet from the server.
type tftpErr struct {
	code uint16
	msg  string
}

func (e *tftpErr) Error() string { return fmt.Sprintf("TFTP error %d: %s", e.code, e.msg) }

// tftpGet fetches name as a Pi 4 does (octet, tsize 0, blksize 1468), answering each
// DATA after delay. A probe reads the first block and ends with "Early terminate". It
// returns the bytes received and the retransmissions made.
func (b *board) tftpGet(conn *net.UDPConn, server netip.AddrPort, name string, probe bool, delay time.Duration) (int64, int, error) {
	req := []byte{0, opRRQ}
	for _, s := range []string{name, "octet", "tsize", "0", "blksize", strconv.Itoa(blksize)} {
		req = append(append(req, s...), 0)
	}
	buf := make([]byte, 65536)
	retries := 0
	var peer *net.UDPAddr
	last := req // what to send again on a timeout
	dst := net.UDPAddrFromAddrPort(server)
	send := func() error {
		_, err := conn.WriteToUDP(last, dst)
		return err
	}
	if err := send(); err != nil {
		return 0, retries, fmt.Errorf("RRQ %s: %w", name, err)
	}
	var got int64
	tsize := int64(-1)
	size := 512
	next := uint16(1)
	for tries, packets := 0, 0; ; packets++ {
		if packets > 1<<22 {
			return got, retries, fmt.Errorf("%s: more than %d packets", name, 1<<22)
		}
		_ = conn.SetReadDeadline(time.Now().Add(tftpRetry))
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return got, retries, fmt.Errorf("%s: %w", name, err)
			}
			if tries++; tries >= maxTries {
				return got, retries, fmt.Errorf("%s: no answer after %d sends (block %d)", name, tries, next)
			}
			retries++
			if err := send(); err != nil {
				return got, retries, fmt.Errorf("%s: %w", name, err)
			}
			continue
		}
		if n < 4 || !from.IP.Equal(dst.IP) {
			continue
		}
		if peer == nil {
			peer = from
			dst = from
		} else if from.Port != peer.Port {
			continue
		}
		pkt := buf[:n]
		switch binary.BigEndian.Uint16(pkt) {
		case opERROR:
			msg, _, _ := bytes.Cut(pkt[4:], []byte{0})
			return got, retries, fmt.Errorf("%s: %w", name, &tftpErr{code: binary.BigEndian.Uint16(pkt[2:]), msg: string(msg)})
		case opOACK:
			if next != 1 || got > 0 {
				continue
			}
			opts := bytes.Split(bytes.TrimSuffix(pkt[2:], []byte{0}), []byte{0})
			for i := 0; i+1 < len(opts); i += 2 {
				v, _ := strconv.Atoi(string(opts[i+1]))
				switch string(bytes.ToLower(opts[i])) {
				case "blksize":
					size = v
				case "tsize":
					tsize = int64(v)
				}
			}
			tries = 0
			pause(delay)
			last = []byte{0, opACK, 0, 0}
			if err := send(); err != nil {
				return got, retries, fmt.Errorf("%s: %w", name, err)
			}
		case opDATA:
			block := binary.BigEndian.Uint16(pkt[2:])
			if block != next {
				continue // a duplicate; our ACK for it is already sent (or will be resent)
			}
			tries = 0
			data := len(pkt) - 4
			got += int64(data)
			next++
			pause(delay)
			if probe {
				last = append([]byte{0, opERROR, 0, 0}, "Early terminate\x00"...)
				err := send()
				return got, retries, err
			}
			last = []byte{0, opACK, byte(block >> 8), byte(block)}
			if err := send(); err != nil {
				return got, retries, fmt.Errorf("%s: %w", name, err)
			}
			if data < size {
				if tsize >= 0 && got != tsize {
					return got, retries, fmt.Errorf("%s: got %d bytes, tsize said %d", name, got, tsize)
				}
				return got, retries, nil
			}
		}
	}
}
