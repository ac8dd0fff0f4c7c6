package images

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/ulikunitz/xz"
)

// decompressor is a running decompression: read the plain stream from R, then Wait for the
// verdict (an external xz reports a truncated or corrupt file only through its exit status).
type decompressor struct {
	R    io.Reader
	Wait func() error
}

// decompress starts decompressing r. For xz it prefers the xz command when installed (its
// multi-threaded decoder is several times faster than the pure-Go one) and falls back to
// github.com/ulikunitz/xz.
func decompress(ctx context.Context, kind string, r io.Reader) (*decompressor, error) {
	switch kind {
	case kindGzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return &decompressor{R: zr, Wait: zr.Close}, nil
	case kindXZ:
		if path, err := exec.LookPath("xz"); err == nil {
			return externalXZ(ctx, path, r)
		}
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		return &decompressor{R: xr, Wait: func() error { return nil }}, nil
	}
	return nil, fmt.Errorf("no decompressor for %q", kind)
}

func externalXZ(ctx context.Context, path string, r io.Reader) (*decompressor, error) {
	cmd := exec.CommandContext(ctx, path, "-dc", "-T0")
	cmd.Stdin = r
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	wait := func() error {
		// Drain so xz is not blocked writing when we stopped reading early.
		_, _ = io.Copy(io.Discard, out)
		if err := cmd.Wait(); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			msg := strings.TrimSpace(strings.ReplaceAll(stderr.String(), "(stdin): ", ""))
			if msg == "" {
				msg = err.Error()
			}
			return fmt.Errorf("%s", msg)
		}
		return nil
	}
	return &decompressor{R: out, Wait: wait}, nil
}

// writeSparse copies r into f, leaving all-zero blocks as holes: a 4 GiB Pi OS image is mostly
// empty space, and writing it would cost both time and disk.
func writeSparse(ctx context.Context, f *os.File, r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	zero := make([]byte, sparseBlock)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return off, err
		}
		m, err := fill(r, buf)
		for i := 0; i < m; i += sparseBlock {
			end := min(i+sparseBlock, m)
			if bytes.Equal(buf[i:end], zero[:end-i]) {
				continue
			}
			if _, werr := f.WriteAt(buf[i:end], off+int64(i)); werr != nil {
				return off, werr
			}
		}
		off += int64(m)
		if err == io.EOF {
			return off, f.Truncate(off)
		}
		if err != nil {
			return off, err
		}
	}
}

// peekKind reads what a decompressed stream holds without consuming it.
func peekKind(br *bufio.Reader) (string, error) {
	h, err := br.Peek(sniffLen)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return sniffFormat(h), nil
}

// fill reads until buf is full or the reader fails. Unlike io.ReadFull it keeps io.EOF apart
// from a decoder's own io.ErrUnexpectedEOF, which means a truncated input, not a clean end.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
