// Package nfsroot serves every board's overlay root over NFSv3 and MOUNT v3, built on go-nfs's
// protocol types: board isolation by export and client address, persistent handles, Unix permissions.
//
// nfsroot owns each TCP connection: it reads the ONC RPC records itself with bounded lengths,
// parses the call header and AUTH_SYS credentials, checks the caller against the board the file
// handle belongs to, and answers the NFSv3 procedures directly against the board's overlay.
//
// What comes from go-nfs and what does not, and why: go-nfs v0.0.4 supplies the protocol
// vocabulary used throughout (nfs.NFSStatus, nfs.NFSProcedure, nfs.MountStatus, nfs.FileAttribute,
// nfs.FileTime, nfs.ToNFSTime). Its request loop is not used for any procedure: every NFSv3
// procedure needs either the caller's credentials (which go-nfs never reads), the persistent handle
// table (go-nfs's handles are an in-memory LRU that goes stale) or bounded decoding (go-nfs-client's
// xdr allocates whatever length a request declares). Forwarding the remaining handful (FSSTAT,
// FSINFO, PATHCONF, NULL) through an in-process pipe would have added a second decoder and a
// second handle translation for procedures that are a few lines each, so they are answered here too.
// Encoding is done by hand on appended byte slices because the reflection-based xdr.Write costs
// more than the file system call on the hot path (GETATTR, LOOKUP, READ, READDIRPLUS).
//
// File handles (32 bytes): "PF" magic, version 1, a reserved byte, the export id (FNV-64 of board
// name and export path), the export instance id (random, kept in the board's state dir, so a reset
// board's old handles go STALE) and the overlay FileID, then 4 reserved zero bytes. The FileID is
// resolved to a current path through a per-board table FileID -> (parent FileID, name) that is
// appended to a log in the state dir and fsynced before any reply carries a new handle, so handles
// survive restarts, renames of the file or any parent, and copy-up.
package nfsroot
