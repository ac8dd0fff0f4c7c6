package tftp

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
)

// everyAddr is a fleet in which every loopback address is board b's, so that each
// request of a burst from many addresses becomes a transfer that holds its slot.
type everyAddr struct {
	*boottest.Fleet
	b *boot.Board
}

func (f everyAddr) BoardByIP(ip netip.Addr) (*boot.Board, bool) { return f.b, ip.IsLoopback() }
func (f everyAddr) Bind(ip netip.Addr, _ net.HardwareAddr) (*boot.Board, bool) {
	return f.BoardByIP(ip)
}

// TestBurst (issue 13.10): 2,000 RRQs sent at once, none acknowledged, so every
// admitted transfer holds its slot. Every one is answered: DATA for the first
// MaxTransfers (at most MaxPerClient per address), "too many transfers" for the rest;
// none is lost in the port-69 socket's receive buffer.
func TestBurst(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, _, logs := startServer(t, everyAddr{fleet, a}, Config{Timeout: 10 * time.Second})
	server := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: serverPort(s)}
	type client struct {
		c    *net.UDPConn
		addr string
	}
	var clients []client
	for range 20 { // one address over its cap
		clients = append(clients, client{rawConn(t, "127.0.1.1"), "127.0.1.1"})
	}
	for i := range 1980 { // then 495 addresses, 4 each
		addr := fmt.Sprintf("127.2.%d.%d", i/4/200, i/4%200+1)
		clients = append(clients, client{rawConn(t, addr), addr})
	}
	req := rrq(opRRQ, "exactly-1468", "octet")
	for _, c := range clients {
		if _, err := c.c.WriteToUDP(req, server); err != nil {
			t.Fatal(err)
		}
	}
	var data, tooMany, other, silent int
	perAddr := map[string]int{}
	deadline := time.Now().Add(10 * time.Second) // one for all: a lost RRQ costs no more
	buf := make([]byte, 1500)
	for _, c := range clients {
		c.c.SetReadDeadline(deadline)
		n, err := c.c.Read(buf)
		p := buf[:n]
		switch {
		case err != nil:
			silent++
		case len(p) == 4+512 && binary.BigEndian.Uint16(p) == opDATA:
			data++
			perAddr[c.addr]++
		case len(p) > 4 && binary.BigEndian.Uint16(p) == opERROR && strings.Contains(string(p[4:]), "too many transfers"):
			tooMany++
		default:
			other++
		}
	}
	if data != DefaultMaxTransfers || tooMany != len(clients)-DefaultMaxTransfers || other+silent != 0 {
		t.Errorf("%d RRQs: %d DATA, %d too many, %d other, %d unanswered; want %d DATA and the rest refused",
			len(clients), data, tooMany, other, silent, DefaultMaxTransfers)
	}
	if perAddr["127.0.1.1"] != DefaultMaxPerClient {
		t.Errorf("one address got %d transfers at once, want %d", perAddr["127.0.1.1"], DefaultMaxPerClient)
	}
	if st := s.Stats(); st.OverCap != int64(tooMany) {
		t.Errorf("stats count %d over the cap, %d were refused", st.OverCap, tooMany)
	}
	// Logged, but per client address and bounded: 12 lines for 127.0.1.1 at most, 1
	// for each of the others at most.
	if n := strings.Count(logs.String(), "too many transfers"); n == 0 || n > tooMany {
		t.Errorf("%d log lines for %d refusals", n, tooMany)
	}
}

// TestTimeoutClamp: a client may not make a stalled transfer last minutes. Its timeout
// option above MaxClientTimeout is not granted (RFC 2349 lets a server ignore it, not
// change it): no OACK, and DATA 1 is resent on the server's own timeout.
func TestTimeoutClamp(t *testing.T) {
	fleet, _, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{})
	c := rawConn(t, "127.0.0.1")
	server := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: serverPort(s)}
	c.WriteToUDP(rrq(opRRQ, "exactly-1468", "octet", "timeout", "255"), server)
	first, _, err := readPacket(t, c, 5*time.Second)
	if err != nil || binary.BigEndian.Uint16(first) != opDATA {
		t.Fatalf("timeout 255: got %q, %v; want DATA 1 (option not granted)", first, err)
	}
	again, _, err := readPacket(t, c, 5*time.Second) // 1 s, not 255 s
	if err != nil || string(again) != string(first) {
		t.Errorf("no resend of DATA 1 within 5 s: %v", err)
	}
	if _, oack, err := rawGet(t, "127.0.0.1", serverPort(s), "exactly-1468", "timeout", "5"); err != nil || oack["timeout"] != "5" {
		t.Errorf("timeout 5 (U-Boot's): OACK %v, %v", oack, err)
	}
	if got := negotiate([]option{{"timeout", "6"}}, 1468, 10, time.Second); got.timeout != time.Second || len(got.oack) != 0 {
		t.Errorf("timeout 6: %+v, want not granted", got)
	}
}

// TestClientStartsOver (issue 12.6): a client that acknowledged part of a file asks for
// it again from the same port (U-Boot after a reset picks its port from a timer and can
// pick the same one; a board reset mid-file). That is a new transfer, answered at once
// from a new TID, not a retransmitted RRQ to be ignored until the old transfer's
// retries run out; the old transfer stops sending.
func TestClientStartsOver(t *testing.T) {
	fleet, a, _ := twoBoards(t)
	s, _, _ := startServer(t, fleet, Config{Timeout: 10 * time.Second})
	c := rawConn(t, "127.0.0.1")
	server := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: serverPort(s)}
	req := rrq(opRRQ, "exactly-1468", "octet", "timeout", "5")
	c.WriteToUDP(req, server)
	p, old, err := readPacket(t, c, 5*time.Second) // OACK
	if err != nil || binary.BigEndian.Uint16(p) != opOACK {
		t.Fatalf("OACK: %q, %v", p, err)
	}
	c.WriteToUDP(ack(0), old)
	if p, _, err = readPacket(t, c, 5*time.Second); err != nil || binary.BigEndian.Uint16(p[2:]) != 1 {
		t.Fatalf("DATA 1: %q, %v", p, err)
	}
	c.WriteToUDP(ack(1), old)
	if p, _, err = readPacket(t, c, 5*time.Second); err != nil || binary.BigEndian.Uint16(p[2:]) != 2 {
		t.Fatalf("DATA 2: %q, %v", p, err)
	}
	// The board resets here and asks again from the same port (a reset takes seconds;
	// a repeat within restartGap of the first ACK is taken for a retransmission).
	time.Sleep(restartGap + 200*time.Millisecond)
	c.WriteToUDP(req, server)
	p, tid, err := readPacket(t, c, 3*time.Second) // well before the old transfer's 10 s resend
	if err != nil || binary.BigEndian.Uint16(p) != opOACK || tid.Port == old.Port {
		t.Fatalf("the request again after ACKs: %q from %v, %v; want an OACK from a new TID (old %v)", p, tid, err, old)
	}
	var data []byte
	c.WriteToUDP(ack(0), tid)
	for block := uint16(1); ; block++ {
		p, from, err := readPacket(t, c, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if from.Port != tid.Port {
			t.Fatalf("a packet from the old transfer (port %d) after the restart: %q", from.Port, p[:4])
		}
		data = append(data, p[4:]...)
		c.WriteToUDP(ack(block), from)
		if len(p) < 516 {
			break
		}
	}
	if string(data) != string(firmwareFile(t, a, "exactly-1468")) {
		t.Errorf("restarted transfer: %d bytes", len(data))
	}
	if st := waitStats(t, s, func(st Stats) bool { return st.Reads >= 1 }); st.Reads != 1 || st.Errors != 0 {
		t.Errorf("stats %+v: want 1 read and the superseded one not counted as failed", st)
	}
}
