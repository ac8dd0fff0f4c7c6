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
	h := make([]byte, fhSize)
	h[0], h[1], h[2] = 'P', 'F', handleVersion
	binary.BigEndian.PutUint64(h[4:], exp)
	copy(h[12:20], inst[:])
	binary.BigEndian.PutUint64(h[20:], fileID)
	return h
}

// parseHandle splits a handle; ok is false for anything not made by makeHandle.
func parseHandle(h []byte) (exp uint64, inst [8]byte, fileID uint64, ok bool) {
	if len(h) != fhSize || h[0] != 'P' || h[1] != 'F' || h[2] != handleVersion {
		return 0, inst, 0, false
	}
	copy(inst[:], h[12:20])
	return binary.BigEndian.Uint64(h[4:]), inst, binary.BigEndian.Uint64(h[20:]), true
}
