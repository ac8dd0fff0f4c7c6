package images

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxTarXattr bounds one xattr value from a PAX header; the kernel's limit is 64 KiB.
const maxTarXattr = 64 << 10

// maxTarSparse bounds the logical size of a sparse entry: its holes cost no input but are
// still read (and hashed) as zeros, so a 40-byte header must not ask for an exabyte of work.
const maxTarSparse = 16 << 30

// walkTar streams a tar archive as entries. Owners, modes, devices, links, PAX xattrs
// (SCHILY.xattr.*, as GNU tar and bsdtar write them) and text ACLs (SCHILY.acl.*) are kept;
// names are checked by the treeWriter so a hostile archive cannot write outside the root.
func walkTar(ctx context.Context, r io.Reader, fn func(*entry) error) error {
	n, err := walkTarEntries(ctx, r, fn)
	if err == nil && n == 0 {
		return errors.New("tar archive holds no files")
	}
	return err
}

// walkTarEntries is walkTar for a tar that may be empty (a container image layer can be);
// it returns the number of entries.
func walkTarEntries(ctx context.Context, r io.Reader, fn func(*entry) error) (int, error) {
	tr := tar.NewReader(r)
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("tar: %w", err)
		}
		n++
		if isSparse(h) && h.Size > maxTarSparse {
			return n, fmt.Errorf("tar: %s: sparse file of %d bytes (more than %d): refusing", h.Name, h.Size, int64(maxTarSparse))
		}
		e := &entry{
			Path:  h.Name,
			Mode:  uint32(h.Mode) & 0o7777,
			UID:   uint32(h.Uid),
			GID:   uint32(h.Gid),
			Mtime: h.ModTime,
			Size:  h.Size,
			Major: uint32(h.Devmajor),
			Minor: uint32(h.Devminor),
		}
		for k, v := range h.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if len(v) > maxTarXattr {
					return n, fmt.Errorf("tar: %s: xattr %s is %d bytes", h.Name, name, len(v))
				}
				if e.Xattrs == nil {
					e.Xattrs = map[string][]byte{}
				}
				e.Xattrs[name] = []byte(v)
			}
			// GNU tar --acls, star and bsdtar: the text form (see acl.go)
			if kind, ok := strings.CutPrefix(k, "SCHILY.acl."); ok && (kind == "access" || kind == "default") {
				if len(v) > maxACLText {
					return n, fmt.Errorf("tar: %s: %s is %d bytes", h.Name, k, len(v))
				}
				if e.ACLText == nil {
					e.ACLText = map[string]string{}
				}
				e.ACLText["system.posix_acl_"+kind] = v
			}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			e.Mode |= typeDir
		case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
			e.Mode |= typeReg
			e.Open = func() (io.ReadCloser, error) { return io.NopCloser(tr), nil }
		case tar.TypeSymlink:
			e.Mode |= typeLnk
			e.Target = h.Linkname
		case tar.TypeLink:
			e = &entry{Path: h.Name, LinkTo: h.Linkname}
		case tar.TypeChar:
			e.Mode |= typeChr
		case tar.TypeBlock:
			e.Mode |= typeBlk
		case tar.TypeFifo:
			e.Mode |= typeFifo
		default:
			return n, fmt.Errorf("tar: %s: unsupported entry type %q", h.Name, h.Typeflag)
		}
		if err := fn(e); err != nil {
			return n, err
		}
	}
}

func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
