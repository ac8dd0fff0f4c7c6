package demo

import (
	"compress/gzip"
	"fmt"
	"io"
	"syscall"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks as an initramfs
// (Documentation/driver-api/early-userspace/buffer-format.rst). Written here rather than
// piped through cpio(1) so that device nodes and owners need no root and no temp tree.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
}

// cpioPad4 returns how many NULs bring n to a multiple of four.
func cpioPad4(n int) int { return (4 - n%4) % 4 }

// header writes one entry header and name; data, if any, follows from the caller.
func (c *cpioWriter) header(name string, mode uint32, size int, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&syscall.S_IFMT == syscall.S_IFDIR {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	buf := append([]byte(hdr), name...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, cpioPad4(len(buf)))...)
	_, c.err = c.w.Write(buf)
}

func (c *cpioWriter) data(b []byte) {
	if c.err != nil {
		return
	}
	if _, c.err = c.w.Write(b); c.err == nil {
		_, c.err = c.w.Write(make([]byte, cpioPad4(len(b))))
	}
}

// Dir adds a directory (owner root).
func (c *cpioWriter) Dir(name string, perm uint32) {
	c.header(name, syscall.S_IFDIR|perm, 0, 0, 0)
}

// File adds a regular file (owner root).
func (c *cpioWriter) File(name string, perm uint32, b []byte) {
	c.header(name, syscall.S_IFREG|perm, len(b), 0, 0)
	c.data(b)
}

// Symlink adds a symbolic link.
func (c *cpioWriter) Symlink(name, target string) {
	c.header(name, syscall.S_IFLNK|0o777, len(target), 0, 0)
	c.data([]byte(target))
}

// CharDev adds a character device node, e.g. /dev/console, which the kernel opens for
// init's stdio before /init could create it.
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) {
	c.header(name, syscall.S_IFCHR|perm, 0, major, minor)
}

// Close writes the trailer.
func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	return c.err
}

// gzipCpio wraps fn's entries into a gzip-compressed newc archive written to w.
func gzipCpio(w io.Writer, fn func(*cpioWriter)) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	c := &cpioWriter{w: zw}
	fn(c)
	if err := c.Close(); err != nil {
		return fmt.Errorf("write cpio: %w", err)
	}
	return zw.Close()
}
