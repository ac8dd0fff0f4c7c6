package shell

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultBinfmtDir is where the kernel's binfmt_misc is mounted.
const DefaultBinfmtDir = "/proc/sys/fs/binfmt_misc"

// binfmtEntry is one registered binfmt_misc handler, as its file in the binfmt_misc dir
// describes it ("enabled", "interpreter ...", "flags: PF", "offset 0", "magic ...", "mask ...").
type binfmtEntry struct {
	Name        string
	Enabled     bool
	Interpreter string
	Flags       string
	Offset      int
	Magic, Mask []byte
}

// maxBinfmtEntry bounds what is read of one entry file: the kernel's are a few hundred bytes.
const maxBinfmtEntry = 4096

// parseBinfmtEntry reads the text the kernel shows for one entry. Extension entries (E)
// have no magic and never match an ELF header.
func parseBinfmtEntry(name string, b []byte) (binfmtEntry, error) {
	e := binfmtEntry{Name: name}
	if len(b) > maxBinfmtEntry {
		return e, fmt.Errorf("binfmt entry %s: %d bytes, larger than the kernel writes", name, len(b))
	}
	for _, line := range strings.Split(string(b), "\n") {
		key, val, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch key {
		case "enabled":
			e.Enabled = true
		case "interpreter":
			e.Interpreter = val
		case "flags:":
			e.Flags = val
		case "offset":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 || n > 128 {
				return e, fmt.Errorf("binfmt entry %s: offset %q", name, val)
			}
			e.Offset = n
		case "magic", "mask":
			h, err := hex.DecodeString(val)
			if err != nil || len(h) > 128 {
				return e, fmt.Errorf("binfmt entry %s: %s %q", name, key, val)
			}
			if key == "magic" {
				e.Magic = h
			} else {
				e.Mask = h
			}
		}
	}
	if e.Mask != nil && len(e.Mask) != len(e.Magic) {
		return e, fmt.Errorf("binfmt entry %s: mask and magic differ in length", name)
	}
	return e, nil
}

// matches reports whether the entry handles a file starting with head, as the kernel
// decides it: magic compared at offset under the mask.
func (e binfmtEntry) matches(head []byte) bool {
	if len(e.Magic) == 0 || e.Offset+len(e.Magic) > len(head) {
		return false
	}
	for i, m := range e.Magic {
		c := head[e.Offset+i]
		if e.Mask != nil {
			c &= e.Mask[i]
			m &= e.Mask[i]
		}
		if c != m {
			return false
		}
	}
	return true
}

// binfmt is what the check knows of the host's binfmt_misc: its entries, or that the
// whole mechanism is disabled.
type binfmt struct {
	Dir      string
	Disabled bool // the status file says "disabled"
	Entries  []binfmtEntry
}

// readBinfmt reads every entry of the binfmt_misc dir. A dir without a status file is not
// a mounted binfmt_misc: the kernel's default location is mounted then (in the caller's
// private mount namespace); any other dir (a test's) reads as having no entries.
func readBinfmt(dir string) (*binfmt, error) {
	bf := &binfmt{Dir: dir}
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if errors.Is(err, os.ErrNotExist) && dir == DefaultBinfmtDir {
		if err := unix.Mount("binfmt_misc", dir, "binfmt_misc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return nil, fmt.Errorf("mount binfmt_misc on %s: %w", dir, err)
		}
		status, err = os.ReadFile(filepath.Join(dir, "status"))
	}
	if errors.Is(err, os.ErrNotExist) {
		return bf, nil
	}
	if err != nil {
		return nil, fmt.Errorf("binfmt_misc: %w", err)
	}
	bf.Disabled = strings.TrimSpace(string(status)) == "disabled"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("binfmt_misc: %w", err)
	}
	for _, de := range ents {
		if de.Name() == "status" || de.Name() == "register" || !de.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			continue // unregistered while we read
		}
		e, err := parseBinfmtEntry(de.Name(), b)
		if err != nil {
			return nil, err
		}
		bf.Entries = append(bf.Entries, e)
	}
	return bf, nil
}

// ELF machine numbers (elf.h) of the architectures a Pi image or a server has.
const (
	emI386    = 3
	emARM     = 40
	emX86_64  = 62
	emAARCH64 = 183
	emRISCV   = 243
)

var machineNames = map[uint16]string{emI386: "i386", emARM: "arm", emX86_64: "x86_64", emAARCH64: "aarch64", emRISCV: "riscv64"}

// elfMachine returns the e_machine of an ELF header, or ok=false for anything else.
func elfMachine(head []byte) (uint16, bool) {
	if len(head) < 20 || !bytes.HasPrefix(head, []byte("\x7fELF")) {
		return 0, false
	}
	if head[5] == 2 { // big-endian
		return binary.BigEndian.Uint16(head[18:]), true
	}
	return binary.LittleEndian.Uint16(head[18:]), true
}

// runsNatively reports whether a host of machine uname (uname -m) executes ELF files of
// machine m without an emulator: its own, and the 32-bit sibling an x86_64 or arm64
// kernel runs (on arm64 only where the CPU has AArch32, as the Pi's does).
func runsNatively(uname string, m uint16) bool {
	switch uname {
	case "x86_64":
		return m == emX86_64 || m == emI386
	case "aarch64", "arm64":
		return m == emAARCH64 || m == emARM
	case "i386", "i486", "i586", "i686":
		return m == emI386
	case "riscv64":
		return m == emRISCV
	}
	return strings.HasPrefix(uname, "armv") && m == emARM
}

// checkRunnable tells whether the host can exec a file starting with head, found at path
// in the image: natively, or through an enabled binfmt_misc handler with the F
// (fix-binary) flag, which the kernel opened when it was registered, so it works inside
// the chroot, where the interpreter's path does not exist. The errors say what to install
// or enable.
func (bf *binfmt) checkRunnable(uname, path string, head []byte) error {
	m, ok := elfMachine(head)
	if !ok || runsNatively(uname, m) {
		return nil // a script's interpreter is checked by the caller; other formats fail at exec
	}
	arch := machineNames[m]
	if arch == "" {
		arch = fmt.Sprintf("ELF machine %d", m)
	}
	install := fmt.Sprintf("install the emulator: apt-get install qemu-user-static binfmt-support (then: update-binfmts --enable qemu-%s)", arch)
	if bf.Disabled {
		return fmt.Errorf("%s is an %s binary and binfmt_misc is disabled on this host (%s/status): echo 1 > %s/status", path, arch, bf.Dir, bf.Dir)
	}
	var noFix *binfmtEntry
	for i, e := range bf.Entries {
		if !e.matches(head) {
			continue
		}
		if !e.Enabled {
			return fmt.Errorf("%s is an %s binary and its binfmt handler %s is disabled: update-binfmts --enable %s", path, arch, e.Name, e.Name)
		}
		if strings.Contains(e.Flags, "F") {
			return nil
		}
		noFix = &bf.Entries[i]
	}
	if noFix != nil {
		return fmt.Errorf("%s is an %s binary and its binfmt handler %s lacks the F (fix-binary) flag, so the kernel would look for %s inside the image: "+
			"register it with F, as Debian's qemu-user-static does (apt-get install qemu-user-static binfmt-support)", path, arch, noFix.Name, noFix.Interpreter)
	}
	return fmt.Errorf("%s is an %s binary and this %s host has no binfmt_misc handler for it in %s: %s", path, arch, uname, bf.Dir, install)
}
