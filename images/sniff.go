package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path"
	"strings"
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

// sniffContainerDir reports whether dir is an unpacked image archive rather than a root tree.
func sniffContainerDir(dir string) bool {
	if fi, err := os.Lstat(path.Join(dir, "oci-layout")); err == nil && fi.Mode().IsRegular() {
		return true
	}
	// an extracted docker save: manifest.json beside layer dirs, and no root tree
	if fi, err := os.Lstat(path.Join(dir, "manifest.json")); err != nil || !fi.Mode().IsRegular() {
		return false
	}
	for _, d := range []string{"etc", "usr", "bin"} {
		if _, err := os.Lstat(path.Join(dir, d)); err == nil {
			return false
		}
	}
	return true
}

// sniffContainerTar reports whether the tar file f is an image archive (OCI layout or docker
// save) rather than a root file system: every member must be one an image archive has, and
// oci-layout or manifest.json must be among them. A root tarball is told apart at its first
// member outside that list, so only image archives are read to the end.
func sniffContainerTar(f *os.File) bool {
	defer f.Seek(0, io.SeekStart)
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return false
	}
	tr := tar.NewReader(f)
	found := false
	for n := 0; n < maxArchiveEntries; n++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return found
		}
		if err != nil {
			return found // a broken image archive is still one, and its reader says what is wrong
		}
		name, err := cleanPath(h.Name)
		if err != nil || !archiveMember(name) {
			return false
		}
		found = found || name == "oci-layout" || name == "manifest.json"
	}
	return false
}

// archiveMember tells whether name can be a member of an image archive.
func archiveMember(name string) bool {
	top, _, _ := strings.Cut(name, "/")
	switch {
	case name == "", name == "oci-layout", name == "manifest.json", name == "index.json", name == "repositories", top == "blobs":
		return true
	case isSHA256Hex(digestName(top)):
		return true
	}
	return false
}

// digestName strips what archive writers put around a digest in a member name: docker's
// <hex>.json, skopeo's <hex>.tar, crane's sha256:<hex> and <hex>.tar.gz.
func digestName(name string) string {
	name = strings.TrimPrefix(name, "sha256:")
	for _, ext := range []string{".gz", ".tar", ".json"} {
		name = strings.TrimSuffix(name, ext)
	}
	return name
}

// containerTarHead tells from the start of a tar stream (a decompressed one, that cannot be
// read twice) whether it is an image archive: its first members are all ones an image archive
// has. docker save | gzip makes such a stream.
func containerTarHead(b []byte) bool {
	tr := tar.NewReader(bytes.NewReader(b))
	seen := 0
	for seen < 4 {
		h, err := tr.Next()
		if err != nil {
			return seen > 0
		}
		name, err := cleanPath(h.Name)
		if err != nil || !archiveMember(name) {
			return false
		}
		if name != "" {
			seen++
		}
	}
	return true
}

// containerArchive tells whether src (absolute) is a container image archive (an OCI image
// layout or a docker save archive: a directory, a tar file, or a tar compressed with gzip or
// xz) rather than a root tree or a tarball of one. compression is "", kindGzip or kindXZ.
func containerArchive(ctx context.Context, abs string) (ok bool, compression string) {
	fi, err := os.Stat(abs)
	if err != nil {
		return false, ""
	}
	if fi.IsDir() {
		return sniffContainerDir(abs), ""
	}
	if !fi.Mode().IsRegular() {
		return false, ""
	}
	f, err := os.Open(abs)
	if err != nil {
		return false, ""
	}
	defer f.Close()
	hdr := make([]byte, sniffLen)
	n, _ := f.ReadAt(hdr, 0)
	switch kind := sniffFormat(hdr[:n]); kind {
	case kindTar:
		return sniffContainerTar(f), ""
	case kindGzip, kindXZ:
		// the start of the stream tells; the decompressor stops right after it
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		dec, err := decompress(ctx, kind, f)
		if err != nil {
			return false, ""
		}
		br := bufio.NewReaderSize(dec.R, containerHead)
		head, _ := br.Peek(containerHead)
		ok := containerTarHead(head)
		cancel()
		_ = dec.Wait()
		return ok, kind
	}
	return false, ""
}

// containerHead is how much of a compressed stream containerArchive reads.
const containerHead = 64 << 10
