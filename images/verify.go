package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// maxReported bounds Verify's list: a wiped tree should not print a million lines.
const maxReported = 1000

// Verify re-checks every layer of an image (its base's included) against the layer's
// manifest: the manifest against the layer's digest, then every path, type, mode, owner,
// mtime, size, content checksum, symlink target, device number, whiteout, opaque flag, xattr
// and hard link. It returns one line per problem; err is for failures to check at all.
func (s *Store) Verify(ctx context.Context, name string) (problems []string, err error) {
	info, err := s.Info(name)
	if err != nil {
		return nil, err
	}
	for i := len(info.Layers) - 1; i >= 0; i-- {
		d := info.Layers[i]
		ps, err := s.VerifyLayer(ctx, d)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", name, err)
		}
		for _, p := range ps {
			problems = append(problems, fmt.Sprintf("layer %s: %s", short(d), p))
		}
		if len(problems) >= maxReported {
			return problems, nil
		}
	}
	return problems, nil
}

// VerifyLayer checks one layer against its manifest (see Verify).
func (s *Store) VerifyLayer(ctx context.Context, digest string) (problems []string, err error) {
	if _, err := s.Layer(digest); err != nil {
		return nil, err
	}
	mpath := filepath.Join(s.layerDir(digest), manifestName)
	mb, err := os.ReadFile(mpath)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", short(digest), err)
	}
	sum := sha256.Sum256(mb)
	if hex.EncodeToString(sum[:]) != digest {
		problems = append(problems, fmt.Sprintf("%s: checksum is not the layer's digest (manifest edited?)", mpath))
	}
	want, err := parseManifest(bytes.NewReader(mb))
	if err != nil {
		return nil, fmt.Errorf("layer %s: %s: %w", short(digest), mpath, err)
	}
	root := s.LayerTree(digest)
	return append(problems, compareTree(ctx, root, want)...), nil
}

// compareTree lists how the tree at root differs from the manifest records want.
func compareTree(ctx context.Context, root string, want []record) []string {
	var problems []string
	got := map[string]record{}
	err := walkDir(ctx, root, func(e *entry) error {
		// entryRecord refuses foreign trusted.overlay.* xattrs; here they are a problem.
		x := e.Xattrs
		e.Xattrs = nil
		rec, err := entryRecord(e)
		if err != nil {
			return err
		}
		rec.Xattrs, rec.Opaque = xattrDigest(x), e.Mode&typeMask == typeDir && string(x[opaqueXattr]) == "y"
		got[e.Path] = rec
		return nil
	})
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", root, err)}
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
			return append(problems, "... (stopped after too many problems)")
		}
	}
	var extra []string
	for p := range got {
		if !seen[p] {
			extra = append(extra, fmt.Sprintf("/%s: not in the manifest (added after import)", p))
		}
	}
	sort.Strings(extra)
	return append(problems, extra...)
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
	case w.isWhiteout() != g.isWhiteout():
		return "whiteout changed"
	case w.Data != g.Data:
		return "content changed"
	case w.Opaque != g.Opaque:
		return "opaque flag changed"
	case w.Xattrs != g.Xattrs:
		return "xattrs changed"
	case w.Mtime != g.Mtime:
		return "mtime changed"
	}
	return ""
}
