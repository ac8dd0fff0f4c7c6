package demo

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/test/require"
)

// These tests need neither root nor downloads.

func TestPickKernel(t *testing.T) {
	for _, tc := range []struct {
		names []string
		want  string
	}{
		{[]string{"linux-image-6.1.0-9-arm64", "linux-image-6.1.0-10-arm64", "linux-image-6.1.0-56-cloud-arm64", "linux-image-6.1.0-57-rt-arm64"}, "6.1.0-10-arm64"},
		{[]string{"linux-image-6.1.0-56-arm64-unsigned", "linux-image-6.1.0-56-amd64"}, ""},
		{nil, ""},
	} {
		if got := pickKernel(tc.names); got != tc.want {
			t.Errorf("pickKernel(%q) = %q, want %q", tc.names, got, tc.want)
		}
	}
}

// TestCpioWriterReadByGNUCpio holds our newc writer against GNU cpio, which we did not write.
func TestCpioWriterReadByGNUCpio(t *testing.T) {
	require.Tool(t, "cpio", "cpio")
	var raw bytes.Buffer
	c := &cpioWriter{w: &raw}
	c.Dir("bin", 0o755)
	c.File("bin/odd", 0o750, []byte("abc")) // a length that needs padding
	c.Symlink("bin/sh", "odd")
	c.CharDev("console", 0o600, 5, 1)
	c.File("init", 0o755, []byte("#!/bin/sh\n"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if raw.Len()%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", raw.Len())
	}
	cmd := exec.Command("cpio", "-t", "-v", "--quiet")
	cmd.Stdin = bytes.NewReader(raw.Bytes())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -tv: %v", err)
	}
	listing := string(out)
	for _, want := range []string{"drwxr-xr-x", "-rwxr-x---", " 3 ", "bin/odd", "bin/sh -> odd", "crw-------", "5,", "console", "init"} {
		if !strings.Contains(listing, want) {
			t.Errorf("cpio listing lacks %q:\n%s", want, listing)
		}
	}
}

func TestBusyboxAppletTable(t *testing.T) {
	table := "junk\x00[\x00[[\x00" + strings.Join([]string{"ash", "cat", "init", "ln", "mount", "mv", "sh", "stat", "su", "switch_root", "udhcpc"}, "\x00") + "\x00\x00more"
	// Pad the table past the sanity minimum of 50 names with sorted filler.
	var filler []string
	for i := 0; i < 50; i++ {
		filler = append(filler, "zz"+string(rune('a'+i/26))+string(rune('a'+i%26)))
	}
	table = strings.Replace(table, "\x00\x00more", "\x00"+strings.Join(filler, "\x00")+"\x00\x00more", 1)
	names, err := busyboxApplets([]byte(table))
	if err != nil {
		t.Fatal(err)
	}
	if names[0] != "[" || names[len(names)-1] != filler[len(filler)-1] {
		t.Errorf("applet table read as %v...%v", names[:3], names[len(names)-3:])
	}
	if _, err := busyboxApplets([]byte("[\x00[[\x00zz\x00aa\x00\x00")); err == nil {
		t.Error("an unsorted table was accepted")
	}
}
