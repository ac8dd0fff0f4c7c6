package images

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// manifestHeader starts every manifest so that a stray file is never read as one. Version 2
// (layers) adds two type letters: 'w' a whiteout (char device 0/0) and 'o' an opaque dir
// (xattr trusted.overlay.opaque=y); version 1 (an image's root before layers) is still read.
const (
	manifestHeader   = "# pifleet manifest v2"
	manifestHeaderV1 = "# pifleet manifest v1"
)

// maxManifestLine bounds one record: a path and a symlink target of PATH_MAX each, quoted
// (up to 4 bytes per input byte), fit well inside it.
const maxManifestLine = 64 << 10

// record is what the manifest keeps about one path of the root tree. A hard link keeps only
// Link, the path of the first name of the same inode.
type record struct {
	Path   string
	Mode   uint32 // st_mode incl. type bits; 0 for a hard link
	UID    uint32
	GID    uint32
	Mtime  int64  // nanoseconds since the epoch
	Size   int64  // regular files and symlinks
	Data   string // file: sha256 hex; symlink: target; device: "major:minor"
	Xattrs string // xattrDigest, "" when none
	Link   string
	// Opaque marks a dir that hides the layers below it (trusted.overlay.opaque=y).
	Opaque bool
}

// whiteoutDev is the device number of an overlayfs whiteout (a char device 0/0).
const whiteoutDev = "0:0"

// isWhiteout reports whether the record is an overlayfs whiteout.
func (r record) isWhiteout() bool { return r.Mode&typeMask == typeChr && r.Data == whiteoutDev }

var typeLetters = []struct {
	t uint32
	c byte
}{{typeDir, 'd'}, {typeReg, 'f'}, {typeLnk, 'l'}, {typeChr, 'c'}, {typeBlk, 'b'}, {typeFifo, 'p'}, {typeSock, 's'}}

func typeLetter(mode uint32) byte {
	for _, tl := range typeLetters {
		if mode&typeMask == tl.t {
			return tl.c
		}
	}
	return '?'
}

func letterType(c string) (uint32, bool) {
	for _, tl := range typeLetters {
		if len(c) == 1 && c[0] == tl.c {
			return tl.t, true
		}
	}
	return 0, false
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeManifest writes records sorted by path; see writeManifestNote.
func writeManifest(w io.Writer, recs []record) error { return writeManifestNote(w, "", recs) }

// writeManifestNote writes records sorted by path: one tab-separated line each, with the free-form
// strings (path, symlink target) Go-quoted so tabs and newlines in names stay unambiguous.
// A note (one line, no newline) follows the header as a "# " line: it changes the digest.
func writeManifestNote(w io.Writer, note string, recs []record) error {
	if strings.ContainsAny(note, "\n\r") {
		return errors.New("manifest note has a line break")
	}
	sorted := append([]record(nil), recs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	bw := bufio.NewWriterSize(w, 1<<16)
	fmt.Fprintln(bw, manifestHeader)
	if note != "" {
		fmt.Fprintln(bw, "# "+note)
	}
	for _, r := range sorted {
		if r.Link != "" {
			fmt.Fprintf(bw, "h\t0\t0\t0\t0\t0\t%s\t-\t%s\n", strconv.Quote(r.Link), strconv.Quote(r.Path))
			continue
		}
		data := dash(r.Data)
		if r.Mode&typeMask == typeLnk {
			data = strconv.Quote(r.Data)
		}
		letter := typeLetter(r.Mode)
		switch {
		case r.isWhiteout():
			letter, data = 'w', "-"
		case r.Opaque && r.Mode&typeMask == typeDir:
			letter = 'o'
		}
		fmt.Fprintf(bw, "%c\t%o\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", letter, r.Mode&0o7777,
			r.UID, r.GID, r.Mtime, r.Size, data, dash(r.Xattrs), strconv.Quote(r.Path))
	}
	return bw.Flush()
}

// parseManifest reads what writeManifest wrote. It is fed files from disk that anyone with
// access to the state dir could have edited, so every field is checked and lines are bounded.
func parseManifest(r io.Reader) ([]record, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxManifestLine)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("manifest: %w", err)
		}
		return nil, errors.New("manifest: empty")
	}
	if h := strings.TrimRight(sc.Text(), "\r"); h != manifestHeader && h != manifestHeaderV1 {
		return nil, errors.New("manifest: missing header line")
	}
	var recs []record
	seen := map[string]bool{}
	line := 1
	for sc.Scan() {
		line++
		if bytes.HasPrefix(sc.Bytes(), []byte("#")) {
			continue // a note (a migrated layer says where it came from)
		}
		rec, err := parseRecord(sc.Bytes())
		if err != nil {
			return nil, fmt.Errorf("manifest line %d: %w", line, err)
		}
		if seen[rec.Path] {
			return nil, fmt.Errorf("manifest line %d: duplicate path %q", line, rec.Path)
		}
		seen[rec.Path] = true
		recs = append(recs, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("manifest line %d: %w", line+1, err)
	}
	return recs, nil
}

func parseRecord(b []byte) (record, error) {
	f := bytes.Split(b, []byte{'\t'})
	if len(f) != 9 {
		return record{}, fmt.Errorf("%d fields, want 9", len(f))
	}
	var rec record
	var err error
	if rec.Path, err = unquotePath(string(f[8])); err != nil {
		return record{}, fmt.Errorf("path: %w", err)
	}
	if string(f[0]) == "h" {
		if rec.Link, err = unquotePath(string(f[6])); err != nil || rec.Link == "" {
			return record{}, fmt.Errorf("hard link target %q is not a path", f[6])
		}
		return rec, nil
	}
	t, ok := letterType(string(f[0]))
	switch string(f[0]) {
	case "w":
		t, ok = typeChr, true
		rec.Data = whiteoutDev
	case "o":
		t, ok = typeDir, true
		rec.Opaque = true
	}
	if !ok {
		return record{}, fmt.Errorf("unknown type %q", f[0])
	}
	perm, err := strconv.ParseUint(string(f[1]), 8, 32)
	if err != nil || perm > 0o7777 {
		return record{}, fmt.Errorf("mode %q", f[1])
	}
	rec.Mode = t | uint32(perm)
	uid, err1 := strconv.ParseUint(string(f[2]), 10, 32)
	gid, err2 := strconv.ParseUint(string(f[3]), 10, 32)
	if err1 != nil || err2 != nil {
		return record{}, fmt.Errorf("owner %q:%q", f[2], f[3])
	}
	rec.UID, rec.GID = uint32(uid), uint32(gid)
	if rec.Mtime, err = strconv.ParseInt(string(f[4]), 10, 64); err != nil {
		return record{}, fmt.Errorf("mtime %q", f[4])
	}
	if rec.Size, err = strconv.ParseInt(string(f[5]), 10, 64); err != nil || rec.Size < 0 {
		return record{}, fmt.Errorf("size %q", f[5])
	}
	data := string(f[6])
	switch {
	case rec.Data == whiteoutDev: // 'w'
		if data != "-" {
			return record{}, fmt.Errorf("unexpected data %q for a whiteout", data)
		}
	case t == typeLnk:
		if rec.Data, err = strconv.Unquote(data); err != nil {
			return record{}, fmt.Errorf("symlink target %q", data)
		}
	case t == typeReg:
		if len(data) != 64 || strings.Trim(data, "0123456789abcdef") != "" {
			return record{}, fmt.Errorf("sha256 %q", data)
		}
		rec.Data = data
	case t == typeChr || t == typeBlk:
		var maj, minr uint32
		if _, err := fmt.Sscanf(data, "%d:%d", &maj, &minr); err != nil || fmt.Sprintf("%d:%d", maj, minr) != data {
			return record{}, fmt.Errorf("device %q", data)
		}
		rec.Data = data
	default:
		if data != "-" {
			return record{}, fmt.Errorf("unexpected data %q", data)
		}
	}
	if x := string(f[7]); x != "-" {
		if len(x) != 64 || strings.Trim(x, "0123456789abcdef") != "" {
			return record{}, fmt.Errorf("xattr digest %q", x)
		}
		rec.Xattrs = x
	}
	return rec, nil
}

func unquotePath(q string) (string, error) {
	p, err := strconv.Unquote(q)
	if err != nil {
		return "", err
	}
	if p == "" {
		return "", nil
	}
	c, err := cleanPath(p)
	if err != nil || c != p {
		return "", fmt.Errorf("%q is not a clean relative path", p)
	}
	return p, nil
}
