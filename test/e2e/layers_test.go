package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/e2e/testbed"
)

// Issue 15's fleet update, on the booted Debian boards of TestDistroBookworm:
//
//	board1 on bookworm changes /etc and installs a file ─ board commit ─> v2
//	board2 moves to v2 (pending while mounted, taken at its reboot): the change, its own identity
//	image shell v2 -- dpkg -i a .deb built here ─> v3
//	group "lab" (both boards) moves to v3, then back to v2
//	every layer that existed before is byte-identical afterwards; image verify passes.

// The marks board1 leaves for v2, and the package image shell installs for v3.
const (
	v2Conf    = "/etc/pifleet-e2e/v2.conf"
	v2Tool    = "/usr/local/bin/pifleet-e2e-hello"
	v3Package = "pifleet-e2e-hello"
	v3File    = "/usr/share/pifleet-e2e/hello.txt"
)

// layerDigests hashes every layer tree of the state dir's image store, by layer dir.
func layerDigests(t *testing.T, state string) map[string]string {
	t.Helper()
	trees, err := filepath.Glob(filepath.Join(state, "images", "layers", "*", "tree"))
	if err != nil || len(trees) == 0 {
		t.Fatalf("no layers in %s/images/layers (%v)", state, err)
	}
	out := map[string]string{}
	for _, tr := range trees {
		out[filepath.Base(filepath.Dir(tr))] = treeDigest(t, tr)
	}
	return out
}

// setFleet rewrites the lab's fleet.yaml: extra image entries, a groups section, and extra
// keys for each board (by name), then waits until the running server shows want for every
// board (image, or "image (pending X)").
func (l *lab) setFleet(t *testing.T, images, groups string, boardKeys map[string]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(l.logDir, "fleet.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "images:\n  bookworm: {}\n", "images:\n  bookworm: {}\n"+images+groups, 1)
	for name, keys := range boardKeys {
		s = strings.Replace(s, "{name: "+name+",", "{name: "+name+", "+keys+",", 1)
	}
	if out, err := exec.Command(l.bin, "check", "-c", writeTemp(t, l.dir, s)).CombinedOutput(); err != nil {
		t.Fatalf("pifleet check rejects the new fleet.yaml: %v\n%s\n%s", err, out, s)
	}
	if err := os.WriteFile(l.cfgPath, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(l.logDir, "fleet-layers.yaml"), []byte(s), 0o644)
	l.signalServer(t)
}

// writeTemp writes s to a new file under dir and returns its path.
func writeTemp(t *testing.T, dir, s string) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "fleet-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// signalServer asks the server to reload fleet.yaml now (it also polls the file).
func (l *lab) signalServer(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	cmd := l.server
	l.mu.Unlock()
	if cmd == nil {
		t.Fatal("no server running")
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// boardRow is what the layered test reads of `pifleet board ls --json`.
type boardRow struct {
	Name    string `json:"name"`
	Image   string `json:"image"`
	Pending string `json:"pending_image"`
}

// waitBoards polls `board ls --json` (bounded) until every named board runs image and has
// pending as its pending image, and fails t otherwise.
func (l *lab) waitBoards(t *testing.T, want map[string][2]string) {
	t.Helper()
	var last string
	for range 60 {
		out, err := l.pifleet("board", "ls", "--json", "-c", l.cfgPath)
		last = out
		var rows []boardRow
		if err == nil && json.Unmarshal([]byte(out), &rows) == nil {
			ok := 0
			for _, r := range rows {
				if w, in := want[r.Name]; in && r.Image == w[0] && r.Pending == w[1] {
					ok++
				}
			}
			if ok == len(want) {
				return
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("boards never showed (image, pending) %v; board ls --json:\n%s", want, last)
}

// buildDeb builds a tiny architecture-independent .deb in dir and returns its path.
func buildDeb(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "deb")
	for p, body := range map[string]string{
		"DEBIAN/control":                "Package: " + v3Package + "\nVersion: 1.0\nArchitecture: all\nMaintainer: pifleet e2e <e2e@example.invalid>\nDescription: pifleet e2e test package\n",
		strings.TrimPrefix(v3File, "/"): "hello from v3\n",
	} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	debs := filepath.Join(dir, "debs")
	os.MkdirAll(debs, 0o755)
	deb := filepath.Join(debs, v3Package+"_1.0_all.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", root, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v\n%s", err, out)
	}
	return deb
}

// distroLayers runs the fleet update on the two booted boards; start powers a board on.
// It returns the boards' shells (they reboot on the way).
func distroLayers(t *testing.T, l *lab, start func(testBoard) *testbed.Board, s1, s2 *distroShell) {
	before := layerDigests(t, l.state)
	t.Logf("%d layers in the store before the update", len(before))

	// board1 (bookworm, just reset) changes /etc and installs a tool; then it is powered off.
	var id1, key1 string
	t.Run("board1-changes", func(t *testing.T) {
		if out, code := s1.sudo(t, fmt.Sprintf(`mkdir -p %s && echo v2-setting > %s && printf "#!/bin/sh\necho hello-v2\n" > %s && chmod 755 %s && sync`,
			filepath.Dir(v2Conf), v2Conf, v2Tool, v2Tool)); code != 0 {
			t.Fatalf("board1: change: exit %d\n%s", code, out)
		}
		id1 = s1.must(t, "cat /etc/machine-id")
		key1 = s1.must(t, "cat /etc/ssh/ssh_host_ed25519_key.pub")
	})
	t.Run("commit-refused-while-mounted", func(t *testing.T) {
		out, err := l.pifleet("board", "commit", "-c", l.cfgPath, board2.name, "--as", "never")
		if err == nil {
			t.Errorf("board commit of the running %s succeeded without --force:\n%s", board2.name, out)
		}
		if _, err := l.pifleet("image", "verify", "-c", l.cfgPath, "never"); err == nil {
			t.Errorf("a refused commit left an image")
		}
	})
	s1.shutdown(t, "poweroff")
	if !t.Run("board-commit", func(t *testing.T) {
		// Powered off, but its NFS connection lingers until the server's idle timeout:
		// the operator knows better, hence --force.
		out, err := l.pifleet("board", "commit", "-c", l.cfgPath, "--force", board1.name, "--as", "v2")
		t.Logf("board commit: %s", strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("pifleet board commit %s --as v2: %v\n%s", board1.name, err, out)
		}
	}) {
		t.Fatal("no v2")
	}

	// board2 moves to v2 while it runs: pending until its reboot.
	l.setFleet(t, "  v2: {base: bookworm}\n", "", map[string]string{board2.name: "image: v2"})
	l.waitBoards(t, map[string][2]string{board2.name: {"bookworm", "v2"}, board1.name: {"bookworm", ""}})
	s2.shutdown(t, "reboot")
	q2 := start(board2)
	bootDistro(t, q2, board2)
	s2 = loginBoard(t, q2)
	l.waitBoards(t, map[string][2]string{board2.name: {"v2", ""}})
	t.Run("board2-sees-v2", func(t *testing.T) {
		if out := s2.must(t, "cat "+v2Conf); out != "v2-setting" {
			t.Errorf("board2 on v2: %s = %q", v2Conf, out)
		}
		if out := s2.must(t, v2Tool); out != "hello-v2" {
			t.Errorf("board2 on v2: %s printed %q", v2Tool, out)
		}
		if id := s2.must(t, "cat /etc/machine-id"); id == id1 || len(id) != 32 {
			t.Errorf("board2 on v2: machine-id %q (board1's is %q): board identity leaked through the commit", id, id1)
		}
		if key := s2.must(t, "cat /etc/ssh/ssh_host_ed25519_key.pub"); key == key1 {
			t.Errorf("board2 on v2 has board1's SSH host key %s", key)
		}
		if host := s2.must(t, "hostname"); host != board2.name {
			t.Errorf("board2 on v2: hostname %q", host)
		}
	})

	// image shell installs a .deb built here: v3.
	t.Run("image-shell", func(t *testing.T) {
		deb := buildDeb(t, l.dir)
		out, err := l.pifleet("image", "shell", "-c", l.cfgPath, "v2", "--as", "v3",
			"--bind", filepath.Dir(deb)+":/srv/debs", "--", "dpkg", "-i", "/srv/debs/"+filepath.Base(deb))
		t.Logf("image shell: %s", tail(strings.TrimSpace(out), 2000))
		if err != nil {
			t.Fatalf("pifleet image shell v2 --as v3 -- dpkg -i: %v\n%s", err, out)
		}
	})

	// The group moves to v3: board1 (off) at once, board2 (up) at its reboot.
	l.setFleet(t, "  v2: {base: bookworm}\n  v3: {base: v2}\n", "groups:\n  lab: {image: v3}\n",
		map[string]string{board1.name: "group: lab", board2.name: "group: lab"})
	l.waitBoards(t, map[string][2]string{board2.name: {"v2", "v3"}})
	s2.shutdown(t, "reboot")
	q1, q2 := start(board1), start(board2)
	bootDistro(t, q1, board1)
	bootDistro(t, q2, board2)
	s1, s2 = loginBoard(t, q1), loginBoard(t, q2)
	l.waitBoards(t, map[string][2]string{board1.name: {"v3", ""}, board2.name: {"v3", ""}})
	t.Run("group-on-v3", func(t *testing.T) {
		for _, s := range []*distroShell{s1, s2} {
			s.must(t, "dpkg -s "+v3Package+" | grep -q 'Status: install ok installed'")
			if out := s.must(t, "cat "+v3File); out != "hello from v3" {
				t.Errorf("board %s on v3: %s = %q", s.qb.Name, v3File, out)
			}
			if out := s.must(t, "cat "+v2Conf); out != "v2-setting" {
				t.Errorf("board %s on v3: %s = %q", s.qb.Name, v2Conf, out)
			}
		}
	})

	// Roll back: the group returns to v2 at the boards' next boot.
	l.setFleet(t, "  v2: {base: bookworm}\n  v3: {base: v2}\n", "groups:\n  lab: {image: v2}\n",
		map[string]string{board1.name: "group: lab", board2.name: "group: lab"})
	l.waitBoards(t, map[string][2]string{board1.name: {"v3", "v2"}, board2.name: {"v3", "v2"}})
	s1.shutdown(t, "reboot")
	s2.shutdown(t, "reboot")
	q1, q2 = start(board1), start(board2)
	bootDistro(t, q1, board1)
	bootDistro(t, q2, board2)
	s1, s2 = loginBoard(t, q1), loginBoard(t, q2)
	l.waitBoards(t, map[string][2]string{board1.name: {"v2", ""}, board2.name: {"v2", ""}})
	t.Run("group-back-on-v2", func(t *testing.T) {
		for _, s := range []*distroShell{s1, s2} {
			if out, code := s.run(t, "test -e "+v3File+" || dpkg -s "+v3Package+" >/dev/null 2>&1"); code == 0 {
				t.Errorf("board %s rolled back to v2 still has v3's package (%q)", s.qb.Name, out)
			}
			if out := s.must(t, "cat "+v2Conf); out != "v2-setting" {
				t.Errorf("board %s on v2: %s = %q", s.qb.Name, v2Conf, out)
			}
		}
	})

	t.Run("layers-unchanged", func(t *testing.T) {
		after := layerDigests(t, l.state)
		for dir, d := range before {
			if after[dir] != d {
				t.Errorf("layer %s changed during the update (tree digest %s -> %s)", dir, d, after[dir])
			}
		}
		if len(after) < len(before)+2 {
			t.Errorf("%d layers after commit and image shell, %d before: want at least 2 new", len(after), len(before))
		}
		for _, im := range []string{"bookworm", "v2", "v3"} {
			if out, err := l.pifleet("image", "verify", "-c", l.cfgPath, im); err != nil {
				t.Errorf("image verify %s: %v\n%s", im, err, out)
			}
		}
		out, _ := l.pifleet("image", "ls", "-c", l.cfgPath)
		t.Logf("image ls:\n%s", out)
	})
}
