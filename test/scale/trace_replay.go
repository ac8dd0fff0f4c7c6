package scale

import (
	"encoding/binary"
	"fmt"
	"path"
	"strings"
)

// replay plays the trace's calls on c, one at a time, each after the board's think time
// (rpcConn.delay): handles come from the board's own replies (LOOKUP, READDIRPLUS,
// CREATE/MKDIR/SYMLINK), a path it has no handle for is looked up from the root first.
// A call whose status differs from the captured one is counted in diverged, not failed:
// the boot goes on as the real one did. It returns the bytes READ.
func (t *Trace) run(c *nfsClient) (read int64, err error) {
	for i, op := range t.ops {
		n, err := c.replay(op)
		read += n
		if err != nil {
			return read, fmt.Errorf("trace call %d (%s %s): %w", i, procNames[op.proc], op.path, err)
		}
	}
	return read, nil
}

// diverge notes a call that went otherwise than in the capture.
func (c *nfsClient) diverge(op traceOp, what string) {
	c.diverged++
	if c.firstDiverge == "" {
		c.firstDiverge = fmt.Sprintf("%s %s: %s", procNames[op.proc], op.path, what)
	}
}

// handle resolves p: from the board's replies so far, else by LOOKUPs from the root.
// ok is false (and the divergence noted) when p cannot be found.
func (c *nfsClient) handle(op traceOp, p string) (fh []byte, ok bool, err error) {
	fh, missing, err := c.lookup(p)
	if err != nil {
		return nil, false, err
	}
	if missing {
		c.diverge(op, p+" not found")
		return nil, false, nil
	}
	return fh, true, nil
}

// replay makes one call of the trace.
func (c *nfsClient) replay(op traceOp) (int64, error) {
	name := strings.ToUpper(procNames[op.proc])
	var e enc
	switch op.proc {
	case 3, 8, 9, 10, 11, 12, 13, 14: // diropargs first
		dir, ok, err := c.handle(op, path.Dir(op.path))
		if !ok {
			return 0, err
		}
		e.opaque(dir)
		e.str(path.Base(op.path))
		if op.proc == 14 {
			to, ok, err := c.handle(op, path.Dir(op.path2))
			if !ok {
				return 0, err
			}
			e.opaque(to)
			e.str(path.Base(op.path2))
		}
	case 16, 17:
		return 0, c.replayReaddir(op)
	default:
		fh, ok, err := c.handle(op, op.path)
		if !ok {
			return 0, err
		}
		e.opaque(fh)
		if op.proc == 15 { // LINK: the new name's directory and name
			to, ok, err := c.handle(op, path.Dir(op.path2))
			if !ok {
				return 0, err
			}
			e.opaque(to)
			e.str(path.Base(op.path2))
		}
	}
	e.b = append(e.b, op.tail...)
	if op.proc == 7 { // WRITE: the data the capture left out
		if len(op.tail) != 16 {
			return 0, fmt.Errorf("write arguments of %d bytes", len(op.tail))
		}
		n := int(binary.BigEndian.Uint32(op.tail[8:]))
		if n > maxRecord/2 {
			return 0, fmt.Errorf("write of %d bytes", n)
		}
		for len(c.wdata) < n {
			c.wdata = append(c.wdata, "journal entry "...)
		}
		e.opaque(c.wdata[:n])
	}
	d, st, err := c.nfs(name, op.proc, e.b)
	if err != nil {
		return 0, err
	}
	if st != op.status {
		c.diverge(op, fmt.Sprintf("status %d, captured %d", st, op.status))
	}
	if st != nfsOK {
		if op.proc == 3 && st == nfsNoEnt {
			delete(c.fhs, op.path)
		}
		return 0, nil
	}
	switch op.proc {
	case 3: // LOOKUP
		fh := d.opaque()
		if d.err != nil {
			return 0, fmt.Errorf("LOOKUP reply: %w", d.err)
		}
		c.fhs[op.path] = append([]byte(nil), fh...)
	case 6: // READ
		d.postOpAttr()
		d.u32() // count
		d.u32() // eof
		data := d.opaque()
		if d.err != nil {
			return 0, fmt.Errorf("READ reply: %w", d.err)
		}
		return int64(len(data)), nil
	case 8, 9, 10, 11: // CREATE, MKDIR, SYMLINK, MKNOD
		if d.u32() != 0 {
			fh := d.opaque()
			if d.err != nil {
				return 0, fmt.Errorf("%s reply: %w", name, d.err)
			}
			c.fhs[op.path] = append([]byte(nil), fh...)
		}
	case 12, 13: // REMOVE, RMDIR
		c.forget(op.path, "")
	case 14: // RENAME
		c.forget(op.path, op.path2)
	}
	return 0, nil
}

// forget drops p and what is under it from the handles, or moves them to to.
func (c *nfsClient) forget(p, to string) {
	for q, fh := range c.fhs {
		if q == p || strings.HasPrefix(q, p+"/") {
			delete(c.fhs, q)
			if to != "" {
				c.fhs[to+q[len(p):]] = fh
			}
		}
	}
}

// replayReaddir lists a directory as the capture did: a listing from cookie 0 is read
// to its end with the captured counts (the server's cookies are its own); the capture's
// continuation calls are covered by that.
func (c *nfsClient) replayReaddir(op traceOp) error {
	plus := op.proc == 17
	want := 24 // cookie, verifier, dircount, maxcount
	if !plus {
		want = 20 // cookie, verifier, count
	}
	if len(op.tail) != want {
		return fmt.Errorf("arguments of %d bytes, want %d", len(op.tail), want)
	}
	if binary.BigEndian.Uint64(op.tail) != 0 {
		return nil
	}
	fh, ok, err := c.handle(op, op.path)
	if !ok {
		return err
	}
	name := strings.ToUpper(procNames[op.proc])
	var cookie uint64
	verf := make([]byte, 8)
	for range 10000 {
		var e enc
		e.opaque(fh)
		e.u64(cookie)
		e.b = append(e.b, verf...)
		e.b = append(e.b, op.tail[16:]...)
		d, st, err := c.nfs(name, op.proc, e.b)
		if err != nil {
			return err
		}
		if st != op.status {
			c.diverge(op, fmt.Sprintf("status %d, captured %d", st, op.status))
		}
		if st != nfsOK {
			return nil
		}
		d.postOpAttr()
		verf = append(verf[:0], d.take(8)...)
		for d.u32() != 0 && d.err == nil {
			d.u64() // fileid
			n := string(d.opaque())
			cookie = d.u64()
			if !plus {
				continue
			}
			d.postOpAttr()
			if d.u32() != 0 {
				h := append([]byte(nil), d.opaque()...)
				if n != "." && n != ".." && d.err == nil {
					c.fhs[path.Join(op.path, n)] = h
				}
			}
		}
		eof := d.u32() != 0
		if d.err != nil {
			return fmt.Errorf("%s reply: %w", name, d.err)
		}
		if eof {
			return nil
		}
	}
	return fmt.Errorf("%s %s: no EOF after 10000 calls", name, op.path)
}
