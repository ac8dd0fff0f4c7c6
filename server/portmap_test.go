package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/tftp"
	"github.com/pifleet/pifleet/test/netns"
	"github.com/pifleet/pifleet/test/require"
)

func TestNFSRootOptions(t *testing.T) {
	def := DefaultPorts()
	moved := def
	moved.NFS, moved.Mount = 3049, 30048
	off := moved
	off.Portmap = 1111
	none := moved
	none.Portmap = 0
	for _, tc := range []struct {
		ports Ports
		want  string
	}{
		// The portmapper on 111 tells every client the ports, default or not.
		{def, "10.0.0.1:/boards/pi-01,vers=3,tcp,nolock"},
		{moved, "10.0.0.1:/boards/pi-01,vers=3,tcp,nolock"},
		// Nobody finds a portmapper elsewhere, or none: the ports go on the command line.
		{off, "10.0.0.1:/boards/pi-01,vers=3,tcp,port=3049,mountport=30048,nolock"},
		{none, "10.0.0.1:/boards/pi-01,vers=3,tcp,port=3049,mountport=30048,nolock"},
	} {
		if got := NFSRoot("10.0.0.1", "pi-01", tc.ports); got != tc.want {
			t.Errorf("NFSRoot(%+v) = %q, want %q", tc.ports, got, tc.want)
		}
	}
}

func TestLoadPortmapPort(t *testing.T) {
	load := func(ports string) (*Config, []Problem, error) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "fleet.yaml")
		y := "server:\n  address: 10.0.0.1/24\n  dhcp: {mode: off}\n  ports: " + ports + "\nimages:\n  img: {}\nboards: []\n"
		if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
		return Load(path)
	}
	cfg, problems, err := load("{}")
	if err != nil || cfg.Server.Ports.Portmap != 111 || len(problems) != 0 {
		t.Fatalf("default: %v %+v %v", err, cfg, problems)
	}
	for ports, want := range map[string]int{"{portmap: 1111}": 1111, "{portmap: 0}": 0} {
		cfg, problems, err = load(ports)
		if err != nil || cfg.Server.Ports.Portmap != want || len(problems) != 1 || !strings.Contains(problems[0].Msg, "klibc") {
			t.Fatalf("%s: %v %v", ports, err, problems)
		}
	}
	// The portmapper is TCP and UDP: it clashes with a UDP service and with a TCP one.
	for _, ports := range []string{"{portmap: 69}", "{portmap: 2049}", "{portmap: 8080}", "{portmap: -1}", "{portmap: off}"} {
		if _, _, err := load(ports); err == nil {
			t.Errorf("%s accepted", ports)
		}
	}
}

// TestInitramfsClientsMount runs the client stacks that initramfs images use, against a
// whole pifleet server in a network namespace, with exactly the nfsroot= that Cmdline
// writes into the board's cmdline.txt. The kernel here has no NFS client, so each final
// mount(2) fails (ENODEV); what is tested is everything before it: the option string is
// accepted, the portmapper is asked, and (klibc, which mounts in user space) MOUNT answers
// /boards/<name> with a handle. test/e2e boots the rest for real in QEMU: Debian's arm64
// kernel (NFS as a module) with the demo initramfs, whose busybox mount hands these
// options to the kernel's NFS client, which asks the portmapper for both ports.
//
// dracut itself is not run, only the command its 95nfs module ends in. What it does with
// nfsroot=, read from dracut 059's nfs-lib.sh: with root=/dev/nfs it takes
// "<server>:<path>,<options>" as the kernel's legacy form, keeps the options after the
// first comma, sets rw/ro from the command line, forces nolock for NFSv3, and runs
// `mount -t nfs -o rw,vers=3,tcp,nolock server:path`, i.e. mount.nfs (nfs-utils).
func TestInitramfsClientsMount(t *testing.T) {
	needRoot(t)
	nfsmount := "/usr/lib/klibc/bin/nfsmount"
	if _, err := os.Stat(nfsmount); err != nil {
		require.Missing(t, nfsmount+" not installed (apt-get install klibc-utils)")
	}
	require.Tools(t, map[string]string{"busybox": "busybox", "mount.nfs": "nfs-common"})
	const (
		serverIP = "10.81.0.1"
		boardIP  = "10.81.0.2"
		board    = "pi-initrd"
	)
	pair := netns.NewPair(t, "pfinit", netip.MustParsePrefix(serverIP+"/24"))
	netns.Run(t, "ip", "-n", pair.Client, "addr", "add", boardIP+"/24", "dev", pair.ClientIf)

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "fleet.yaml")
	// Every port at its default: the namespace is the server's own.
	y := fmt.Sprintf(`server:
  address: %s/24
  state: %s
  dhcp: {mode: off}
images:
  img: {path: %s}
defaults: {image: img}
boards:
  - {name: %s, mac: '02:00:00:00:81:02', serial: 'cafe0081', ip: %s}
`, serverIP, filepath.Join(dir, "state"), testImage(t), board, boardIP)
	if err := os.WriteFile(cfgPath, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &netns.LogBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *Server, 1)
	done := make(chan error, 1)
	go func() {
		// Run binds every socket before Ready, on the thread that entered the namespace.
		done <- netns.Do(pair.Server, func() error {
			return Run(ctx, Options{ConfigPath: cfgPath,
				Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
				Ready:  func(s *Server) { ready <- s }})
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	var srv *Server
	select {
	case srv = <-ready:
	case err := <-done:
		t.Fatalf("server did not start: %v\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("server not ready after 30s\n%s", logs.String())
	}

	// The board's cmdline.txt, as TFTP serves it.
	cmdline, err := tftp.Cmdline(srv.fleet.cur.Load().boards[board].boot)
	if err != nil {
		t.Fatal(err)
	}
	var nfsroot string
	for _, a := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(a, "nfsroot="); ok {
			nfsroot = v
		}
	}
	t.Logf("cmdline.txt: %s", strings.TrimSpace(cmdline))
	// initramfs-tools' scripts/nfs splits nfsroot=[<server>:]<path>[,<options>] at the
	// first comma and passes the options to nfsmount with -o, after its own.
	target, opts, _ := strings.Cut(nfsroot, ",")
	if want := serverIP + ":/boards/" + board; target != want || opts == "" {
		t.Fatalf("nfsroot=%s: want %s,<options>", nfsroot, want)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	inClient := func(args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", pair.Client, "timeout", "60"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	t.Run("klibc-nfsmount", func(t *testing.T) {
		before := strings.Count(logs.String(), `msg=mounted`)
		out, err := inClient(nfsmount, "-o", "nolock", "-o", "rw", "-o", opts, target, mnt)
		t.Logf("nfsmount -o nolock -o rw -o %s %s: %v\n%s", opts, target, err, out)
		if strings.Contains(out, "bad option") || strings.Contains(out, "invalid value") {
			t.Fatalf("klibc nfsmount rejects the generated options %q", opts)
		}
		if !strings.Contains(out, "kernel lacks NFS v3 support") {
			t.Errorf("nfsmount did not get as far as mount(2)")
		}
		l := logs.String()
		for _, want := range []string{
			`msg="portmap GETPORT" .*client=` + boardIP + ` board=` + board + ` prog=100003 vers=3 prot=6 port=2049`,
			`msg="portmap GETPORT" .*client=` + boardIP + ` board=` + board + ` prog=100005 vers=3 prot=6 port=20048`,
		} {
			if !regexp.MustCompile(want).MatchString(l) {
				t.Errorf("server log lacks %s\n%s", want, l)
			}
		}
		if strings.Count(l, `msg=mounted`) <= before || !mountedEvent(srv, board, boardIP) {
			t.Errorf("no MNT of /boards/%s answered for %s", board, boardIP)
		}
	})

	t.Run("mount.nfs", func(t *testing.T) {
		// What dracut's 95nfs runs for root=/dev/nfs nfsroot=<server>:<path>,<options>
		// with rw on the command line: the options after the first comma, rw in front,
		// nolock forced for NFSv3 (nfs-lib.sh, dracut 059).
		dracutOpts := "rw," + strings.Join(slices.DeleteFunc(strings.Split(opts, ","), func(o string) bool {
			return o == "nolock" || o == "lock" || o == "rw" || o == "ro"
		}), ",") + ",nolock"
		if dracutOpts != "rw,vers=3,tcp,nolock" {
			t.Errorf("dracut would mount with %q", dracutOpts)
		}
		getports := len(getportRE.FindAllString(logs.String(), -1))
		out, err := inClient("mount", "-v", "-t", "nfs", "-o", dracutOpts, target, mnt)
		t.Logf("mount -t nfs -o %s %s: %v\n%s", dracutOpts, target, err, out)
		if strings.Contains(out, "incorrect mount option") || strings.Contains(out, "bad option") {
			t.Fatalf("mount.nfs rejects %q", dracutOpts)
		}
		// mount.nfs asks the portmapper for both ports and pings each service (NULL)
		// before it hands the mount to the kernel.
		for _, want := range []string{"prog 100003 vers 3 prot TCP port 2049", "prog 100005 vers 3 prot TCP port 20048", "mount(2): No such device"} {
			if !strings.Contains(out, want) {
				t.Errorf("mount.nfs output lacks %q", want)
			}
		}
		if n := len(getportRE.FindAllString(logs.String(), -1)); n < getports+2 {
			t.Errorf("mount.nfs asked the portmapper %d times, want NFS and MOUNT", n-getports)
		}
	})

	t.Run("busybox-mount", func(t *testing.T) {
		// Debian's busybox has no NFS support of its own (no FEATURE_MOUNT_NFS): it passes
		// the option string to mount(2), where the kernel's NFS parser (the one nfsroot=
		// uses) reads it. Here that ends at ENODEV; busybox must not refuse the string
		// first. -i: no mount.nfs helper, as in an initramfs without nfs-utils.
		out, err := inClient("busybox", "mount", "-i", "-t", "nfs", "-o", "rw,"+opts, target, mnt)
		t.Logf("busybox mount -i -t nfs -o rw,%s %s: %v\n%s", opts, target, err, out)
		if err == nil {
			t.Log("this kernel has an NFS client: the mount succeeded (in ip netns exec's own mount namespace)")
		} else if !strings.Contains(out, "No such device") {
			t.Errorf("busybox mount failed for another reason than the kernel lacking NFS")
		}
	})
}

// getportRE matches the server's log line for a board's GETPORT of NFS or MOUNT v3 over TCP.
var getportRE = regexp.MustCompile(`msg="portmap GETPORT" .*client=10\.81\.0\.2 board=pi-initrd prog=10000[35] vers=3 prot=6 port=(2049|20048)`)

// mountedEvent reports whether the server's timeline has board's NFS mount from addr.
func mountedEvent(s *Server, board, addr string) bool {
	for _, e := range s.timeline.LastBoot(board) {
		if e.Stage == boot.StageNFS && e.What == "mount" && e.Client.String() == addr {
			return true
		}
	}
	return false
}

// A port already taken (by the system's rpcbind, usually) is reported with what to do.
func TestListenPortmapBusy(t *testing.T) {
	busy, err := net.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, _, err = listenPortmap(netip.Addr{}, busy.LocalAddr().(*net.UDPAddr).Port)
	if err == nil || !strings.Contains(err.Error(), "rpcbind") {
		t.Fatalf("err = %v, want a hint about rpcbind", err)
	}
}
