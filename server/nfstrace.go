package server

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/pifleet/pifleet/nfsroot"
)

// nfsTraceEnv names a file to which the server appends every answered NFS, MOUNT and
// NFS_ACL call (a debugging and capture aid: test/scale's boot trace is made from it;
// see the README's "Scale" section). Unset, nothing is traced.
const nfsTraceEnv = "PIFLEET_NFS_TRACE"

// nfsTraceVersion is the record layout's version, the first word of every record (the
// first layout, without it, began with the reply time, whose high word is never 2).
const nfsTraceVersion = 2

// nfsTrace writes one binary record per call, all integers big-endian: u32 length of the
// rest, u32 version (2), i64 Unix nanoseconds of the call's arrival and of its reply,
// u32 program, u32 procedure, u32 uid, u32 gid, u32 number of groups and that many u32
// groups (the AUTH_SYS credential), then board name, arguments and reply record as
// u32-length-prefixed bytes. WRITE data and READ data are cut (the sizes stay in the
// headers), so the file grows with the number of calls, not the bytes moved.
type nfsTrace struct {
	mu  sync.Mutex
	f   *os.File
	buf []byte
}

// openNFSTrace opens the trace named by PIFLEET_NFS_TRACE, or returns nil if unset.
func openNFSTrace() (*nfsTrace, error) {
	p := os.Getenv(nfsTraceEnv)
	if p == "" {
		return nil, nil
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", nfsTraceEnv, err)
	}
	return &nfsTrace{f: f}, nil
}

// record appends c; a write error ends the trace (the server goes on).
func (t *nfsTrace) record(c nfsroot.Call) {
	args, reply := c.Args, c.Reply
	if c.Program == 100003 && c.Proc == 7 { // WRITE: fh, offset, count, stable, data
		args = args[:min(len(args), 256)]
	}
	if c.Program == 100003 && c.Proc == 6 { // READ: status, attributes, count, eof, data
		reply = reply[:min(len(reply), 160)]
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.f == nil {
		return
	}
	b := binary.BigEndian.AppendUint32(t.buf[:0], 0)
	b = binary.BigEndian.AppendUint32(b, nfsTraceVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(c.Arrived.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(time.Now().UnixNano()))
	b = binary.BigEndian.AppendUint32(b, c.Program)
	b = binary.BigEndian.AppendUint32(b, c.Proc)
	b = binary.BigEndian.AppendUint32(b, c.UID)
	b = binary.BigEndian.AppendUint32(b, c.GID)
	b = binary.BigEndian.AppendUint32(b, uint32(len(c.GIDs)))
	for _, g := range c.GIDs {
		b = binary.BigEndian.AppendUint32(b, g)
	}
	for _, s := range [][]byte{[]byte(c.Board), args, reply} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	t.buf = b
	if _, err := t.f.Write(b); err != nil {
		t.f.Close()
		t.f = nil
	}
}
