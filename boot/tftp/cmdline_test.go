package tftp

import (
	"slices"
	"strings"
	"testing"
)

func TestDedupeArgs(t *testing.T) {
	tests := []struct{ in, want string }{
		// The image and fleet.yaml's defaults both name the serial console: once, at the later place.
		{"console=serial0,115200 console=tty1 quiet root=/dev/nfs console=serial0,115200",
			"console=tty1 quiet root=/dev/nfs console=serial0,115200"},
		// Two different consoles are two consoles.
		{"console=serial0,115200 console=tty1", "console=serial0,115200 console=tty1"},
		// A single-valued key: the later source wins.
		{"init=/sbin/init root=/dev/nfs rw ip=dhcp rootwait init=/bin/sh ro ip=10.0.0.5::10.0.0.1:255.255.255.0",
			"root=/dev/nfs rootwait init=/bin/sh ro ip=10.0.0.5::10.0.0.1:255.255.255.0"},
		{"quiet splash quiet", "splash quiet"},
		{"cgroup_enable=cpuset cgroup_enable=memory", "cgroup_enable=cpuset cgroup_enable=memory"},
		// hugepages= counts belong to the hugepagesz= before them: identical repeats stay.
		{"hugepagesz=2M hugepages=64 hugepagesz=1G hugepages=64", "hugepagesz=2M hugepages=64 hugepagesz=1G hugepages=64"},
		// After "--" the arguments are init's.
		{"quiet -- single quiet", "quiet -- single quiet"},
		{"", ""},
	}
	for _, tc := range tests {
		if got := strings.Join(dedupeArgs(strings.Fields(tc.in)), " "); got != tc.want {
			t.Errorf("dedupeArgs(%q) =\n%q\nwant\n%q", tc.in, got, tc.want)
		}
	}
}

// TestCmdlineConsoleOnce: an image whose cmdline.txt names console=serial0,115200, and a
// fleet whose cmdline names it too, boot with one serial console, not two.
func TestCmdlineConsoleOnce(t *testing.T) {
	_, a, _ := twoBoards(t)
	a.Cmdline = "console=serial0,115200 pifleet.board=pi-a"
	got, err := Cmdline(a)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(got, "console=serial0,115200"); n != 1 {
		t.Errorf("console=serial0,115200 appears %d times in %q", n, got)
	}
	if !strings.Contains(got, "console=tty1") || !strings.HasSuffix(got, "console=serial0,115200 pifleet.board=pi-a\n") {
		t.Errorf("Cmdline = %q, want tty1 kept and the fleet's console last", got)
	}
}

// FuzzDedupeArgs: the result is a subsequence of the input that keeps every distinct
// argument, and deduplicating it again changes nothing.
func FuzzDedupeArgs(f *testing.F) {
	f.Add("console=serial0,115200 console=tty1 root=/dev/nfs console=serial0,115200 rw ro")
	f.Add("hugepagesz=2M hugepages=1 -- a a")
	f.Fuzz(func(t *testing.T, line string) {
		in := strings.Fields(line)
		out := dedupeArgs(in)
		if again := dedupeArgs(out); !slices.Equal(again, out) {
			t.Fatalf("not idempotent: %q -> %q -> %q", in, out, again)
		}
		i := 0
		for _, a := range out {
			for i < len(in) && in[i] != a {
				i++
			}
			if i == len(in) {
				t.Fatalf("%q is not a subsequence of %q", out, in)
			}
			i++
		}
		for _, a := range in {
			key, _, _ := strings.Cut(a, "=")
			if _, single := singleValued[key]; !single && !slices.Contains(out, a) {
				t.Fatalf("%q lost from %q -> %q", a, in, out)
			}
		}
	})
}
