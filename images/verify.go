package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// maxReported bounds Verify's list: a wiped tree should not print a million lines.
const maxReported = 1000

// Verify re-checks an image's root tree against the manifest written at import: every path,
// type, mode, owner, mtime, size, content checksum, symlink target, device number, xattr and
// hard link. It returns one line per problem; err is for failures to check at all.
func (s *Store) Verify(ctx context.Context, name string) (problems []string, err error) {
	info, err := s.Info(name)
	if err != nil {
		return nil, err
	}
	mpath := filepath.Join(s.imageDir(name), manifestName)
	mb, err := os.ReadFile(mpath)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	sum := sha256.Sum256(mb)
	if info.ManifestSHA256 != "" && hex.EncodeToString(sum[:]) != info.ManifestSHA256 {
		problems = append(problems, fmt.Sprintf("%s: checksum does not match image.yaml (manifest edited?)", mpath))
	}
	want, err := parseManifest(bytes.NewReader(mb))
	if err != nil {
		return nil, fmt.Errorf("image %s: %s: %w", name, mpath, err)
	}
	root := s.RootDir(name)
	got := map[string]record{}
	err = walkDir(ctx, root, func(e *entry) error {
		rec := record{Path: e.Path, Mode: e.Mode, UID: e.UID, GID: e.GID, Mtime: e.Mtime.UnixNano(), Xattrs: xattrDigest(e.Xattrs), Link: e.LinkTo}
		switch e.Mode & typeMask {
		case typeReg:
			if e.LinkTo != "" {
				break
			}
			f, err := e.Open()
			if err != nil {
				return err
			}
			h := sha256.New()
			n, err := io.Copy(h, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("/%s: %w", e.Path, err)
			}
			rec.Size, rec.Data = n, hex.EncodeToString(h.Sum(nil))
		case typeLnk:
			rec.Size, rec.Data = int64(len(e.Target)), e.Target
		case typeChr, typeBlk:
			rec.Data = fmt.Sprintf("%d:%d", e.Major, e.Minor)
		}
		got[e.Path] = rec
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: %s: %w", name, root, err)
	}
	seen := map[string]bool{}
	for _, w := range want {
		seen[w.Path] = true
		g, ok := got[w.Path]
		if !ok {
			problems = append(problems, fmt.Sprintf("/%s: missing", w.Path))
			continue
		}
		if p := diffRecord(root, w, g); p != "" {
			problems = append(problems, fmt.Sprintf("/%s: %s", w.Path, p))
		}
		if len(problems) >= maxReported {
			return append(problems, "... (stopped after too many problems)"), nil
		}
	}
	var extra []string
	for p := range got {
		if !seen[p] {
			extra = append(extra, fmt.Sprintf("/%s: not in the manifest (added after import)", p))
		}
	}
	sort.Strings(extra)
	return append(problems, extra...), nil
}

// diffRecord compares what the manifest says with what is on disk. A hard link may be
// found under either name first, so links are checked by inode identity, not by walk order.
func diffRecord(root string, w, g record) string {
	if w.Link != "" || g.Link != "" {
		first := w.Link
		if first == "" {
			first = g.Link
		}
		a, err1 := os.Lstat(filepath.Join(root, filepath.FromSlash(w.Path)))
		b, err2 := os.Lstat(filepath.Join(root, filepath.FromSlash(first)))
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			return fmt.Sprintf("no longer a hard link of /%s", first)
		}
		return ""
	}
	switch {
	case w.Mode&typeMask != g.Mode&typeMask:
		return fmt.Sprintf("type changed (%c -> %c)", typeLetter(w.Mode), typeLetter(g.Mode))
	case w.Mode != g.Mode:
		return fmt.Sprintf("mode %04o, manifest says %04o", g.Mode&0o7777, w.Mode&0o7777)
	case w.UID != g.UID || w.GID != g.GID:
		return fmt.Sprintf("owner %d:%d, manifest says %d:%d", g.UID, g.GID, w.UID, w.GID)
	case w.Size != g.Size:
		return fmt.Sprintf("size %d, manifest says %d", g.Size, w.Size)
	case w.Data != g.Data:
		return "content changed"
	case w.Xattrs != g.Xattrs:
		return "xattrs changed"
	case w.Mtime != g.Mtime:
		return "mtime changed"
	}
	return ""
}
