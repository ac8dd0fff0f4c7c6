package demo

import (
	"bytes"
	"encoding/binary"
)

// euidProbe returns a tiny static arm64 Linux program that exits with its effective uid
// (mod 256): geteuid(); exit(euid). Installed setuid root it exits 0 when a user runs it,
// so the e2e test sees the setuid bit honoured over NFS, not just displayed.
//
// It is written here rather than taken from a package: busybox drops setuid privileges
// for almost every applet (FEATURE_SUID), and its /etc/busybox.conf escape hatch crashes
// the static Debian build's su. Four instructions need no toolchain.
func euidProbe() []byte {
	const (
		base    = 0x400000
		ehSize  = 64
		phSize  = 56
		codeOff = ehSize + phSize
	)
	code := []uint32{
		0xd28015e8, // mov x8, #175 (geteuid)
		0xd4000001, // svc #0       -> x0 = euid
		0xd2800ba8, // mov x8, #93  (exit)
		0xd4000001, // svc #0       -> exit(x0)
	}
	total := uint64(codeOff + 4*len(code))
	var b bytes.Buffer
	le := binary.LittleEndian
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2 /* 64-bit */, 1 /* LE */, 1 /* version */, 0 /* SysV */})
	b.Write(make([]byte, 8))
	binary.Write(&b, le, uint16(2))            // e_type: executable
	binary.Write(&b, le, uint16(183))          // e_machine: AArch64
	binary.Write(&b, le, uint32(1))            // e_version
	binary.Write(&b, le, uint64(base+codeOff)) // e_entry
	binary.Write(&b, le, uint64(ehSize))       // e_phoff
	binary.Write(&b, le, uint64(0))            // e_shoff
	binary.Write(&b, le, uint32(0))            // e_flags
	binary.Write(&b, le, uint16(ehSize))       // e_ehsize
	binary.Write(&b, le, uint16(phSize))       // e_phentsize
	binary.Write(&b, le, uint16(1))            // e_phnum
	binary.Write(&b, le, uint16(0))            // e_shentsize
	binary.Write(&b, le, uint16(0))            // e_shnum
	binary.Write(&b, le, uint16(0))            // e_shstrndx
	binary.Write(&b, le, uint32(1))            // p_type: PT_LOAD
	binary.Write(&b, le, uint32(5))            // p_flags: R+X
	binary.Write(&b, le, uint64(0))            // p_offset
	binary.Write(&b, le, uint64(base))         // p_vaddr
	binary.Write(&b, le, uint64(base))         // p_paddr
	binary.Write(&b, le, total)                // p_filesz
	binary.Write(&b, le, total)                // p_memsz
	binary.Write(&b, le, uint64(0x1000))       // p_align
	for _, c := range code {
		binary.Write(&b, le, c)
	}
	return b.Bytes()
}
