package scale

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"strings"
)

// replayer plays one board's trace with the captured concurrency: call i is sent once
// the calls answered before it arrived in the capture are answered here (Trace.ops'
// after lists), so calls that overlapped there overlap here, over the board's one
// connection with their xids outstanding, at most Trace.maxInFlight at once (the slot
// table's bound the capture showed). Each call goes with its caller's AUTH_SYS
// credential. Handles come from the board's own replies (LOOKUP, READDIRPLUS,
// CREATE/MKDIR/SYMLINK): a call that needs one not received yet waits for the replies
// outstanding, and a path still without a handle is then looked up from the root. A
// call whose status differs from the captured one is counted in diverged, not failed:
// the boot goes on as the real one did. Everything runs on the board's goroutine; the
// connection's reader only hands it the replies.
type replayer struct {
	t        *Trace
	c        *nfsClient
	creds    [][]byte                    // AUTH_SYS bodies of the trace's credentials
	answered []bool                      // per call of the trace
	pending  map[uint32]func(*dec) error // xid -> what its reply does
	args     enc                         // scratch: send copies it
	read     int64                       // bytes READ
}

// run replays the trace on c and returns the bytes READ.
func (t *Trace) run(c *nfsClient) (int64, error) {
	r := &replayer{t: t, c: c, answered: make([]bool, len(t.ops)), pending: map[uint32]func(*dec) error{}}
	for _, cr := range t.creds {
		r.creds = append(r.creds, c.rpc.authSys(cr))
	}
	for i, op := range t.ops {
		for _, j := range op.after {
			for !r.answered[j] {
				if err := r.wait(); err != nil {
					return r.read, err
				}
			}
		}
		if err := r.start(i); err != nil {
			return r.read, fmt.Errorf("trace call %d (%s %s): %w", i, op.name(), op.path, err)
		}
	}
	for len(r.pending) > 0 {
		if err := r.wait(); err != nil {
			return r.read, err
		}
	}
	return r.read, nil
}

// wait takes the next reply and does what its call asked for.
func (r *replayer) wait() error {
	xid, d, err := r.c.rpc.recv()
	var refused *rpcRefused
	if errors.As(err, &refused) && r.pending[xid] != nil {
		// A server that does not run a call (a peer, say, without NFS_ACL or refusing
		// its arguments) answered it otherwise than the capture: a divergence, counted
		// by status() as such, not a failed boot.
		d, err = &dec{b: binary.BigEndian.AppendUint32(nil, refusedStatus+refused.stat)}, nil
	}
	if err != nil {
		return err
	}
	then, ok := r.pending[xid]
	if !ok {
		return fmt.Errorf("reply to xid %d, which is not outstanding", xid)
	}
	delete(r.pending, xid)
	return then(d)
}

// send sends one call, at most maxInFlight outstanding, and notes what its reply does.
func (r *replayer) send(op traceOp, proc uint32, args []byte, then func(*dec) error) error {
	for len(r.pending) >= max(1, r.t.maxInFlight) {
		if err := r.wait(); err != nil {
			return err
		}
	}
	r.c.ops[strings.ToUpper(procName(op.prog, proc))]++
	xid, err := r.c.rpc.send(op.prog, 3, proc, r.creds[op.cred], args)
	if err != nil {
		return err
	}
	r.pending[xid] = then
	r.c.maxInFlight = max(r.c.maxInFlight, len(r.pending))
	return nil
}

// procName names a procedure of the NFS or the NFS_ACL program.
func procName(prog, proc uint32) string {
	if prog == progACL {
		return aclProcNames[proc]
	}
	return procNames[proc]
}

// status reads a reply's status and notes a divergence from the capture's.
func (r *replayer) status(op traceOp, d *dec) (uint32, error) {
	st := d.u32()
	if d.err != nil {
		return 0, fmt.Errorf("%s %s: reply: %w", op.name(), op.path, d.err)
	}
	if st >= refusedStatus {
		r.c.diverge(op, fmt.Sprintf("refused (RPC accept_stat %d), captured status %d", st-refusedStatus, op.status))
	} else if st != op.status {
		r.c.diverge(op, fmt.Sprintf("status %d, captured %d", st, op.status))
	}
	return st, nil
}

// refusedStatus plus the accept_stat stands for the status of a call the server refused.
const refusedStatus = 1 << 16

// diverge notes a call that went otherwise than in the capture.
func (c *nfsClient) diverge(op traceOp, what string) {
	c.diverged++
	if c.divergedBy == nil {
		c.divergedBy = map[string]int{}
	}
	c.divergedBy[strings.ToUpper(op.name())]++
	if c.firstDiverge == "" {
		c.firstDiverge = fmt.Sprintf("%s %s: %s", op.name(), op.path, what)
	}
}

// handle resolves p: from the board's replies so far, else (once the replies
// outstanding are in, one of which may bring it) by LOOKUPs from the root. ok is false
// (and the divergence noted) when p cannot be found.
func (r *replayer) handle(op traceOp, p string) (fh []byte, ok bool, err error) {
	if fh, ok := r.c.known(p); ok {
		return fh, true, nil
	}
	for len(r.pending) > 0 {
		if err := r.wait(); err != nil {
			return nil, false, err
		}
	}
	fh, missing, err := r.c.lookup(p)
	if err != nil {
		return nil, false, err
	}
	if missing {
		r.c.diverge(op, p+" not found")
		return nil, false, nil
	}
	return fh, true, nil
}

// start sends call i of the trace (a listing: its first page).
func (r *replayer) start(i int) error {
	op := r.t.ops[i]
	done := func() { r.answered[i] = true }
	e := &r.args
	e.b = e.b[:0]
	if op.prog == progACL { // GETACL, SETACL: the handle, then the captured mask and ACLs
		fh, ok, err := r.handle(op, op.path)
		if !ok {
			done()
			return err
		}
		e.opaque(fh)
		e.b = append(e.b, op.tail...)
		return r.send(op, op.proc, e.b, func(d *dec) error {
			done()
			_, err := r.status(op, d)
			return err
		})
	}
	switch op.proc {
	case 3, 8, 9, 10, 11, 12, 13, 14: // diropargs first
		dir, ok, err := r.handle(op, path.Dir(op.path))
		if !ok {
			done()
			return err
		}
		var to []byte
		if op.proc == 14 {
			if to, ok, err = r.handle(op, path.Dir(op.path2)); !ok {
				done()
				return err
			}
		}
		e.opaque(dir)
		e.str(path.Base(op.path))
		if op.proc == 14 {
			e.opaque(to)
			e.str(path.Base(op.path2))
		}
	case 16, 17:
		return r.startReaddir(i)
	default:
		fh, ok, err := r.handle(op, op.path)
		if !ok {
			done()
			return err
		}
		var to []byte
		if op.proc == 15 { // LINK: the new name's directory and name
			if to, ok, err = r.handle(op, path.Dir(op.path2)); !ok {
				done()
				return err
			}
		}
		e.opaque(fh)
		if op.proc == 15 {
			e.opaque(to)
			e.str(path.Base(op.path2))
		}
	}
	e.b = append(e.b, op.tail...)
	if op.proc == 7 { // WRITE: the data the capture left out
		if len(op.tail) != 16 {
			return fmt.Errorf("write arguments of %d bytes", len(op.tail))
		}
		n := int(binary.BigEndian.Uint32(op.tail[8:]))
		if n > maxRecord/2 {
			return fmt.Errorf("write of %d bytes", n)
		}
		for len(r.c.wdata) < n {
			r.c.wdata = append(r.c.wdata, "journal entry "...)
		}
		e.opaque(r.c.wdata[:n])
	}
	return r.send(op, op.proc, e.b, func(d *dec) error {
		done()
		return r.answer(op, d)
	})
}

// answer takes in an NFS call's reply: its status, and the handles and bytes it brings.
func (r *replayer) answer(op traceOp, d *dec) error {
	c := r.c
	st, err := r.status(op, d)
	if err != nil {
		return err
	}
	if st != nfsOK {
		if op.proc == 3 && st == nfsNoEnt {
			delete(c.fhs, op.path)
		}
		return nil
	}
	name := strings.ToUpper(op.name())
	switch op.proc {
	case 3: // LOOKUP
		fh := d.opaque()
		if d.err != nil {
			return fmt.Errorf("LOOKUP %s reply: %w", op.path, d.err)
		}
		c.fhs[op.path] = append([]byte(nil), fh...)
	case 6: // READ
		d.postOpAttr()
		d.u32() // count
		d.u32() // eof
		data := d.opaque()
		if d.err != nil {
			return fmt.Errorf("READ %s reply: %w", op.path, d.err)
		}
		r.read += int64(len(data))
	case 8, 9, 10, 11: // CREATE, MKDIR, SYMLINK, MKNOD
		if d.u32() != 0 {
			fh := d.opaque()
			if d.err != nil {
				return fmt.Errorf("%s %s reply: %w", name, op.path, d.err)
			}
			c.fhs[op.path] = append([]byte(nil), fh...)
		}
	case 12, 13: // REMOVE, RMDIR
		c.forget(op.path, "")
	case 14: // RENAME
		c.forget(op.path, op.path2)
	}
	return nil
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

// startReaddir lists a directory as the capture did: a listing from cookie 0 is read
// to its end with the captured counts (the server's cookies are its own), one page
// after the other; the capture's continuation calls are covered by that (they wait for
// the first page's call, which is answered once the whole listing is in).
func (r *replayer) startReaddir(i int) error {
	op := r.t.ops[i]
	plus := op.proc == 17
	want := 24 // cookie, verifier, dircount, maxcount
	if !plus {
		want = 20 // cookie, verifier, count
	}
	if len(op.tail) != want {
		return fmt.Errorf("arguments of %d bytes, want %d", len(op.tail), want)
	}
	if binary.BigEndian.Uint64(op.tail) != 0 {
		r.answered[i] = true
		return nil
	}
	fh, ok, err := r.handle(op, op.path)
	if !ok {
		r.answered[i] = true
		return err
	}
	name := strings.ToUpper(op.name())
	var page func(cookie uint64, verf []byte, n int) error
	page = func(cookie uint64, verf []byte, n int) error {
		if n == 10000 {
			return fmt.Errorf("%s %s: no EOF after 10000 calls", name, op.path)
		}
		var e enc
		e.opaque(fh)
		e.u64(cookie)
		e.b = append(e.b, verf...)
		e.b = append(e.b, op.tail[16:]...)
		return r.send(op, op.proc, e.b, func(d *dec) error {
			st, err := r.status(op, d)
			if err != nil || st != nfsOK {
				r.answered[i] = true
				return err
			}
			d.postOpAttr()
			verf := append([]byte(nil), d.take(8)...)
			for d.u32() != 0 && d.err == nil {
				d.u64() // fileid
				entry := string(d.opaque())
				cookie = d.u64()
				if !plus {
					continue
				}
				d.postOpAttr()
				if d.u32() != 0 {
					h := append([]byte(nil), d.opaque()...)
					if entry != "." && entry != ".." && d.err == nil {
						r.c.fhs[path.Join(op.path, entry)] = h
					}
				}
			}
			eof := d.u32() != 0
			if d.err != nil {
				return fmt.Errorf("%s %s reply: %w", name, op.path, d.err)
			}
			if eof {
				r.answered[i] = true
				return nil
			}
			return page(cookie, verf, n+1)
		})
	}
	return page(0, make([]byte, 8), 0)
}
