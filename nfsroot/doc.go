// Package nfsroot serves every board's overlay root over NFSv3 and MOUNT v3 (RFC 1813):
// one export per board, reachable only from that board's address, with handles that never go stale.
//
// # Flow of one call
//
// nfsroot owns each TCP connection (conn.go): it reads ONC RPC records itself with bounded
// lengths (rpc.go; 1 MiB + 4 KiB for a board, 8 KiB for an address no export allows), parses
// the call header and AUTH_SYS credentials, routes the call by program and version (NFS v3,
// MOUNT v3 and NFS_ACL v3; other versions get PROG_MISMATCH 3-3, other programs
// PROG_UNAVAIL), decodes arguments with a bounded reader that never allocates (xdr.go),
// and answers against the board's overlay. A file handle names its export; the
// export must allow the caller's address (export.go, nfs.go bind) before any file system
// work, so a handle of board A sent by board B is refused (ACCES), and a forged one is STALE.
// Both listeners (ServeNFS, ServeMount) answer both programs. A lone request is answered on
// the reading goroutine; pipelined requests and WRITE/COMMIT run concurrently, up to 16 per
// connection, so one slow board or one fsync never stalls the others.
//
// # The portmapper (portmap.go)
//
// ServePortmap answers RPCBIND program 100000 versions 2-4 over TCP and UDP from a fixed
// table (NFS, NFS_ACL and MOUNT v3 on their TCP ports, itself), with the same record
// reader, call parser and reply writer, so that clients given no port options (the kernel,
// klibc nfsmount, mount.nfs) find NFS and MOUNT the standard way. Nothing can be registered from
// the network; TCP connections are bounded per address, and those of addresses outside the
// fleet in total; over UDP, datagrams over 2 KiB are dropped and no reply larger than its
// call goes to an address outside the fleet.
//
// # Limits (limits.go)
//
// Connections: 4096 in all (half of RLIMIT_NOFILE if that is less), a quarter of them for
// addresses no export allows ("strangers"), 16 per board address, 4 per stranger; one over
// a limit is closed at once, counted and logged (rate-limited). A board's connection closes
// after 15 idle minutes (the Linux client reconnects); a stranger's 30 s after it connected,
// busy or not (all it may do is be refused). Memory: a call holds
// its record and its estimated reply (READ and READDIR(PLUS) say how much they want) from
// before it runs until its reply is sent, against three byte budgets: 4 MiB per connection,
// 16 MiB per address, 96 MiB in all. A spent budget stops the reading of that connection
// (backpressure): a peer that does not read its replies gets no more calls read, and what it
// holds is bounded. Connections wait for a call holding a 4 KiB read buffer and nothing else.
// Records and replies are built in pooled buffers (bufpool.go, size classes of 8 KiB to 1 MiB);
// a call's cost is the capacity of both, so the budgets bound the pool too. A READ of 128 KiB
// or more, alone on its connection, sends its data from the page cache to the socket
// through a pipe (splice.go): the
// pipe holds page references in place of the reply buffer the call was charged for; pipes
// come from a server-wide pool of at most 64 (2 descriptors each), 1 per connection, 8 kept
// idle while any connection is open; with none free the READ is copied. A connection whose
// peer stops reading replies is closed after 2 minutes (its pipes with it). An Accept error such as EMFILE is retried with
// back-off (5 ms doubling to 1 s), counted (Stats) and logged; a listener that dies ends
// ServeNFS/ServeMount with an error. Log lines about a client are rate-limited per address
// (internal/ratelog: 5, then 1 a minute, and a "suppressed log lines" summary).
//
// # Removing an export (fence.go)
//
// Every call that binds a handle (or MNTs) is counted in on its export until it has built
// its reply. SetExports returns only after the calls on removed or replaced exports have
// finished; calls arriving later see the new table (STALE for a removed export). A board
// reset detaches the export this way before it moves the board's upper aside, so no call
// from before the reset can land in the fresh upper.
//
// # What comes from go-nfs, and why nothing is forwarded to it
//
// go-nfs v0.0.4 supplies the protocol vocabulary used throughout: nfs.NFSStatus,
// nfs.NFSProcedure, nfs.MountProcedure, nfs.MountStatus, nfs.FileType, nfs.FileAttribute,
// nfs.FileTime and nfs.ToNFSTime. Its request loop handles no procedure: each NFSv3
// procedure needs the caller's credentials (go-nfs never reads them), the persistent handle
// table (go-nfs's handles live in an in-memory LRU) or bounded decoding (go-nfs-client's xdr
// allocates what a request declares). The few left (NULL, FSSTAT, FSINFO, PATHCONF) would
// have needed a second handle translation and an in-process pipe for a few lines each, so
// they are answered here too. Replies are encoded by hand into byte slices (pooled)
// because reflection-based xdr.Write costs more than the file system call on the hot
// path.
//
// # File handles (handle.go, table.go)
//
// 32 bytes: "PF", version 1, a reserved byte, the export id (FNV-64a of board name and
// export path), the export instance id (8 random bytes kept in the board's state dir,
// regenerated when a reset deletes it, so old handles go STALE instead of naming new files),
// the overlay FileID (stable across copy-up, rename and restart), 4 reserved zero bytes.
// A handle with a reserved byte not zero is BADHANDLE.
// A per-board table FileID -> (parent FileID, name), kept as an append-only log in the state
// dir, turns a FileID back into a path; the path is verified by Lstat and FileID, else STALE.
// Table records are written to the log (write(2), which survives SIGKILL) before the reply
// that carries a new handle or a rename; fsync follows at every COMMIT or stable WRITE of the
// board and once a second, the same promise the board's data gets against power loss.
// Records are framed (magic, length, CRC-32C): replay skips a torn or corrupt record and keeps
// the good ones after it, and cuts a torn tail. A record whose write fails (a full disk) stays
// pending, a short write is cut back to the last whole record, and a reply that would carry
// a handle whose record is not yet written fails (SERVERFAULT) instead. The log is compacted
// on open when mostly dead; a format 1 log (before framing) is read and rewritten.
//
// # Caches, and why they cannot answer stale
//
// Per export: up to 32 open files (READ and WRITE through an open descriptor need no path
// walk, and a file removed while open stays readable through its handle); resolved handles
// and directory listings, reused only while the export's change count stands still (every
// mutating NFS call bumps it before and after, a reload bumps it) and for 2 s at most (a
// listing: 30 s while its directory's mtime and ctime have not moved, which they do when an
// entry is added, removed or renamed behind NFS); listings being walked with a cookie
// verifier live 30 s. Idle boards drop all of it. A resolved handle keeps where the overlay
// found the file (overlay.Loc); READ opens it there with overlay.OpenLoc, which trusts the
// location only while nothing in the overlay changed since, through NFS or not.
//
// # Unix semantics
//
// The overlay acts as root; every rule a kernel would apply for the AUTH_SYS caller is
// applied here first (perm.go): mode bits with owner/group/other and supplementary groups,
// POSIX ACLs (acl.go: the kernel's access check, read from the system.posix_acl_access
// xattr, cached by FileID and ctime), owner override for READ/WRITE as knfsd does, sticky
// directories, chown/chgrp/chmod/utimes rules, setuid/setgid cleared by a non-root WRITE or
// size change and by chown, fs.protected_hardlinks on LINK, devices only for root, setgid
// inheritance, default ACL inheritance (posix_acl_create), ACCESS answered truthfully.
// NFS_ACL v3 (nfsacl.go) lets getfacl/setfacl on a board read and change the same xattrs.
// Optional root squash maps uid/gid 0 to 65534. WRITE answers FILE_SYNC only after fsync, otherwise
// UNSTABLE; COMMIT fsyncs; the write verifier changes only with a new Server.
package nfsroot
