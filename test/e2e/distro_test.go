package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/e2e/testbed"
)

// The first user of the Debian fleet, from fleet.yaml's defaults.user. The hash is
// `openssl passwd -6 -salt pifleete2e pifleet-e2e`.
const (
	distroUser     = "fleetops"
	distroPassword = "pifleet-e2e"
	distroHash     = "$6$pifleete2e$n78zpODOddZLQY5.vH6n0.X7aG4ElqxxqmIYtL3dnsdsj3B2cq8oH4pWlcI.KvviereYlZyRUQ/0i2P/xG3Qy0"
)

// Generous failure guards for a systemd boot under TCG on a shared 2-core machine.
const (
	distroBootTimeout = 10 * time.Minute
	distroBuildLimit  = 50 * time.Minute
)

// distroFail ends a wait early: the boot has failed for sure.
var distroFail = regexp.MustCompile(`Kernel panic[^\r\n]*|Synchronous Abort|Retry count exceeded|ALERT! [^\r\n]*|Gave up waiting for root[^\r\n]*|You are in emergency mode`)

// bookwormImage is a stock Debian bookworm arm64 root laid out as a Pi disk image, built by
// test/e2e/distro/build-bookworm.sh (cached in debCache) and imported with the CLI.
var bookwormImage = fleetImage{
	name:     "bookworm",
	defaults: fmt.Sprintf("  user: {name: %s, password_hash: %q}\n", distroUser, distroHash),
	install:  installBookworm,
}

// installBookworm gets the image from build-bookworm.sh (which builds it only when the cache
// has none for the current packages and script) and imports it with `pifleet image import`.
func installBookworm(t *testing.T, l *lab) {
	t.Helper()
	testbed.RequireTools(t, map[string]string{
		"mmdebstrap": "mmdebstrap", "qemu-aarch64-static": "qemu-user-static", "update-binfmts": "binfmt-support",
		"arch-test": "arch-test", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mkfs.ext4": "e2fsprogs",
		"sfdisk": "fdisk", "xz": "xz-utils", "flock": "util-linux", "apt-cache": "apt",
	})
	logPath := filepath.Join(l.logDir, "bookworm-build.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	ctx, cancel := context.WithTimeout(context.Background(), distroBuildLimit)
	defer cancel()
	start := time.Now()
	build := exec.CommandContext(ctx, filepath.Join(repoRoot(t), "test/e2e/distro/build-bookworm.sh"), debCache)
	build.Stderr = logf
	out, err := build.Output()
	if err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("build-bookworm.sh: %v; log %s:\n%s", err, logPath, tail(string(b), 4000))
	}
	img := strings.TrimSpace(string(out))
	how := "from the cache"
	if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "build-bookworm: mmdebstrap") {
		how = "built now"
	}
	t.Logf("bookworm image %s ready in %v, %s (log %s)", img, time.Since(start).Round(time.Second), how, logPath)

	start = time.Now()
	imp := exec.Command(l.bin, "image", "import", "-c", l.cfgPath, "--name", "bookworm", img)
	res, err := imp.CombinedOutput()
	os.WriteFile(filepath.Join(l.logDir, "import.log"), res, 0o644)
	if err != nil {
		t.Fatalf("pifleet image import %s: %v\n%s", img, err, tail(string(res), 4000))
	}
	lines := strings.Split(strings.TrimSpace(string(res)), "\n")
	t.Logf("imported in %v: %s", time.Since(start).Round(time.Second), lines[len(lines)-1])
}

// distroStage is one step of a board's boot as its console shows it.
type distroStage struct{ name, re string }

func distroStages(b testBoard) []distroStage {
	// multi-user.target is not among them: systemd stops printing its status once the
	// console's getty runs, so systemd-analyze reports it after login.
	return []distroStage{
		{"U-Boot DHCP lease", `DHCP client bound to address ` + regexp.QuoteMeta(b.ip)},
		{"TFTP pxelinux.cfg", `pxelinux\.cfg/01-` + strings.ReplaceAll(b.mac, ":", "-")},
		{"TFTP initramfs done", `Retrieving file: [^\r\n]*initrd\.img-[\s\S]*?Bytes transferred`},
		{"TFTP kernel done", `Retrieving file: [^\r\n]*vmlinuz-[\s\S]*?Bytes transferred`},
		{"kernel start", `Starting kernel`},
		{"initramfs start", `Loading, please wait`},
		{"initramfs DHCP", `IP-Config: [^\r\n]*complete`},
		{"NFS root mounted", `Running /scripts/nfs-bottom`},
		{"systemd start", `Welcome to [^\r\n]*Debian`},
		{"login prompt", regexp.QuoteMeta(b.name) + ` login: `},
	}
}

// bootDistro waits for board b's boot to reach the login prompt, logs when each stage showed
// on the console (from QEMU's start) and fails t at the first missing stage.
func bootDistro(t *testing.T, qb *testbed.Board, b testBoard) {
	t.Helper()
	var times []string
	for _, st := range distroStages(b) {
		if _, err := qb.Console.Expect(regexp.MustCompile(st.re), distroFail, distroBootTimeout); err != nil {
			t.Fatalf("board %s: boot stage %q: %v\nconsole log %s, last output:\n%s", b.name, st.name, err, qb.LogPath, qb.Console.Tail(5000))
		}
		times = append(times, fmt.Sprintf("%s %.1fs", st.name, qb.Console.MatchedAt().Sub(qb.Started).Seconds()))
	}
	t.Logf("board %s boot timeline: %s", b.name, strings.Join(times, ", "))
}

// distroShell is a login session on a board's serial console.
type distroShell struct {
	qb *testbed.Board
	n  int // numbers the output markers
}

// login logs user in on the console (its login prompt has shown); an empty password is
// typed as none (Debian's raspi images ship root without one). It returns an error when
// login refuses, and then the console is at the next login prompt.
func login(t *testing.T, qb *testbed.Board, user, password string) (*distroShell, error) {
	t.Helper()
	qb.Console.Send(user)
	if password != "" {
		if _, err := qb.Console.Expect(regexp.MustCompile(`Password: `), distroFail, time.Minute); err != nil {
			t.Fatalf("board %s: login: %v\n%s", qb.Name, err, qb.Console.Tail(2000))
		}
		qb.Console.Send(password)
	}
	// Debian's bash prompt, user@host:dir$ (or # for root), or a refusal.
	answer := regexp.MustCompile(`Login incorrect|[^\r\n]*@` + regexp.QuoteMeta(qb.Name) + `:[^\r\n]*[$#] `)
	m, err := qb.Console.Expect(answer, distroFail, 2*time.Minute)
	if err != nil {
		t.Fatalf("board %s: login as %s: %v\n%s", qb.Name, user, err, qb.Console.Tail(2000))
	}
	if m == "Login incorrect" {
		if _, err := qb.Console.Expect(regexp.MustCompile(regexp.QuoteMeta(qb.Name)+` login: `), distroFail, time.Minute); err != nil {
			t.Fatalf("board %s: no login prompt after a refused login: %v\n%s", qb.Name, err, qb.Console.Tail(2000))
		}
		return nil, fmt.Errorf("board %s: login as %s refused", qb.Name, user)
	}
	sh := &distroShell{qb: qb}
	// No pager, no colours: the console is a terminal, the test reads it as text.
	sh.must(t, "export PAGER=cat SYSTEMD_PAGER=cat SYSTEMD_COLORS=0")
	if out, code := sh.run(t, "id -un"); code != 0 || out != user {
		t.Fatalf("board %s: after login as %s, id -un says %q (exit %d)", qb.Name, user, out, code)
	}
	return sh, nil
}

// loginBoard logs in for the checks: as fleet.yaml's first user when the board has it, else
// as root (empty password, as Debian ships its raspi images), so that the checks still run
// when the user cannot log in; TestDistroBookworm/first-user-login reports that.
func loginBoard(t *testing.T, qb *testbed.Board) *distroShell {
	t.Helper()
	sh, err := login(t, qb, distroUser, distroPassword)
	if err == nil {
		return sh
	}
	t.Logf("%v; checking as root", err)
	sh, err = login(t, qb, "root", "")
	if err != nil {
		t.Fatalf("root login: %v", err)
	}
	return sh
}

// run types cmd into the shell and returns its output and exit status. The markers are
// written split ("PF""B") so that the echo of the typed line never matches them.
func (s *distroShell) run(t *testing.T, cmd string) (string, int) {
	t.Helper()
	s.n++
	s.qb.Console.Send(fmt.Sprintf(`echo "PF""B%d"; %s; echo "PF""E%d-$?"`, s.n, cmd, s.n))
	if _, err := s.qb.Console.Expect(regexp.MustCompile(fmt.Sprintf(`PFB%d\r?\n`, s.n)), distroFail, checkTimeout); err != nil {
		t.Fatalf("board %s: %s: %v\n%s", s.qb.Name, cmd, err, s.qb.Console.Tail(3000))
	}
	end := regexp.MustCompile(fmt.Sprintf(`(?s)(.*?)PFE%d-([0-9]+)\r?\n`, s.n))
	m, err := s.qb.Console.Expect(end, distroFail, checkTimeout)
	if err != nil {
		t.Fatalf("board %s: %s: %v\n%s", s.qb.Name, cmd, err, s.qb.Console.Tail(3000))
	}
	sub := end.FindStringSubmatch(m)
	code, _ := strconv.Atoi(sub[2])
	return strings.TrimSpace(strings.ReplaceAll(sub[1], "\r", "")), code
}

// must is run that fails t unless cmd exits 0.
func (s *distroShell) must(t *testing.T, cmd string) string {
	t.Helper()
	out, code := s.run(t, cmd)
	if code != 0 {
		t.Fatalf("board %s: %s: exit %d:\n%s", s.qb.Name, cmd, code, out)
	}
	return out
}

// sudo runs cmd as root through sudo with the user's password.
func (s *distroShell) sudo(t *testing.T, cmd string) (string, int) {
	t.Helper()
	return s.run(t, fmt.Sprintf(`echo %s | sudo -S -p "" sh -c '%s'`, distroPassword, cmd))
}

// shutdown powers the board off from inside (systemd's own shutdown over the NFS root);
// with -no-reboot QEMU exits, for a reboot as well.
func (s *distroShell) shutdown(t *testing.T, verb string) {
	t.Helper()
	s.qb.Console.Send(fmt.Sprintf(`echo %s | sudo -S -p "" systemctl %s`, distroPassword, verb))
	if err := s.qb.Wait(5 * time.Minute); err != nil {
		t.Fatalf("systemctl %s: %v\n%s", verb, err, s.qb.Console.Tail(3000))
	}
	s.qb.Kill()
}

// TestDistroBookworm boots a stock Debian bookworm arm64 root (systemd, its own
// initramfs-tools initramfs, Debian's raspi-firmware boot layout, ACLs in the ext4 root),
// imported from a Pi-style .img.xz, on two U-Boot boards, and uses it as a person would:
// login on the serial console, sudo, useradd, a write that survives a reboot and stays on
// its board, and a reset.
func TestDistroBookworm(t *testing.T) {
	l := newLabWith(t, []testBoard{board1, board2}, bookwormImage)
	l.startServer(t)

	start := func(b testBoard) *testbed.Board {
		qb, err := testbed.StartBoard(l.net, testbed.BoardConfig{Name: b.name, Tap: b.tap, MAC: b.mac, Machine: testbed.UBootVirt(), LogDir: l.logDir})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(qb.Kill)
		return qb
	}
	q1, q2 := start(board1), start(board2)
	var s1, s2 *distroShell
	if !t.Run("boot-to-login", func(t *testing.T) {
		bootDistro(t, q1, board1)
		bootDistro(t, q2, board2)
	}) {
		t.Fatal("boards did not reach a login prompt; the remaining checks need them")
	}
	t.Run("first-user-login", func(t *testing.T) {
		for _, q := range []*testbed.Board{q1, q2} {
			sh, err := login(t, q, distroUser, distroPassword)
			if err != nil {
				t.Errorf("%v: fleet.yaml's first user (defaults.user %s) cannot log in on this Debian image; pifleet writes it into the identity layer's /etc/passwd, /etc/shadow, /etc/group (images.WriteIdentity on an image without Pi OS's userconfig)", err, distroUser)
				continue
			}
			if q == q1 {
				s1 = sh
			} else {
				s2 = sh
			}
		}
	})
	t.Run("system-running", func(t *testing.T) {
		if s1 == nil {
			s1 = loginBoard(t, q1)
		}
		if s2 == nil {
			s2 = loginBoard(t, q2)
		}
		for _, s := range []*distroShell{s1, s2} {
			state, _ := s.run(t, "systemctl is-system-running --wait")
			t.Logf("board %s: %s", s.qb.Name, strings.Join(strings.Fields(s.must(t, "systemd-analyze")), " "))
			failed, _ := s.run(t, "systemctl --failed --no-legend --plain")
			if failed != "" || !strings.HasSuffix(state, "running") {
				s.run(t, "systemctl --failed; journalctl -b -p warning --no-pager | tail -n 40")
				t.Errorf("board %s: system is %q, failed units:\n%s\n%s", s.qb.Name, state, failed, s.qb.Console.Tail(6000))
			}
			t.Logf("board %s: root %s", s.qb.Name, s.must(t, `awk '$2 == "/" {print $1, $3, $4}' /proc/mounts`))
			// systemd's ACLs on the journal made it from the ext4 image through the import
			// and NFS_ACL to the board.
			acl := strings.Join(strings.Fields(s.must(t, "getfacl -p /var/log/journal 2>&1 | grep -v '^#'")), " ")
			t.Logf("board %s: getfacl /var/log/journal: %s", s.qb.Name, acl)
			if !strings.Contains(acl, "group:adm:r-x") || !strings.Contains(acl, "default:group:adm:r-x") {
				t.Errorf("board %s: /var/log/journal lacks the image's ACL (group:adm:r-x, also as default): %s", s.qb.Name, acl)
			}
		}
		l.logFigures(t)
	})
	if s1 == nil || s2 == nil {
		t.Fatal("boards did not reach a login; the remaining checks need them")
	}

	token := fmt.Sprintf("token-%d", time.Now().UnixNano())
	t.Run("sudo-useradd-write", func(t *testing.T) {
		if out, code := s1.sudo(t, "id -u"); code != 0 || out != "0" {
			t.Fatalf("sudo id -u: %q, exit %d", out, code)
		}
		if out, code := s1.sudo(t, "useradd -m -s /bin/sh e2euser && id -u e2euser && ls -ld /home/e2euser"); code != 0 {
			t.Fatalf("useradd: exit %d:\n%s", code, out)
		}
		if out, code := s1.sudo(t, "echo "+token+" > /var/lib/pifleet-e2e-token"); code != 0 {
			t.Fatalf("write as root: exit %d:\n%s", code, out)
		}
		s1.must(t, "echo "+token+" > ~/token && sync")
	})
	t.Run("write-survives-reboot", func(t *testing.T) {
		s1.shutdown(t, "reboot")
		q1 = start(board1)
		bootDistro(t, q1, board1)
		s1 = loginBoard(t, q1)
		for _, cmd := range []string{"cat /var/lib/pifleet-e2e-token", "cat ~/token"} {
			if out := s1.must(t, cmd); out != token {
				t.Errorf("board1 after reboot: %s = %q, want %q", cmd, out, token)
			}
		}
		s1.must(t, "id -u e2euser")
	})
	t.Run("other-board-does-not-see-it", func(t *testing.T) {
		for _, cmd := range []string{"test -e /var/lib/pifleet-e2e-token", "test -e ~/token", "id -u e2euser"} {
			if out, code := s2.run(t, cmd); code == 0 {
				t.Errorf("board2: %s succeeds (%q): board1's change leaked", cmd, out)
			}
		}
	})
	t.Run("reset-restores-image", func(t *testing.T) {
		s1.shutdown(t, "poweroff")
		if out, err := l.pifleet("board", "reset", "-c", l.cfgPath, "--force", board1.name); err != nil {
			t.Fatalf("pifleet board reset %s: %v\n%s", board1.name, err, out)
		}
		q1 = start(board1)
		bootDistro(t, q1, board1)
		s1 = loginBoard(t, q1)
		for _, cmd := range []string{"test -e /var/lib/pifleet-e2e-token", "test -e ~/token", "id -u e2euser"} {
			if out, code := s1.run(t, cmd); code == 0 {
				t.Errorf("board1 after reset: %s succeeds (%q)", cmd, out)
			}
		}
		if out, code := s1.sudo(t, "id -u"); code != 0 || out != "0" {
			t.Errorf("sudo after reset: %q, exit %d", out, code)
		}
	})
	t.Run("fleet-update", func(t *testing.T) { distroLayers(t, l, start, s1, s2) })
}

// logFigures logs each board's upper dir size and the server's resident memory.
func (l *lab) logFigures(t *testing.T) {
	t.Helper()
	for _, b := range l.boards {
		upper := filepath.Join(l.state, "boards", b.name, "upper")
		out, err := exec.Command("du", "-sk", upper).Output()
		if err != nil {
			t.Errorf("du %s: %v", upper, err)
			continue
		}
		t.Logf("board %s: upper dir %s KiB", b.name, strings.Fields(string(out))[0])
	}
	l.mu.Lock()
	srv := l.server
	l.mu.Unlock()
	if srv == nil {
		return
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", srv.Process.Pid))
	if err != nil {
		t.Errorf("server status: %v", err)
		return
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmRSS:") || strings.HasPrefix(line, "VmHWM:") {
			t.Logf("server %s", strings.Join(strings.Fields(line), " "))
		}
	}
}
