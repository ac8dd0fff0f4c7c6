package nfsroot

import "syscall"

// sysStat reads the status a FileInfo's Sys() carries.
func sysStat(sys any) (fstat, bool) {
	switch st := sys.(type) {
	case *syscall.Stat_t:
		return sysStatFromSyscall(st), true
	}
	return fstat{}, false
}
