package server

import (
	"fmt"
	"path/filepath"
)

// State is the on-disk layout of the state dir (fleet.yaml's server.state). It is the
// one place that knows where things live:
//
//	layout                       the layout version of the state dir ("pifleet state layout 2", statedir.go)
//	images/layers/<sha256>/      immutable image layers (package images owns the inside)
//	images/<image>/image.yaml    an image: its stack of layers, its base
//	boards/<board>/upper/        the board's writes, in overlayfs format
//	boards/<board>/work/         scratch for crash-safe copy-up (same file system as upper)
//	boards/<board>/nfs/          NFS handle table and instance id (package nfsroot)
//	boards/<board>/identity/     per-board identity layer: hostname, machine-id, SSH keys
//	boards/<board>/address       learned address of a board without a fixed IP
//	boards/<board>/image.json    the image stack the board runs, and the one before its last switch (rollout.go)
//	boards/.trash/               board dirs moved aside by a reset, deleted next
//	history/boards/<board>.jsonl recent boots and board events (resets), kept across resets (history.go)
//	history/unknown.jsonl        clients seen that are not in the fleet
//	dhcp/leases.json             full-mode DHCP leases
//	cache/                       downloaded .debs for the demo image
//	lock                         flock held by the one server (or offline command) using the dir (lock.go)
//	serve.json                   the running server's pid, HTTP addresses and token file
//	api-token                    bearer token for state-changing API calls (0600)
type State struct {
	// Dir is the state directory, absolute.
	Dir string
}

// Images is the image store's directory.
func (s State) Images() string { return filepath.Join(s.Dir, "images") }

// LayoutFile records the state dir's layout version (UpgradeState).
func (s State) LayoutFile() string { return filepath.Join(s.Dir, "layout") }

// Boards is the directory holding every board's dir.
func (s State) Boards() string { return filepath.Join(s.Dir, "boards") }

// Board is the directory of one board's state.
func (s State) Board(name string) string { return filepath.Join(s.Boards(), name) }

// Upper is the board's overlay upper dir.
func (s State) Upper(name string) string { return filepath.Join(s.Board(name), "upper") }

// Work is the board's overlay scratch dir.
func (s State) Work(name string) string { return filepath.Join(s.Board(name), "work") }

// NFS is the board's NFS state dir (handle table).
func (s State) NFS(name string) string { return filepath.Join(s.Board(name), "nfs") }

// Identity is the board's identity layer, the topmost lower of its overlay.
func (s State) Identity(name string) string { return filepath.Join(s.Board(name), "identity") }

// Address holds the address a board without a fixed IP was last seen booting from, so
// that after a server restart its running system can still reach its NFS root.
func (s State) Address(name string) string { return filepath.Join(s.Board(name), "address") }

// ImageRecord holds the image stack a board runs and the one it ran before (rollout.go).
func (s State) ImageRecord(name string) string { return filepath.Join(s.Board(name), "image.json") }

// Trash holds board dirs that a reset moved aside and has not finished deleting.
func (s State) Trash() string { return filepath.Join(s.Boards(), ".trash") }

// historyExt ends the name of a board's history file.
const historyExt = ".jsonl"

// Histories is the directory of the boards' history files. It lies outside boards/ so
// that a reset, which moves the board's dir aside, keeps the board's history.
func (s State) Histories() string { return filepath.Join(s.Dir, "history", "boards") }

// BoardHistory is one board's history file: its recent boots and board events.
func (s State) BoardHistory(name string) string {
	return filepath.Join(s.Histories(), name+historyExt)
}

// UnknownClients is the file of the clients seen that are not in the fleet.
func (s State) UnknownClients() string { return filepath.Join(s.Dir, "history", "unknown.jsonl") }

// Leases is the full-mode DHCP lease file.
func (s State) Leases() string { return filepath.Join(s.Dir, "dhcp", "leases.json") }

// Cache holds downloads (the demo image's .debs).
func (s State) Cache() string { return filepath.Join(s.Dir, "cache") }

// Export is the NFS export path a board mounts; the same string goes into its
// cmdline.txt (nfsroot=) and into the NFS server's export table.
func Export(board string) string { return "/boards/" + board }

// NFSRoot is the value of a board's nfsroot= kernel argument, which every client stack
// reads: the kernel's own NFS root, initramfs-tools (klibc nfsmount), dracut's nfs module
// (mount.nfs) and busybox-based initramfs scripts. The options are the ones all of them
// accept: vers=3 and tcp (what pifleet serves) and nolock (pifleet serves no NLM).
//
// Ports are left to the portmapper, which pifleet serves on 111 and which answers with
// the configured NFS and MOUNT ports, default or not: that is the one way that works for
// every stack. klibc nfsmount takes port= but rejects mountport= ("bad option", and
// initramfs-tools retries forever) and asks the portmapper on 111, hard-coded, for MOUNT.
// Only when the portmapper is moved off 111 (where no client looks for it) or turned off
// are both ports given: the kernel, mount.nfs and busybox (whose mount hands the string to the
// kernel's parser) accept port=/mountport=; klibc cannot mount then, and Load warns.
func NFSRoot(server string, board string, p Ports) string {
	opts := "vers=3,tcp,nolock"
	if p.Portmap != DefaultPorts().Portmap {
		opts = fmt.Sprintf("vers=3,tcp,port=%d,mountport=%d,nolock", p.NFS, p.Mount)
	}
	return server + ":" + Export(board) + "," + opts
}
