package scale

import "testing"

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
