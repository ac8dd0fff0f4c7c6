package tftp

import "strings"

// singleValued are kernel arguments that take one value, the last one given winning (the
// kernel's own rule for them): root, the NFS root, init, log level, systemd's target.
// When two sources set one, the later source's stays and the earlier one goes, so a
// board's "ro" or "ip=..." replaces what pifleet or the image put there. "rw" and "ro"
// are one setting. Keys not listed may repeat with different values: console= (one
// console per entry, the last one is /dev/console), cgroup_enable=, video=,
// systemd.setenv=, hugepagesz=/hugepages= pairs.
var singleValued = map[string]string{
	"root": "root", "rootfstype": "rootfstype", "rootflags": "rootflags", "rootdelay": "rootdelay",
	"rootwait": "rootwait", "nfsroot": "nfsroot", "nfsrootdebug": "nfsrootdebug", "ip": "ip",
	"init": "init", "rdinit": "rdinit", "rw": "rw/ro", "ro": "rw/ro", "loglevel": "loglevel",
	"panic": "panic", "fsck.repair": "fsck.repair", "fsck.mode": "fsck.mode",
	"systemd.unit": "systemd.unit", "net.ifnames": "net.ifnames", "consoleblank": "consoleblank",
	"elevator": "elevator", "cma": "cma", "earlycon": "earlycon", "smsc95xx.macaddr": "smsc95xx.macaddr",
}

// positional keys give meaning to the arguments after them (hugepagesz=2M hugepages=64
// hugepagesz=1G hugepages=2): even an identical repeat of one of them stays.
var positional = map[string]bool{"hugepagesz": true, "hugepages": true, "default_hugepagesz": true}

// dedupeArgs removes repeats from a kernel command line assembled from several sources
// (the image's cmdline.txt, pifleet's NFS root options, the fleet's defaults, the
// board's own): an argument given twice word for word is kept once, and a single-valued
// key set twice keeps its last setting. What stays keeps its last position, so the
// later source's order wins too (a console= repeated by fleet.yaml becomes the last
// console, /dev/console). Everything after "--" is init's and passes untouched.
func dedupeArgs(args []string) []string {
	tail := []string(nil)
	for i, a := range args {
		if a == "--" {
			args, tail = args[:i], args[i:]
			break
		}
	}
	seen := make(map[string]bool, len(args))
	keep := make([]bool, len(args))
	for i := len(args) - 1; i >= 0; i-- {
		key, _, _ := strings.Cut(args[i], "=")
		if positional[key] {
			keep[i] = true
			continue
		}
		id := "arg " + args[i]
		if k, ok := singleValued[key]; ok {
			id = "key " + k
		}
		if !seen[id] {
			seen[id] = true
			keep[i] = true
		}
	}
	out := make([]string, 0, len(args)+len(tail))
	for i, a := range args {
		if keep[i] {
			out = append(out, a)
		}
	}
	return append(out, tail...)
}
