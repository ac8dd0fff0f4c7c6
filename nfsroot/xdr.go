package nfsroot

import (
	"encoding/binary"
	"errors"
)

// errShort and errTooLong are the only ways a decode fails: the argument ran past the end of
// its record, or declared a length larger than the protocol allows for that field.
var (
	errShort   = errors.New("xdr: argument runs past the end of the record")
	errTooLong = errors.New("xdr: declared length over the limit")
)

// xdrReader decodes XDR from one received record. It never allocates for variable-length
// fields (they are sub-slices of the record) and every length is checked against both the
// field's limit and what is left, so a hostile length cannot cost memory. The first error
// sticks; callers check err once at the end.
type xdrReader struct {
	b   []byte
	err error
}

func (r *xdrReader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.b = nil
}

func (r *xdrReader) u32() uint32 {
	if len(r.b) < 4 {
		r.fail(errShort)
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *xdrReader) u64() uint64 {
	if len(r.b) < 8 {
		r.fail(errShort)
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *xdrReader) bool() bool { return r.u32() != 0 }

// fixed returns the next n bytes (plus XDR padding skipped).
func (r *xdrReader) fixed(n int) []byte {
	padded := (n + 3) &^ 3
	if n < 0 || len(r.b) < padded {
		r.fail(errShort)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[padded:]
	return v
}

// opaque returns a variable-length opaque of at most max bytes.
func (r *xdrReader) opaque(max int) []byte {
	n := r.u32()
	if r.err != nil {
		return nil
	}
	if n > uint32(max) {
		r.fail(errTooLong)
		return nil
	}
	return r.fixed(int(n))
}

func (r *xdrReader) str(max int) string { return string(r.opaque(max)) }

// xdrWriter appends XDR to a byte slice; it cannot fail. A spliced READ reply's data is
// not in b but in data (splice.go), which finish counts in the record mark.
type xdrWriter struct {
	b    []byte
	data *pipe
}

func (w *xdrWriter) u32(v uint32) { w.b = binary.BigEndian.AppendUint32(w.b, v) }
func (w *xdrWriter) u64(v uint64) { w.b = binary.BigEndian.AppendUint64(w.b, v) }
func (w *xdrWriter) bool(v bool) {
	if v {
		w.u32(1)
	} else {
		w.u32(0)
	}
}

func (w *xdrWriter) fixed(p []byte) {
	w.b = append(w.b, p...)
	for i := len(p); i%4 != 0; i++ {
		w.b = append(w.b, 0)
	}
}

func (w *xdrWriter) opaque(p []byte) {
	w.u32(uint32(len(p)))
	w.fixed(p)
}

func (w *xdrWriter) str(s string) {
	w.u32(uint32(len(s)))
	w.b = append(w.b, s...)
	for i := len(s); i%4 != 0; i++ {
		w.b = append(w.b, 0)
	}
}
