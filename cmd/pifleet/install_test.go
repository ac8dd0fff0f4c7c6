package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/test/require"
)

// repoRoot is the checkout this package is in (the Makefile's directory).
const repoRoot = "../.."

func makeInstall(t *testing.T, vars ...string) string {
	t.Helper()
	args := append([]string{"-C", repoRoot, "install", "START=no", "BIN=" + filepath.Join(t.TempDir(), "pifleet")}, vars...)
	out, err := exec.Command("make", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestMakeInstall: `make install` into a PREFIX puts a static binary that knows its
// revision, a unit that systemd-analyze verify accepts, and a fleet.yaml that check
// passes and that a second install keeps.
func TestMakeInstall(t *testing.T) {
	require.Tools(t, map[string]string{"make": "make", "systemd-analyze": "systemd"})
	dir := t.TempDir()
	prefix, etc := filepath.Join(dir, "usr"), filepath.Join(dir, "etc")
	out := makeInstall(t, "PREFIX="+prefix, "SYSCONFDIR="+etc)
	if !strings.Contains(out, "not starting the service") {
		t.Errorf("START=no still started something:\n%s", out)
	}
	bin := filepath.Join(prefix, "bin", "pifleet")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s is dynamically linked (has an ELF interpreter); want CGO_ENABLED=0", bin)
		}
	}
	f.Close()

	// The revision comes from git (the Makefile builds with -buildvcs=false).
	ver, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	head, err := exec.Command("git", "-C", repoRoot, "rev-parse", "HEAD").Output()
	want := "revision unknown\n"
	if err == nil {
		want = "revision " + strings.TrimSpace(string(head))
	}
	if !strings.HasPrefix(string(ver), "pifleet ") || !strings.Contains(string(ver), want) {
		t.Errorf("pifleet version:\n%s\nwant %q", ver, want)
	}

	unit := filepath.Join(prefix, "lib", "systemd", "system", "pifleet.service")
	data, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"ExecStart=" + bin + " serve -c " + filepath.Join(etc, "pifleet", "fleet.yaml") + "\n",
		"ProtectSystem=strict\n", "ReadWritePaths=/var/lib/pifleet\n", "NoNewPrivileges=yes\n", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE "} {
		if !strings.Contains(string(data), w) {
			t.Errorf("unit lacks %q", w)
		}
	}
	// These would refuse what board roots do: mknod of devices (the device policy they
	// imply) and setuid files.
	for _, bad := range []string{"PrivateDevices=yes", "ProtectClock=yes", "RestrictSUIDSGID=yes", "DeviceAllow="} {
		if strings.Contains(string(data), "\n"+bad) {
			t.Errorf("unit sets %s", bad)
		}
	}
	// verify warns about unknown keys without failing: any output is a failure here.
	if out, err := exec.Command("systemd-analyze", "verify", "--man=no", unit).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
	}

	fleet := filepath.Join(etc, "pifleet", "fleet.yaml")
	if out, err := exec.Command(bin, "check", "-c", fleet).CombinedOutput(); err != nil {
		t.Errorf("check of the installed fleet.yaml: %v\n%s", err, out)
	}
	edited := []byte("# the admin's own fleet\nboards: []\n")
	if err := os.WriteFile(fleet, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	out = makeInstall(t, "PREFIX="+prefix, "SYSCONFDIR="+etc)
	if got, _ := os.ReadFile(fleet); string(got) != string(edited) || !strings.Contains(out, "kept "+fleet) {
		t.Errorf("a second install did not keep the admin's fleet.yaml:\n%s\n%s", got, out)
	}

	// DESTDIR stages a package: paths inside the files stay the real ones.
	stage := t.TempDir()
	makeInstall(t, "DESTDIR="+stage)
	staged, err := os.ReadFile(filepath.Join(stage, "usr/local/lib/systemd/system/pifleet.service"))
	if err != nil || !strings.Contains(string(staged), "ExecStart=/usr/local/bin/pifleet serve -c /etc/pifleet/fleet.yaml\n") {
		t.Errorf("DESTDIR unit: %v\n%s", err, staged)
	}
	for _, p := range []string{"usr/local/bin/pifleet", "etc/pifleet/fleet.yaml"} {
		if _, err := os.Stat(filepath.Join(stage, p)); err != nil {
			t.Errorf("DESTDIR install lacks %s: %v", p, err)
		}
	}
}

// TestVersionUnstamped: a plain build without git's help says so instead of inventing a
// version.
func TestVersionUnstamped(t *testing.T) {
	bin := buildPifleet(t) // -buildvcs=false, no -ldflags
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "pifleet (devel)\nrevision unknown\ngo1.") {
		t.Errorf("pifleet version:\n%s", out)
	}
}

// TestUnitCapabilitiesSuffice runs the file-system, NFS and neighbour-table test suites
// (board roots over NFS: chown, setuid bits, device nodes, whiteouts, ACLs, file
// capabilities; asking the kernel to ARP for a client) as root
// limited to the unit's CapabilityBoundingSet, so a change that needs one more capability
// fails here rather than in a sandboxed service.
func TestUnitCapabilitiesSuffice(t *testing.T) {
	require.Root(t, "the suites need root's file capabilities, minus those the unit drops")
	setpriv := require.Tool(t, "setpriv", "util-linux")
	data, err := os.ReadFile(filepath.Join(repoRoot, "dist", "pifleet.service.in"))
	if err != nil {
		t.Fatal(err)
	}
	var caps []string
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "CapabilityBoundingSet="); ok {
			for _, c := range strings.Fields(v) {
				caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
		}
	}
	if len(caps) == 0 {
		t.Fatal("the unit has no CapabilityBoundingSet")
	}
	for _, pkg := range []struct{ dir, skip string }{
		{"overlay", "TestDifferentialAgainstKernel"}, // kernel overlayfs as a reference, not pifleet
		{"nfsroot", "^$"},
		{"boot/neigh", "^$"}, // RTM_NEWNEIGH: CAP_NET_ADMIN
	} {
		bin := filepath.Join(t.TempDir(), pkg.dir+".test")
		if out, err := exec.Command("go", "test", "-c", "-o", bin, "./"+filepath.Join(repoRoot, pkg.dir)).CombinedOutput(); err != nil {
			t.Fatalf("build %s tests: %v\n%s", pkg.dir, err, out)
		}
		cmd := exec.Command(setpriv, "--bounding-set=-all,"+strings.Join(caps, ","), bin, "-test.count=1", "-test.skip", pkg.skip)
		cmd.Dir = filepath.Join(repoRoot, pkg.dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			var fails []string
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, "--- FAIL") || strings.Contains(l, "operation not permitted") {
					fails = append(fails, l)
				}
			}
			t.Errorf("%s tests with only %s: %v\n%s", pkg.dir, strings.Join(caps, ","), err, strings.Join(fails, "\n"))
		}
	}
}
