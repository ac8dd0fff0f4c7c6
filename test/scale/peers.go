package scale

// The peer stack: the same fleet booted from Debian's established servers instead of
// pifleet, in the same server namespace, so that the figures say whether a bound is
// pifleet's or the machine's.
//
//   - DHCP: dnsmasq, full mode with one dhcp-host reservation per board (MAC -> fixed
//     address), or proxy mode (dhcp-range=<server>,proxy); pxe-service=0,"Raspberry Pi
//     Boot" gives the option 43 menu and option 60 "PXEClient" that the Pi EEPROM needs.
//   - TFTP: tftpd-hpa (in.tftpd -L, one forked process per transfer): the dedicated TFTP
//     server that pifleet's TFTP is compared with elsewhere (boot/tftp/README.md), and
//     without dnsmasq's default cap of 50 concurrent transfers. Its root holds a
//     directory per serial with the boot set (hard links), config.txt and a cmdline.txt
//     naming the board's NFS root.
//   - NFS: nfs-ganesha (FSAL_VFS) with a private rpcbind, exporting /boards/<name> per
//     board = a kernel overlayfs of the simulator's image tree with a fresh upper (the
//     classic netboot recipe; index=on,nfs_export=on make overlayfs handles decodable).
//
// Everything runs under one supervisor: this test binary started inside the server
// namespace with `ip netns exec` (peerEnv names its spec), as the first process of a
// PID namespace, in a cgroup of its own (startPeers). ip netns exec gives it a mount
// namespace of its own, so the overlays and the private /run it mounts vanish with it
// whatever happens; when it ends, the kernel kills what is left in its PID namespace;
// it gets SIGKILL when the simulator ends; the simulator's cleanup kills the cgroup.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// peerEnv, when set, makes the test binary run the peer stack's supervisor on the spec
// file it names instead of the tests.
const peerEnv = "PIFLEET_SIM_PEERS"

// peersReady is the line the supervisor prints once every peer answers.
const peersReady = "peers serving"

// peerTools are the peers' commands and their Debian packages.
var peerTools = map[string]string{"dnsmasq": "dnsmasq-base", "in.tftpd": "tftpd-hpa",
	"ganesha.nfsd": "nfs-ganesha nfs-ganesha-vfs", "rpcbind": "rpcbind"}

// peerSpec is what the supervisor needs (written as JSON by the simulator).
type peerSpec struct {
	Dir      string // the run's directory: configs, logs, uppers, mount points
	Image    string // the image tree (the overlays' lower)
	TFTPRoot string
	Server   string // the server's address
	Boards   []string
}

// peerLogs are the peers' log files under the run's directory.
var peerLogs = []string{"ganesha.log", "dnsmasq.log"}

// writePeerFiles writes the peers' configuration and TFTP root for f's boards under dir
// and returns the spec file's path.
func (f *Fleet) writePeerFiles(dir, image string) (string, error) {
	spec := peerSpec{Dir: filepath.Join(dir, "peers"), Image: image, TFTPRoot: filepath.Join(dir, "peers", "tftp"),
		Server: f.serverIP.String()}
	fw := filepath.Join(image, "boot", "firmware")
	cfgTxt, err := os.ReadFile(filepath.Join(fw, "config.txt"))
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(spec.TFTPRoot, 0o755); err != nil {
		return "", err
	}
	var hosts strings.Builder
	for _, b := range f.boards {
		spec.Boards = append(spec.Boards, b.name)
		// In the config, which dnsmasq reads before it drops root (a dhcp-hostsfile is
		// read as nobody, and the run's directory is root's only).
		fmt.Fprintf(&hosts, "dhcp-host=%s,%s\n", b.mac, b.addr)
		sd := filepath.Join(spec.TFTPRoot, fmt.Sprintf("%08x", b.serial))
		if err := os.MkdirAll(sd, 0o755); err != nil {
			return "", err
		}
		for name := range f.sizes {
			if err := os.Link(filepath.Join(fw, name), filepath.Join(sd, name)); err != nil {
				return "", fmt.Errorf("board %s: tftp root: %w", b.name, err)
			}
		}
		cmdline := fmt.Sprintf("console=serial0,115200 root=/dev/nfs nfsroot=%s:/boards/%s,vers=3,tcp rw ip=dhcp rootwait\n", f.serverIP, b.name)
		if err := errors.Join(os.WriteFile(filepath.Join(sd, "config.txt"), cfgTxt, 0o644),
			os.WriteFile(filepath.Join(sd, "cmdline.txt"), []byte(cmdline), 0o644)); err != nil {
			return "", fmt.Errorf("board %s: tftp root: %w", b.name, err)
		}
	}
	// dhcp-range's address names the subnet; static hands out only dhcp-host addresses.
	dhcpRange := fmt.Sprintf("dhcp-range=%s,static,255.255.0.0", netip.PrefixFrom(f.serverIP, 16).Masked().Addr())
	if !f.cfg.FullDHCP {
		dhcpRange = fmt.Sprintf("dhcp-range=%s,proxy,255.255.0.0", f.serverIP)
	}
	conf := strings.Join([]string{
		"port=0", // no DNS
		"interface=" + f.pair.ServerIf, "bind-interfaces",
		dhcpRange,
		"dhcp-authoritative", "no-ping", "dhcp-lease-max=100000",
		// The boards share one veth with a MAC of its own: an answer unicast to a
		// board's MAC (RFC 2131 for clients without the broadcast flag, as dnsmasq does
		// by default) would never reach it. pifleet broadcasts to unconfigured clients.
		"dhcp-broadcast",
		"dhcp-leasefile=" + filepath.Join(spec.Dir, "dnsmasq.leases"),
		"log-facility=" + filepath.Join(spec.Dir, "dnsmasq.log"),
		`pxe-service=0,"Raspberry Pi Boot"`,
	}, "\n") + "\n" + hosts.String()
	if !f.cfg.FullDHCP {
		// A proxy answer leaves siaddr 0 unless dhcp-boot names a server; real Pis then
		// use option 54, but the simulator wants siaddr, as pifleet sends it.
		conf += "dhcp-boot=bootcode.bin,," + f.serverIP.String() + "\n"
	}

	var g strings.Builder
	// NFSv3 over TCP only, as the boards mount; MNT takes the Pseudo paths, so every
	// board mounts /boards/<name> as it does from pifleet.
	g.WriteString("NFS_CORE_PARAM { Protocols = 3; NFS_Port = 2049; MNT_Port = 20048; Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; Mount_Path_Pseudo = true; }\n")
	g.WriteString("NFSV4 { Graceless = true; }\n")
	g.WriteString("EXPORT_DEFAULTS { Access_Type = RW; Squash = No_Root_Squash; Protocols = 3; Transports = TCP; SecType = sys; }\n")
	for i, name := range spec.Boards {
		fmt.Fprintf(&g, "EXPORT { Export_Id = %d; Path = %q; Pseudo = \"/boards/%s\"; FSAL { Name = VFS; } }\n",
			i+1, filepath.Join(spec.Dir, "mnt", name), name)
	}
	sj, _ := json.Marshal(spec)
	specPath := filepath.Join(spec.Dir, "spec.json")
	for _, w := range []struct {
		name, data string
	}{{"dnsmasq.conf", conf}, {"ganesha.conf", g.String()}, {"spec.json", string(sj)}} {
		if err := os.WriteFile(filepath.Join(spec.Dir, w.name), []byte(w.data), 0o644); err != nil {
			return "", err
		}
	}
	return specPath, nil
}

// peerChild is the supervisor: it mounts the overlays, starts rpcbind, ganesha,
// in.tftpd and dnsmasq, prints peersReady, and stops them all on SIGTERM or when one
// of them ends. It returns the exit code.
func peerChild(specPath string) int {
	// Pdeathsig belongs to the thread that forks: keep every fork on this one.
	runtime.LockOSThread()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var spec peerSpec
	b, err := os.ReadFile(specPath)
	if err == nil {
		err = json.Unmarshal(b, &spec)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peers: spec:", err)
		return 1
	}
	var mounts []string
	defer func() {
		for i := len(mounts) - 1; i >= 0; i-- {
			if err := unix.Unmount(mounts[i], unix.MNT_DETACH); err != nil {
				fmt.Fprintf(os.Stderr, "peers: unmount %s: %v\n", mounts[i], err)
			}
		}
	}()
	mount := func(fstype, opts, at string) error {
		if err := unix.Mount(fstype, at, fstype, 0, opts); err != nil {
			return fmt.Errorf("mount %s on %s (%s): %w", fstype, at, opts, err)
		}
		mounts = append(mounts, at)
		return nil
	}
	// A private /run for rpcbind's socket and lock; ganesha's state directory too, so the
	// host's stay untouched.
	err = mount("tmpfs", "mode=0755", "/run")
	if err == nil {
		err = os.MkdirAll("/run/rpcbind", 0o755)
	}
	if _, serr := os.Stat("/var/lib/nfs"); err == nil && serr == nil {
		err = mount("tmpfs", "mode=0755", "/var/lib/nfs")
	}
	for _, name := range spec.Boards {
		if err != nil {
			break
		}
		up, work, mnt := filepath.Join(spec.Dir, "upper", name), filepath.Join(spec.Dir, "work", name), filepath.Join(spec.Dir, "mnt", name)
		if err = errors.Join(os.MkdirAll(up, 0o755), os.MkdirAll(work, 0o755), os.MkdirAll(mnt, 0o755)); err == nil {
			err = mount("overlay", fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,index=on,nfs_export=on", spec.Image, up, work), mnt)
		}
		if err != nil {
			err = fmt.Errorf("board %s: %w", name, err)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		return 1
	}

	server := netip.MustParseAddr(spec.Server)
	exited := make(chan string, 4)
	var procs []*exec.Cmd
	defer func() { stopPeers(procs, exited) }()
	start := func(name string, args ...string) error {
		c := exec.Command(name, args...)
		c.Stdout, c.Stderr = os.Stderr, os.Stderr
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			return fmt.Errorf("start %s: %w", name, err)
		}
		procs = append(procs, c)
		go func() {
			err := c.Wait()
			exited <- fmt.Sprintf("%s exited: %v", name, err)
		}()
		return nil
	}
	ready := func(what string, ok func() bool) error {
		for deadline := time.Now().Add(time.Minute); !ok(); {
			select {
			case msg := <-exited:
				return fmt.Errorf("%s: %s", what, msg)
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: not ready after a minute", what)
			}
		}
		return nil
	}
	registered := func(prog uint32) func() bool {
		return func() bool { p, err := portmapGetport(server, server, prog); return err == nil && p != 0 }
	}
	err = start("rpcbind", "-f")
	if err == nil {
		err = ready("rpcbind", func() bool {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(server, 111).String(), time.Second)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}
	if err == nil {
		err = start("ganesha.nfsd", "-F", "-L", filepath.Join(spec.Dir, "ganesha.log"), "-f", filepath.Join(spec.Dir, "ganesha.conf"),
			"-p", filepath.Join(spec.Dir, "ganesha.pid"), "-N", "NIV_EVENT")
	}
	if err == nil {
		err = ready("ganesha", func() bool { return registered(progMount)() && registered(progNFS)() })
	}
	if err == nil {
		err = start("in.tftpd", "-L", "-a", netip.AddrPortFrom(server, 69).String(), "-s", spec.TFTPRoot)
	}
	if err == nil {
		err = start("dnsmasq", "-k", "--conf-file="+filepath.Join(spec.Dir, "dnsmasq.conf"))
	}
	if err == nil {
		// dnsmasq and in.tftpd bind at once; a short wait lets a bad config end them here.
		select {
		case msg := <-exited:
			err = errors.New(msg)
		case <-time.After(300 * time.Millisecond):
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		return 1
	}
	fmt.Fprintln(os.Stderr, peersReady)
	select {
	case <-ctx.Done():
		return 0
	case msg := <-exited:
		fmt.Fprintln(os.Stderr, "peers:", msg)
		return 1
	}
}

// stopPeers ends procs (SIGTERM, SIGKILL after 10 s) and waits for each; exited gets
// one message per process that ended.
func stopPeers(procs []*exec.Cmd, exited chan string) {
	alive := 0
	for _, c := range procs {
		if c.ProcessState == nil && c.Process.Signal(syscall.SIGTERM) == nil {
			alive++
		}
	}
	kill := time.After(10 * time.Second)
	for alive > 0 {
		select {
		case <-exited:
			alive--
		case <-kill:
			for _, c := range procs {
				c.Process.Kill()
			}
			kill = nil
		}
	}
}

// startPeers starts the supervisor in the server namespace and waits until it serves.
func (f *Fleet) startPeers(dir, image string) {
	f.cgroup = newCGroup(f.t)
	specPath, err := f.writePeerFiles(dir, image)
	must(f.t, err)
	exe, err := os.Executable()
	must(f.t, err)
	// The supervisor is the first process of a PID namespace of its own: when it ends,
	// however, the kernel kills every peer process (rpcbind, dnsmasq and in.tftpd drop
	// root, which clears their own Pdeathsig); it gets SIGKILL when the simulator ends.
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	if f.cgroup != "" {
		// It starts in the cgroup (clone3 CLONE_INTO_CGROUP), so every peer process and
		// every process they fork is counted there, also those nobody waits for
		// (in.tftpd ignores SIGCHLD: its transfers' CPU never reaches a cutime).
		cg, err := os.Open(f.cgroup)
		must(f.t, err)
		defer cg.Close()
		attr.UseCgroupFD, attr.CgroupFD = true, int(cg.Fd())
	}
	f.startServer(dir, []string{"env", peerEnv + "=" + specPath, exe, "-test.run=^$"}, attr, peersReady, 5*time.Minute)
	f.peerLogs = filepath.Join(dir, "peers")
}

// peerLogSizes returns the sizes of the peers' logs (where a run's lines start).
func peerLogSizes(dir string) []int64 {
	var out []int64
	for _, name := range peerLogs {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			out = append(out, 0)
			continue
		}
		out = append(out, fi.Size())
	}
	return out
}

// peerWarnings counts the warning and error lines of the peers' logs after from (the
// sizes peerLogSizes returned; ganesha warns at start about Kerberos and D-Bus).
func peerWarnings(dir string, from []int64) int {
	n := 0
	for i, name := range peerLogs {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		b = b[min(int64(len(b)), from[i]):]
		for _, line := range strings.Split(string(b), "\n") {
			for _, lvl := range []string{":WARN :", ":CRIT :", ":MAJ :", ":FATAL :", "warning", "error", "failed"} {
				if strings.Contains(line, lvl) {
					n++
					break
				}
			}
		}
	}
	return n
}

// treeStat sums what every process below pid has used: utime+stime and the
// children's times that each parent reaped (cutime+cstime; in.tftpd forks a process per
// transfer), and RSS (shared pages count once per process). HWM stays 0: a forked
// child's peak is not in /proc after it ends; Run samples RSS instead.
func treeStat(pid int) (procStat, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return procStat{}, err
	}
	type entry struct {
		ppid     int
		cpu, rss int64
		comm     string
	}
	procs := map[int]entry{}
	page := int64(os.Getpagesize())
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		i := strings.LastIndexByte(string(b), ')')
		if err != nil || i < 0 || i+2 > len(b) {
			continue // ended meanwhile
		}
		fields := strings.Fields(string(b[i+2:]))
		if len(fields) < 22 {
			continue
		}
		num := func(i int) int64 { n, _ := strconv.ParseInt(fields[i], 10, 64); return n }
		// fields[0] is stat field 3 (state): ppid 4, utime 14 .. cstime 17, rss 24.
		comm := string(b[bytes.IndexByte(b, '(')+1 : i])
		procs[p] = entry{ppid: int(num(1)), cpu: num(11) + num(12) + num(13) + num(14), rss: num(21) * page, comm: comm}
	}
	if _, ok := procs[pid]; !ok {
		return procStat{}, fmt.Errorf("process %d is gone", pid)
	}
	in := map[int]bool{pid: true}
	for changed := true; changed; {
		changed = false
		for p, e := range procs {
			if !in[p] && in[e.ppid] {
				in[p], changed = true, true
			}
		}
	}
	s := procStat{ByCmd: map[string]time.Duration{}}
	delete(in, pid) // the supervisor is the simulator's, not a peer (it only waits)
	for p := range in {
		cpu := time.Duration(procs[p].cpu) * time.Second / 100
		s.CPU += cpu
		s.ByCmd[procs[p].comm] += cpu
		s.RSS += procs[p].rss
		s.Threads++
	}
	return s, nil
}

// newCGroup makes a cgroup v2 directory for the peers (removed by t.Cleanup, after the
// supervisor was stopped: anything left in it is killed first); "" when the machine
// has no cgroup v2 hierarchy to write to.
func newCGroup(t testing.TB) string {
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != "cgroup2" {
			continue
		}
		dir := filepath.Join(f[1], fmt.Sprintf("pifleet-sim-%d-%d", os.Getpid(), cgroupSeq.Add(1)))
		if os.Mkdir(dir, 0o755) != nil {
			continue
		}
		t.Cleanup(func() {
			os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644)
			for range 100 { // the kernel removes a killed cgroup's last task asynchronously
				if os.Remove(dir) == nil || os.IsNotExist(os.Remove(dir)) {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			t.Errorf("cgroup %s not removed", dir)
		})
		return dir
	}
	return ""
}

// cgroupSeq numbers the cgroups of one simulator process.
var cgroupSeq atomic.Int64

// cgroupCPU is the CPU every process that ever ran in cgroup dir has used.
func cgroupCPU(dir string) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			return time.Duration(n) * time.Microsecond, err
		}
	}
	return 0, fmt.Errorf("%s/cpu.stat: no usage_usec", dir)
}

// peerStat is the peers' figures: RSS and CPU per command from their process tree,
// CPU in all from their cgroup; what the cgroup counts beyond the tree is the CPU of
// processes that ended unwaited for (in.tftpd's transfers).
func (f *Fleet) peerStat() (procStat, error) {
	s, err := treeStat(f.server.Process.Pid)
	if err != nil || f.cgroup == "" {
		return s, err
	}
	cpu, err := cgroupCPU(f.cgroup)
	if err != nil {
		return s, err
	}
	s.ByCmd["ended, unwaited (in.tftpd transfers)"] = max(0, cpu-s.CPU)
	s.CPU = cpu
	return s, nil
}
