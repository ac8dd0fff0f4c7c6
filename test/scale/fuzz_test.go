package scale

import (
	"bytes"
	"encoding/binary"
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
	f.Add([]byte(traceMagic + "\nd /etc 755 0:0\nf /etc/fstab 644 0:0 139 r\nl /bin 0:0 usr/bin\nd /tmp 1777 0:0\n" +
		"lookup 0 0:0 - /etc\nread 0 100:105:24,27 1 /etc/fstab 000000000000000000001000\ngetacl 0 0:0 1 /tmp 0000000c\n"))
	f.Add([]byte(traceMagic + "\nrename 0 0:0 - /a \"/b c\"\nwrite 0 0:0 1 /x 00\nsetacl 0 1000:1000 2,1 /x 00000001\n"))
	// A raw record (server/nfstrace.go): version 2, arrival, reply, NFS GETATTR, uid 0,
	// gid 0, one group (24), board "b", no arguments, no reply.
	var raw []byte
	for _, v := range []uint32{2, 0, 1, 0, 2, progNFS, 1, 0, 0, 1, 24, 1} {
		raw = binary.BigEndian.AppendUint32(raw, v)
	}
	raw = append(raw, 'b', 0, 0, 0, 0, 0, 0, 0, 0)
	raw = append(binary.BigEndian.AppendUint32(nil, uint32(len(raw))), raw...)
	f.Add(raw)
	f.Add(rawSeed())
	f.Fuzz(func(t *testing.T, b []byte) {
		if tr, err := parseTrace(bytes.NewReader(b)); err == nil && tr.Steps() == 0 {
			t.Fatal("a trace without calls parsed")
		}
		calls, err := readRawTrace(bytes.NewReader(b))
		if err != nil {
			return
		}
		tr, err := convertTrace(calls, "board1", 0)
		if err != nil || tr.Steps() == 0 {
			return
		}
		var buf bytes.Buffer
		if err := tr.Write(&buf); err != nil {
			t.Fatal(err)
		}
		back, err := parseTrace(&buf)
		if err != nil {
			t.Fatalf("a converted trace does not parse back: %v\n%s", err, buf.String())
		}
		if back.Steps() != tr.Steps() || back.MaxInFlight() != tr.MaxInFlight() {
			t.Fatalf("converted trace: %d calls, %d in flight; parsed back %d, %d", tr.Steps(), tr.MaxInFlight(), back.Steps(), back.MaxInFlight())
		}
	})
}

// rawSeed is a raw capture of board1's MNT, then two overlapping GETATTRs of the root by
// uid 1000 and a GETACL answered after them.
func rawSeed() []byte {
	var out []byte
	record := func(arrived, at uint64, prog, proc uint32, board string, args, result []byte) {
		var b []byte
		b = binary.BigEndian.AppendUint32(b, 2)
		b = binary.BigEndian.AppendUint64(b, arrived)
		b = binary.BigEndian.AppendUint64(b, at)
		for _, v := range []uint32{prog, proc, 1000, 1000, 0} {
			b = binary.BigEndian.AppendUint32(b, v)
		}
		reply := make([]byte, 28) // record mark, xid, REPLY, MSG_ACCEPTED, null verifier, SUCCESS
		reply[11] = 1
		reply = append(reply, result...)
		for _, s := range [][]byte{[]byte(board), args, reply} {
			b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
			b = append(b, s...)
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(b)))
		out = append(out, b...)
	}
	var mnt, fh enc
	mnt.str("/boards/board1")
	fh.str("root")
	record(1, 2, progMount, 1, "", mnt.b, append([]byte{0, 0, 0, 0}, fh.b...))
	attr := make([]byte, 4+84)
	attr[7] = nf3Dir
	record(3, 6, progNFS, 1, "board1", fh.b, attr)
	record(4, 5, progNFS, 1, "board1", fh.b, attr)
	record(7, 9, progACL, 1, "board1", append(fh.b, 0, 0, 0, 15), []byte{0, 0, 0, 0})
	return out
}
