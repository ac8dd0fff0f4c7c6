package nfsroot

import (
	"encoding/binary"
	"hash/fnv"
)

// Handle layout (fhSize bytes): "PF", version, reserved, export id, instance id, FileID,
// 4 reserved bytes. The export id routes a handle to its board before any file system work;
// the instance id makes handles from before a board reset STALE instead of naming whatever
// got the same FileID afterwards.
const handleVersion = 1

// exportID names an export across restarts; it depends only on what fleet.yaml says.
func exportID(board, path string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(board))
	h.Write([]byte{0})
	h.Write([]byte(path))
	return h.Sum64()
}

func makeHandle(exp uint64, inst [8]byte, fileID uint64) []byte {
	return appendHandle(make([]byte, 0, fhSize), exp, inst, fileID)
}

func appendHandle(b []byte, exp uint64, inst [8]byte, fileID uint64) []byte {
	b = append(b, 'P', 'F', handleVersion, 0)
	b = binary.BigEndian.AppendUint64(b, exp)
	b = append(b, inst[:]...)
	b = binary.BigEndian.AppendUint64(b, fileID)
	return append(b, 0, 0, 0, 0)
}

// handle writes an export's handle for fileID as an opaque without allocating.
func (w *xdrWriter) handle(e *export, fileID uint64) {
	w.u32(fhSize)
	w.b = appendHandle(w.b, e.id, e.inst, fileID)
}

// parseHandle splits a handle; ok is false for anything not made by makeHandle, including
// a handle whose reserved bytes are not zero (a forgery or a future format: BADHANDLE).
func parseHandle(h []byte) (exp uint64, inst [8]byte, fileID uint64, ok bool) {
	if len(h) != fhSize || h[0] != 'P' || h[1] != 'F' || h[2] != handleVersion || h[3] != 0 ||
		h[28]|h[29]|h[30]|h[31] != 0 {
		return 0, inst, 0, false
	}
	copy(inst[:], h[12:20])
	return binary.BigEndian.Uint64(h[4:]), inst, binary.BigEndian.Uint64(h[20:]), true
}
