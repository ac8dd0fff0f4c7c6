package nfsroot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// ONC RPC (RFC 5531) constants this server speaks.
const (
	rpcCall  = 0
	rpcReply = 1

	msgAccepted = 0
	msgDenied   = 1

	acceptSuccess      = 0
	acceptProgUnavail  = 1
	acceptProgMismatch = 2
	acceptProcUnavail  = 3
	acceptGarbageArgs  = 4
	acceptSystemErr    = 5

	rejectRPCMismatch = 0
	rejectAuthError   = 1

	authBadCred = 1
	authTooWeak = 5

	authNone = 0
	authSys  = 1

	progNFS    = 100003
	progMount  = 100005
	progNFSACL = 100227
)

// Limits on what a peer may declare. maxIO is the READ/WRITE size advertised in FSINFO;
// a record may carry that much data plus headers, and not a byte more.
const (
	maxIO     = 1 << 20
	maxRecord = maxIO + 4096
	// maxStrangerRecord bounds records from addresses no export allows: all they may do is
	// MOUNT (to be refused) or NULL, so they cannot make the server hold megabytes.
	maxStrangerRecord = 8192
	maxFragments      = 64
	maxAuthBody       = 400 // RFC 5531: opaque_auth body<400>
	maxMachine        = 255
	maxGroups         = 16
	maxNameLen        = 255
	maxPathLen        = 4096
	fhSize            = 32
	maxFHSize         = 64 // NFSv3 fhandle3 <NFS3_FHSIZE>
)

var errRecordTooLong = errors.New("rpc: record longer than the server accepts")

// readRecord reads one record-marked RPC message (RFC 5531 section 11) of at most limit
// bytes into buf, growing it only as fragments actually arrive so a declared length costs
// nothing until sent.
func readRecord(r io.Reader, buf []byte, limit int) ([]byte, error) {
	return readRecordGrow(r, buf, limit, nil)
}

// readRecordGrow is readRecord with buffers from pool: a record that outgrows buf moves
// to a bigger one and buf goes back to the pool. The caller puts back only the record
// returned, never buf (it may be back in the pool already); after an error, nothing.
func readRecordGrow(r io.Reader, buf []byte, limit int, pool *bufPool) ([]byte, error) {
	buf = buf[:0]
	var hdr [4]byte
	for frag := 0; ; frag++ {
		if frag >= maxFragments {
			return nil, fmt.Errorf("rpc: more than %d fragments in one record", maxFragments)
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if frag > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		v := binary.BigEndian.Uint32(hdr[:])
		last := v&0x80000000 != 0
		n := int(v & 0x7fffffff)
		if len(buf)+n > limit {
			return nil, errRecordTooLong
		}
		// Grow in steps of at most 64 KiB so a peer announcing a big fragment and
		// then stalling holds little memory.
		for n > 0 {
			step := min(n, 64<<10)
			start := len(buf)
			if cap(buf)-start < step {
				if pool != nil {
					buf = pool.grow(buf, start+step)
				} else {
					buf = slices.Grow(buf, step)
				}
			}
			buf = buf[:start+step] // a reused buffer is reused as is
			if _, err := io.ReadFull(r, buf[start:]); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return nil, err
			}
			n -= step
		}
		if last {
			return buf, nil
		}
	}
}

// cred is the caller identity from an AUTH_SYS (or AUTH_NONE) credential.
type cred struct {
	flavor  uint32
	uid     uint32
	gid     uint32
	gids    []uint32
	machine string
}

// nobody is the identity of AUTH_NONE callers and squashed roots.
const nobody = 65534

// rpcCallHdr is a parsed call header; args is the rest of the record.
type rpcCallHdr struct {
	xid, prog, vers, proc uint32
	cred                  cred
	args                  []byte
	held                  []*export // exports the call runs against (fence.go)
	arrived               time.Time // when its record was read; set only for an Observer
}

// callError says how to answer a call whose header cannot be served.
type callError struct {
	denied bool   // MSG_DENIED instead of MSG_ACCEPTED
	stat   uint32 // accept_stat, or reject_stat when denied
	auth   uint32 // auth_stat for AUTH_ERROR
	err    error
}

func (e *callError) Error() string { return e.err.Error() }

// parseCall decodes the call header. A nil header means the record is not a call at all
// (or too short to carry an xid) and is dropped; a callError means reply with it.
func parseCall(rec []byte) (*rpcCallHdr, *callError) {
	r := xdrReader{b: rec}
	h := &rpcCallHdr{xid: r.u32()}
	mtype := r.u32()
	if r.err != nil || mtype != rpcCall {
		return nil, nil
	}
	rpcvers := r.u32()
	h.prog, h.vers, h.proc = r.u32(), r.u32(), r.u32()
	if r.err != nil {
		return h, &callError{stat: acceptGarbageArgs, err: fmt.Errorf("rpc header: %w", r.err)}
	}
	if rpcvers != 2 {
		return h, &callError{denied: true, stat: rejectRPCMismatch, err: fmt.Errorf("rpc version %d", rpcvers)}
	}
	flavor := r.u32()
	body := r.opaque(maxAuthBody)
	r.u32() // verifier flavor: AUTH_SYS calls carry AUTH_NONE verifiers; nothing to check
	r.opaque(maxAuthBody)
	if r.err != nil {
		return h, &callError{denied: true, stat: rejectAuthError, auth: authBadCred, err: fmt.Errorf("rpc credentials: %w", r.err)}
	}
	h.cred.flavor = flavor
	switch flavor {
	case authNone:
		h.cred.uid, h.cred.gid = nobody, nobody
	case authSys:
		c, err := parseAuthSys(body)
		if err != nil {
			return h, &callError{denied: true, stat: rejectAuthError, auth: authBadCred, err: err}
		}
		h.cred = c
	default:
		return h, &callError{denied: true, stat: rejectAuthError, auth: authTooWeak, err: fmt.Errorf("auth flavor %d", flavor)}
	}
	h.args = r.b
	return h, nil
}

// parseAuthSys decodes an authsys_parms body (RFC 5531 appendix A).
func parseAuthSys(body []byte) (cred, error) {
	r := xdrReader{b: body}
	r.u32() // stamp
	c := cred{flavor: authSys}
	c.machine = r.str(maxMachine)
	c.uid, c.gid = r.u32(), r.u32()
	n := r.u32()
	if r.err == nil && n > maxGroups {
		return cred{}, fmt.Errorf("auth_sys: %d groups (at most %d)", n, maxGroups)
	}
	if r.err == nil && int(n)*4 > len(r.b) {
		return cred{}, fmt.Errorf("auth_sys: groups: %w", errShort)
	}
	if n > 0 && r.err == nil {
		c.gids = make([]uint32, n)
		for i := range c.gids {
			c.gids[i] = r.u32()
		}
	}
	if r.err != nil {
		return cred{}, fmt.Errorf("auth_sys: %w", r.err)
	}
	return c, nil
}

// replyBuf starts a reply record: 4 bytes of record mark (filled by finish), xid, REPLY.
func replyBuf(buf []byte, xid uint32) *xdrWriter {
	w := &xdrWriter{b: append(buf[:0], 0, 0, 0, 0)}
	w.u32(xid)
	w.u32(rpcReply)
	return w
}

// accepted writes MSG_ACCEPTED with a null verifier and the given accept_stat.
func (w *xdrWriter) accepted(stat uint32) {
	w.u32(msgAccepted)
	w.u32(authNone)
	w.u32(0)
	w.u32(stat)
}

// callErrorReply writes the body of the reply for a failed header.
func (w *xdrWriter) callError(e *callError, lowVers, highVers uint32) {
	if e.denied {
		w.u32(msgDenied)
		w.u32(e.stat)
		if e.stat == rejectRPCMismatch {
			w.u32(2)
			w.u32(2)
		} else {
			w.u32(e.auth)
		}
		return
	}
	w.accepted(e.stat)
	if e.stat == acceptProgMismatch {
		w.u32(lowVers)
		w.u32(highVers)
	}
}

// finish fills in the record mark: one last fragment (with a spliced READ's data and
// padding, which follow b).
func (w *xdrWriter) finish() []byte {
	n := len(w.b) - 4
	if w.data != nil {
		n += (w.data.n + 3) &^ 3
	}
	binary.BigEndian.PutUint32(w.b, 0x80000000|uint32(n))
	return w.b
}
