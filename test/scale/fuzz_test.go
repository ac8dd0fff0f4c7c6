package scale

import (
	"bytes"
	"testing"
)

// FuzzReplies feeds arbitrary bytes to the simulator's parsers of server replies (DHCP
// options, XDR results): a broken server must make a board fail, never the simulator panic.
func FuzzReplies(f *testing.F) {
	f.Add(append(make([]byte, 240), 53, 1, 2, 43, 3, 'a', 'b', 'c', 255))
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o', 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		options(b)
		msgType(b)
		d := &dec{b: b}
		d.postOpAttr()
		d.opaque()
		d.wccData()
		d.fattr3()
		d.u64()
		if d.err == nil && len(d.b) > len(b) {
			t.Fatal("decoder grew its input")
		}
	})
}

// FuzzTrace feeds arbitrary bytes to the trace parsers: the text trace, and the server's
// raw capture with its conversion (replies decoded as the converter does).
func FuzzTrace(f *testing.F) {
	f.Add([]byte(traceMagic + "\nd /etc 755\nf /etc/fstab 644 139 r\nl /bin usr/bin\nlookup 0 /etc\nread 0 /etc/fstab 000000000000000000001000\n"))
	f.Add([]byte(traceMagic + "\nrename 0 /a \"/b c\"\nwrite 0 /x 00\n"))
	f.Add([]byte{0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0x86, 0xa5, 0, 0, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if tr, err := parseTrace(bytes.NewReader(b)); err == nil && tr.Steps() == 0 {
			t.Fatal("a trace without calls parsed")
		}
		calls, err := readRawTrace(bytes.NewReader(b))
		if err == nil {
			convertTrace(calls, "board1", 0)
		}
	})
}
