package shell

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Debian's qemu-user-static registration for arm64, as /proc/sys/fs/binfmt_misc shows it.
const qemuAarch64Entry = `enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: PF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
`

// arm64ELF and x86ELF are the first 20 bytes of an executable of each.
var (
	arm64ELF = []byte("\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00")
	x86ELF   = []byte("\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00\x3e\x00")
)

func TestCheckRunnable(t *testing.T) {
	e, err := parseBinfmtEntry("qemu-aarch64", []byte(qemuAarch64Entry))
	if err != nil {
		t.Fatal(err)
	}
	if !e.Enabled || e.Flags != "PF" || !e.matches(arm64ELF) || e.matches(x86ELF) {
		t.Fatalf("parsed %+v", e)
	}
	noF := e
	noF.Flags = "P"
	off := e
	off.Enabled = false
	for _, c := range []struct {
		name    string
		bf      binfmt
		uname   string
		head    []byte
		wantErr string
	}{
		{"registered", binfmt{Entries: []binfmtEntry{e}}, "x86_64", arm64ELF, ""},
		{"native arm64", binfmt{}, "aarch64", arm64ELF, ""},
		{"native x86", binfmt{}, "x86_64", x86ELF, ""},
		{"script", binfmt{}, "x86_64", []byte("#!/bin/sh\n"), ""},
		{"none", binfmt{Dir: "/b"}, "x86_64", arm64ELF, "apt-get install qemu-user-static binfmt-support"},
		{"no F", binfmt{Entries: []binfmtEntry{noF}}, "x86_64", arm64ELF, "lacks the F (fix-binary) flag"},
		{"disabled entry", binfmt{Entries: []binfmtEntry{off}}, "x86_64", arm64ELF, "update-binfmts --enable qemu-aarch64"},
		{"disabled binfmt", binfmt{Dir: "/b", Disabled: true, Entries: []binfmtEntry{e}}, "x86_64", arm64ELF, "echo 1 > /b/status"},
	} {
		err := c.bf.checkRunnable(c.uname, "/bin/sh", c.head)
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.wantErr)
		}
	}
}

// TestReadBinfmtDir reads a dir laid out as binfmt_misc is; an empty dir has no handlers.
func TestReadBinfmtDir(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "status"), []byte("enabled\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "register"), nil, 0o200))
	must(t, os.WriteFile(filepath.Join(dir, "qemu-aarch64"), []byte(qemuAarch64Entry), 0o644))
	bf, err := readBinfmt(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(bf.Entries) != 1 || bf.Disabled || bf.checkRunnable("x86_64", "/bin/sh", arm64ELF) != nil {
		t.Fatalf("read %+v", bf)
	}
	bf, err = readBinfmt(t.TempDir())
	if err != nil || len(bf.Entries) != 0 {
		t.Fatalf("empty dir: %+v %v", bf, err)
	}
}

func TestScriptInterpreter(t *testing.T) {
	for in, want := range map[string]string{"#!/bin/sh -e\nx": "/bin/sh", "#! /usr/bin/env python3": "/usr/bin/env", "#!\n": "", "\x7fELF": ""} {
		got, ok := scriptInterpreter([]byte(in))
		if got != want || ok != (want != "") {
			t.Errorf("%q: got %q %v", in, got, ok)
		}
	}
}

// FuzzParseBinfmtEntry: any text parses or fails without panicking, and a parsed entry
// can be matched against any header.
func FuzzParseBinfmtEntry(f *testing.F) {
	f.Add([]byte(qemuAarch64Entry), arm64ELF)
	f.Add([]byte("enabled\noffset 130\nmagic 00\n"), x86ELF)
	f.Add([]byte("disabled\nextension .exe\n"), []byte{})
	f.Fuzz(func(t *testing.T, entry, head []byte) {
		e, err := parseBinfmtEntry("x", entry)
		if err != nil {
			return
		}
		e.matches(head)
		_ = (&binfmt{Entries: []binfmtEntry{e}}).checkRunnable("x86_64", "/x", head)
	})
}
