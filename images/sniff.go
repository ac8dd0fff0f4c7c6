package images

import (
	"bytes"
	"encoding/binary"
)

// sniffLen is how many leading bytes sniffFormat wants: a tar header or an MBR.
const sniffLen = 512

// Kinds of input sniffFormat tells apart.
const (
	kindUnknown = ""
	kindXZ      = "xz"
	kindGzip    = "gzip"
	kindZstd    = "zstd"
	kindTar     = "tar"
	kindMBR     = "mbr"
)

// sniffFormat tells from the first bytes of a file what it is. File names lie (a .img that
// is really xz, a .tar.gz that is a bare .img.gz), content does not.
func sniffFormat(h []byte) string {
	switch {
	case bytes.HasPrefix(h, []byte{0xFD, '7', 'z', 'X', 'Z', 0x00}):
		return kindXZ
	case bytes.HasPrefix(h, []byte{0x1F, 0x8B}):
		return kindGzip
	case len(h) >= 512 && isTarHeader(h[:512]):
		return kindTar
	case len(h) >= 512 && h[510] == 0x55 && h[511] == 0xAA && hasMBRPartition(h[:512]):
		return kindMBR
	}
	return kindUnknown
}

// isTarHeader checks the ustar magic and the header checksum (old v7 archives without the
// magic are rare enough to ignore).
func isTarHeader(h []byte) bool {
	if !bytes.HasPrefix(h[257:], []byte("ustar")) {
		return false
	}
	var sum int64
	for i, b := range h {
		if i >= 148 && i < 156 {
			b = ' '
		}
		sum += int64(b)
	}
	field := bytes.TrimRight(bytes.TrimLeft(h[148:156], " \x00"), " \x00")
	var want int64
	if len(field) == 0 {
		return false
	}
	for _, c := range field {
		if c < '0' || c > '7' {
			return false
		}
		want = want*8 + int64(c-'0')
	}
	return sum == want
}

// hasMBRPartition rules out a FAT boot sector or other 0x55AA-signed sector that carries no
// partition table: at least one entry must have a type and a plausible status byte.
func hasMBRPartition(h []byte) bool {
	found := false
	for i := 0; i < 4; i++ {
		p := h[446+16*i : 446+16*(i+1)]
		if p[0] != 0 && p[0] != 0x80 {
			return false
		}
		if p[4] != 0 && binary.LittleEndian.Uint32(p[12:16]) > 0 {
			found = true
		}
	}
	return found
}
