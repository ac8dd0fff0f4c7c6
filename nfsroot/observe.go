package nfsroot

import (
	"encoding/binary"
	"time"
)

// Call is one answered call, as Options.Observer sees it: which procedure, how it ended,
// how long the server took (from the parsed call to the reply record, not counting the
// time the reply waits to be sent), when it arrived, who sent it and which board's export
// it ran against. Its names come from fixed tables, so a caller that labels metrics with
// them has bounded labels.
type Call struct {
	Program  uint32 // the RPC program number (100003 NFS, 100005 MOUNT, 100227 NFS_ACL)
	Proc     uint32 // the procedure number
	Status   uint32 // the nfsstat3 / mountstat3 result (0 = OK) when Accept is 0
	Accept   int32  // the RPC accept_stat (0 = SUCCESS); -1 when the call was denied
	Board    string // the board whose export the call used; "" if none (e.g. MOUNT, strangers' bad handles)
	Duration time.Duration
	// Arrived is, with Options.ExactArrivals, when the server had read the call's record
	// off the connection (before it waited for a goroutine or for its buffer budget), else
	// when the call started running; it was answered Duration after it started running.
	Arrived time.Time
	// UID, GID and GIDs are the caller's AUTH_SYS credential as it sent it, before any
	// root squash (an AUTH_NONE caller shows as 65534/65534 with no GIDs). GIDs aliases
	// the call's header: valid only while the Observer runs.
	UID, GID uint32
	GIDs     []uint32
	// Args and Reply are the call's XDR arguments and its whole reply record, for a
	// tracer. They alias the server's buffers: valid only while the Observer runs. A READ
	// whose data is spliced from the file to the socket has only its head in Reply (up to
	// the data's length; the record mark counts the data).
	Args, Reply []byte
}

// ProgramName names the call's program: "nfs", "mount", "nfsacl" or "other".
func (c Call) ProgramName() string {
	switch c.Program {
	case progNFS:
		return "nfs"
	case progMount:
		return "mount"
	case progNFSACL:
		return "nfsacl"
	}
	return "other"
}

var (
	nfsProcNames   = []string{"null", "getattr", "setattr", "lookup", "access", "readlink", "read", "write", "create", "mkdir", "symlink", "mknod", "remove", "rmdir", "rename", "link", "readdir", "readdirplus", "fsstat", "fsinfo", "pathconf", "commit"}
	mountProcNames = []string{"null", "mnt", "dump", "umnt", "umntall", "export"}
	aclProcNames   = []string{"null", "getacl", "setacl"}
)

// ProcName names the procedure in lower case as RFC 1813 does ("getattr", "mnt"), or
// "unknown" for a number the program does not have.
func (c Call) ProcName() string {
	var names []string
	switch c.Program {
	case progNFS:
		names = nfsProcNames
	case progMount:
		names = mountProcNames
	case progNFSACL:
		names = aclProcNames
	}
	if int64(c.Proc) < int64(len(names)) {
		return names[c.Proc]
	}
	return "unknown"
}

// statusNames are the nfsstat3 values (RFC 1813 2.6); mountstat3 uses the same numbers.
var statusNames = map[uint32]string{
	0: "ok", 1: "perm", 2: "noent", 5: "io", 6: "nxio", 13: "acces", 17: "exist", 18: "xdev",
	19: "nodev", 20: "notdir", 21: "isdir", 22: "inval", 27: "fbig", 28: "nospc", 30: "rofs",
	31: "mlink", 63: "nametoolong", 66: "notempty", 69: "dquot", 70: "stale", 71: "remote",
	10001: "badhandle", 10002: "not_sync", 10003: "bad_cookie", 10004: "notsupp",
	10005: "toosmall", 10006: "serverfault", 10007: "badtype", 10008: "jukebox",
}

var acceptNames = []string{"ok", "prog_unavail", "prog_mismatch", "proc_unavail", "garbage_args", "system_err"}

// StatusName is how the call ended: the NFS or MOUNT status in lower case without its
// prefix ("ok", "noent", "stale"), or an RPC-level failure ("garbage_args",
// "proc_unavail", "denied"); "other" for a value outside RFC 1813's lists.
func (c Call) StatusName() string {
	switch {
	case c.Accept < 0:
		return "denied"
	case c.Accept > 0:
		if int(c.Accept) < len(acceptNames) {
			return acceptNames[c.Accept]
		}
		return "other"
	}
	if n, ok := statusNames[c.Status]; ok {
		return n
	}
	return "other"
}

// callOf describes a call from its header and its reply record (rpc.go's layout: record
// mark, xid, REPLY, reply_stat, then verifier and accept_stat when accepted, then the
// procedure's result, whose first word is its status for the procedures that have one).
func callOf(h *rpcCallHdr, rec []byte, d time.Duration) Call {
	c := Call{Program: h.prog, Proc: h.proc, Duration: d, Args: h.args, Reply: rec,
		Arrived: h.arrived, UID: h.cred.uid, GID: h.cred.gid, GIDs: h.cred.gids}
	if len(h.held) > 0 {
		c.Board = h.held[0].Board
	}
	word := func(i int) (uint32, bool) {
		off := 4 + 4*i
		if len(rec) < off+4 {
			return 0, false
		}
		return binary.BigEndian.Uint32(rec[off:]), true
	}
	if st, _ := word(2); st == msgDenied {
		c.Accept = -1
		return c
	}
	acc, _ := word(5)
	c.Accept = int32(min(acc, 1<<30))
	if acc == acceptSuccess && hasStatus(h.prog, h.proc) {
		c.Status, _ = word(6)
	}
	return c
}

// hasStatus reports whether a procedure's result starts with a status word.
func hasStatus(prog, proc uint32) bool {
	switch prog {
	case progNFS:
		return proc >= 1 && proc < uint32(len(nfsProcNames))
	case progMount:
		return proc == 1 // MNT; UMNT, DUMP and EXPORT return none
	case progNFSACL:
		return proc == 1 || proc == 2
	}
	return false
}
