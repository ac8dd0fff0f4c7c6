package nfsroot

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/overlay"
	"github.com/pifleet/pifleet/test/require"
	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
	"golang.org/x/sys/unix"
)

// BenchmarkVsGanesha runs the same clients against three servers side by side in one run:
// pifleet serving its overlay of a lower tree with a fresh upper, nfs-ganesha 4.3 serving
// a kernel overlayfs mount of the same lower with a fresh upper, and the same ganesha
// serving a plain copy of the lower directory. Each server and every client are pinned to
// CPU 0 (see BENCH-PEERS.md); pifleet runs in its own process, as ganesha does. Everything
// runs in a network namespace the benchmark creates and deletes.
//
// Needs root and the Debian packages nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils.
// NFSROOT_BENCH_ROUNDS sets the rounds (default 5), NFSROOT_BENCH_ROWS keeps the rows
// whose name contains one of its comma-separated words, NFSROOT_BENCH_CPUPROFILE writes
// pifleet's CPU profile to that file, NFSROOT_BENCH_STRACE=DIR adds one untimed round per
// row and server with `strace -c -f` attached to the server and writes its syscall counts
// to DIR.
func BenchmarkVsGanesha(b *testing.B) {
	needRoot(b)
	require.Tools(b, map[string]string{"ganesha.nfsd": "nfs-ganesha nfs-ganesha-vfs", "rpcbind": "rpcbind",
		"ip": "iproute2", "unshare": "util-linux", "taskset": "util-linux", "nfs-ls": "libnfs-utils"})
	bb := newBenchBed(b)
	restore := pinProcess(b, 0)
	defer restore()
	loadBefore := loadavg()
	rows := []struct {
		name string
		run  func(b *testing.B, sc *benchConn)
	}{
		{"read 256 MiB, 1 MiB READs, 1 in flight", bb.seqRead},
		{"read 256 MiB, 128 KiB READs, 8 in flight", bb.readAhead},
		{"write 64 MiB, 1 MiB, 1 in flight + COMMIT", func(b *testing.B, sc *benchConn) { bb.write(b, sc, 1) }},
		{"write 64 MiB, 1 MiB, 8 in flight + COMMIT", func(b *testing.B, sc *benchConn) { bb.write(b, sc, 8) }},
		{"READDIRPLUS 10,000 entries (Go client, 128 KiB replies)", bb.list},
		{"READDIRPLUS 10,000 entries (go-nfs-client, 4 KiB replies)", bb.goNFSList},
		{"READDIRPLUS 10,000 entries (libnfs nfs-ls)", bb.nfsLs},
		{"LOOKUP+GETATTR+READ 2,000 small files", bb.smallFiles},
	}
	// Rounds rotate the order of the servers, and each cell is the median of its rounds:
	// on a shared machine load comes in bursts, and back-to-back blocks per server would
	// compare bursts, not servers.
	rounds := benchRounds()
	conns := make([]*benchConn, len(bb.servers))
	for i, srv := range bb.servers {
		conns[i] = bb.dial(srv)
		defer conns[i].c.c.Close()
	}
	var t strings.Builder
	fmt.Fprintf(&t, "\nmedian (min-max) of %d rounds rotating the servers; each server and the clients pinned to CPU 0\n", rounds)
	fmt.Fprintf(&t, "load average before: %s\n", loadBefore)
	head := "| row | pifleet | ganesha on overlayfs | ganesha on plain dir | pifleet / overlayfs | pifleet / plain dir |\n|---|---|---|---|---|---|\n"
	t.WriteString("\nwall time\n" + head)
	var cpu strings.Builder
	cpu.WriteString("\nserver CPU time (all threads)\n" + head)
	for _, row := range rows {
		if !rowWanted(row.name) {
			continue
		}
		times := make([][]time.Duration, len(bb.servers))
		cpus := make([][]time.Duration, len(bb.servers))
		for r := range rounds {
			for k := range bb.servers {
				i := (k + r) % len(bb.servers)
				cpu0 := cpuTimes(bb.servers[i].pid)
				start := time.Now()
				row.run(b, conns[i])
				times[i] = append(times[i], time.Since(start))
				cpus[i] = append(cpus[i], cpuSince(bb.servers[i].pid, cpu0))
				bb.cleanRound(b, conns[i])
			}
		}
		t.WriteString(tableRow(row.name, times))
		cpu.WriteString(tableRow(row.name, cpus))
		if dir := os.Getenv("NFSROOT_BENCH_STRACE"); dir != "" {
			for i := range bb.servers {
				bb.straceRound(b, dir, row.name, conns[i], func() { row.run(b, conns[i]) })
				bb.cleanRound(b, conns[i])
			}
		}
		for i, ts := range times {
			b.ReportMetric(float64(median(ts).Microseconds())/1000, strings.ReplaceAll(bb.servers[i].name+"/"+row.name, " ", "_")+"-ms")
		}
	}
	fmt.Fprintf(&t, "load average after: %s\n", loadavg())
	t.WriteString(cpu.String())
	// Printed, not logged: the table is the point of `make bench`.
	fmt.Print(t.String())
}

// straceRound runs one round of a row against sc's server with `strace -c -f` attached to
// the server process, and leaves strace's summary in dir. Only after the timed rounds: the
// counts are of a warm server (handle tables written, lower dirs listed).
func (bb *benchBed) straceRound(b *testing.B, dir, row string, sc *benchConn, run func()) {
	must(b, os.MkdirAll(dir, 0o755))
	name := strings.NewReplacer(" ", "_", ",", "", "/", "_", "+", "_").Replace(row + "-" + sc.srv.name)
	cmd := exec.Command("strace", "-c", "-f", "-p", fmt.Sprint(sc.srv.pid), "-o", filepath.Join(dir, name+".txt"))
	stderr, err := cmd.StderrPipe()
	must(b, err)
	must(b, cmd.Start())
	// strace says "Process N attached with M threads" once every thread is traced.
	sc2 := bufio.NewScanner(stderr)
	for sc2.Scan() && !strings.Contains(sc2.Text(), "attached") {
	}
	go func() {
		for sc2.Scan() {
		}
	}()
	run()
	time.Sleep(100 * time.Millisecond) // let the server finish its last reply's bookkeeping
	_ = cmd.Process.Signal(unix.SIGINT)
	_ = cmd.Wait()
}

// tableRow is one row of medians (min-max) per server and the ratios of pifleet's median
// to each ganesha's.
func tableRow(name string, ds [][]time.Duration) string {
	var t strings.Builder
	fmt.Fprintf(&t, "| %s |", name)
	meds := make([]time.Duration, len(ds))
	for i, d := range ds {
		meds[i] = median(d)
		lo, hi := spread(d)
		fmt.Fprintf(&t, " %s (%s-%s) |", fmtDur(meds[i]), fmtDur(lo), fmtDur(hi))
	}
	fmt.Fprintf(&t, " %.2f | %.2f |\n", float64(meds[0])/float64(max(meds[1], 1)), float64(meds[0])/float64(max(meds[2], 1)))
	return t.String()
}

// cpuTimes is the CPU time each thread of the process has used so far (nanoseconds, from
// its schedstat: /proc/PID/stat counts clock ticks, too coarse for a 50 ms row).
func cpuTimes(pid int) map[string]int64 {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	m := make(map[string]int64, len(tasks))
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, task.Name()))
		if err != nil {
			continue
		}
		var ns int64
		if _, err := fmt.Sscan(string(b), &ns); err == nil {
			m[task.Name()] = ns
		}
	}
	return m
}

// cpuSince is the CPU time the process's threads used since before was taken. A thread
// that exited meanwhile is not counted (ganesha ends idle worker threads now and then, so
// its figure may be a little low; pifleet's threads live as long as the process).
func cpuSince(pid int, before map[string]int64) time.Duration {
	var sum int64
	for tid, ns := range cpuTimes(pid) {
		sum += ns - before[tid]
	}
	return time.Duration(sum)
}

func loadavg() string {
	la, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(la))
}

// rowWanted applies NFSROOT_BENCH_ROWS.
func rowWanted(name string) bool {
	v := os.Getenv("NFSROOT_BENCH_ROWS")
	if v == "" {
		return true
	}
	for w := range strings.SplitSeq(v, ",") {
		if w != "" && strings.Contains(strings.ToLower(name), strings.ToLower(w)) {
			return true
		}
	}
	return false
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000)
	default:
		return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
	}
}

// benchRounds is 5, or NFSROOT_BENCH_ROUNDS.
func benchRounds() int {
	n := 5
	if v := os.Getenv("NFSROOT_BENCH_ROUNDS"); v != "" {
		_, _ = fmt.Sscan(v, &n)
	}
	return max(n, 1)
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func spread(d []time.Duration) (lo, hi time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	lo, hi = d[0], d[0]
	for _, x := range d {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

// benchServer is one server under test, as reached inside the benchmark's namespace.
type benchServer struct {
	name      string
	pid       int // the server process, for its CPU time
	nfsPort   int
	mountPort int
	export    string // the MOUNT path
}

// benchConn is the benchmark's connection to one server, with its root handle.
type benchConn struct {
	srv  benchServer
	c    *client
	root []byte
	gnc  *nfsc.Target // go-nfs-client on its own connection
}

type benchBed struct {
	b        testing.TB
	dir      string
	lower    string
	ns       string
	servers  []benchServer // pifleet, ganesha on overlayfs, ganesha on the plain dir
	smallRel []string      // paths of the small files, relative to the root
	written  []string      // files the last round wrote, removed after it
}

const (
	ganeshaNFSPort   = 20490
	ganeshaMountPort = 20048
	pifleetBenchPort = 20491
)

func newBenchBed(b *testing.B) *benchBed {
	bb := &benchBed{b: b, dir: b.TempDir(), ns: fmt.Sprintf("pfnfs-bench-%d", os.Getpid())}
	bb.lower = filepath.Join(bb.dir, "lower")
	bb.makeLower()
	bb.makeNetns()
	bb.startPifleet()
	bb.startGanesha()
	return bb
}

func (bb *benchBed) makeLower() {
	b := bb.b
	must(b, os.MkdirAll(bb.lower, 0o755))
	big, err := os.Create(filepath.Join(bb.lower, "big"))
	must(b, err)
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*7 + i>>8)
	}
	for range 256 {
		_, err := big.Write(chunk)
		must(b, err)
	}
	must(b, big.Close())
	d := filepath.Join(bb.lower, "dir10k")
	must(b, os.MkdirAll(d, 0o755))
	for i := range 10000 {
		must(b, os.WriteFile(filepath.Join(d, fmt.Sprintf("entry-%05d", i)), nil, 0o644))
	}
	// 2,000 small files: a copy of /usr/share/doc (padded with generated files if short).
	doc := filepath.Join(bb.lower, "doc")
	_ = filepath.WalkDir("/usr/share/doc", func(p string, de fs.DirEntry, err error) error {
		if err != nil || len(bb.smallRel) >= 2000 || !de.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel("/usr/share/doc", p)
		data, err := os.ReadFile(p)
		if err != nil || len(data) > 64<<10 {
			return nil
		}
		dst := filepath.Join(doc, rel)
		must(b, os.MkdirAll(filepath.Dir(dst), 0o755))
		must(b, os.WriteFile(dst, data, 0o644))
		bb.smallRel = append(bb.smallRel, filepath.Join("doc", rel))
		return nil
	})
	for i := len(bb.smallRel); i < 2000; i++ {
		rel := filepath.Join("doc", "gen", fmt.Sprintf("f%04d", i))
		must(b, os.MkdirAll(filepath.Join(bb.lower, filepath.Dir(rel)), 0o755))
		must(b, os.WriteFile(filepath.Join(bb.lower, rel), []byte(strings.Repeat("doc ", 300)), 0o644))
		bb.smallRel = append(bb.smallRel, rel)
	}
	sort.Strings(bb.smallRel)
	// The plain directory ganesha exports: a copy, so that its writes do not land in the
	// lower the overlays share.
	if out, err := exec.Command("cp", "-a", bb.lower, filepath.Join(bb.dir, "plain")).CombinedOutput(); err != nil {
		b.Fatalf("cp -a: %v\n%s", err, out)
	}
	unix.Sync()
}

// makeNetns makes the benchmark's network namespace, with only lo up.
func (bb *benchBed) makeNetns() {
	b := bb.b
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%q: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", bb.ns)
	b.Cleanup(func() { _ = exec.Command("ip", "netns", "del", bb.ns).Run() })
	run("ip", "netns", "exec", bb.ns, "ip", "link", "set", "lo", "up")
	// glibc does not treat 127.0.0.1 as configured when only lo is up (BENCH-PEERS.md).
	run("ip", "netns", "exec", bb.ns, "ip", "addr", "add", "127.0.0.2/8", "dev", "lo")
}

// TestHelperBenchServer is not a test: run by BenchmarkVsGanesha as a separate process,
// pinned like ganesha, it serves an overlay of NFSROOT_BENCH_DIR/lower as /bench on
// 127.0.0.1:NFSROOT_BENCH_PORT until SIGTERM.
func TestHelperBenchServer(t *testing.T) {
	dir := os.Getenv("NFSROOT_BENCH_DIR")
	if dir == "" {
		t.Skip("helper process for BenchmarkVsGanesha")
	}
	ofs, err := overlay.New(overlay.Options{Upper: filepath.Join(dir, "pf-upper"), Work: filepath.Join(dir, "pf-work"),
		Lowers: []string{filepath.Join(dir, "lower")}})
	must(t, err)
	s := New(Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	s.SetExports([]Export{{Board: "bench", Path: "/bench", FS: ofs, StateDir: filepath.Join(dir, "pf-state"),
		Allow: func(a netip.Addr) bool { return a.IsLoopback() }}})
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("NFSROOT_BENCH_PORT"))
	must(t, err)
	if p := os.Getenv("NFSROOT_BENCH_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
		must(t, err)
		must(t, pprof.StartCPUProfile(f))
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM)
	defer stop()
	fmt.Printf("READY %s\n", ln.Addr())
	_ = s.ServeNFS(ctx, ln)
}

// inNetns runs f on a thread switched into the benchmark's namespace: sockets it makes
// and processes it starts live there. The thread is never given back to Go.
func (bb *benchBed) inNetns(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread dies with this goroutine
		ns, err := os.Open("/var/run/netns/" + bb.ns)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// startPifleet runs TestHelperBenchServer in the namespace, pinned to CPU 0.
func (bb *benchBed) startPifleet() {
	b := bb.b
	cmd := exec.Command("taskset", "-c", "0", os.Args[0], "-test.run=^TestHelperBenchServer$", "-test.timeout=120m")
	cmd.Env = append(os.Environ(), "NFSROOT_BENCH_DIR="+bb.dir, fmt.Sprintf("NFSROOT_BENCH_PORT=%d", pifleetBenchPort))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	must(b, err)
	must(b, bb.inNetns(cmd.Start))
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") {
				ready <- true
			}
		}
		close(ready)
	}()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(unix.SIGTERM)
		_ = cmd.Wait()
	})
	select {
	case ok := <-ready:
		if !ok {
			b.Fatal("pifleet bench server exited before it was ready")
		}
	case <-time.After(60 * time.Second):
		b.Fatal("pifleet bench server did not start")
	}
	bb.servers = append(bb.servers, benchServer{name: "pifleet", pid: cmd.Process.Pid, nfsPort: pifleetBenchPort, mountPort: pifleetBenchPort, export: "/bench"})
}

// startGanesha runs rpcbind and ganesha in the namespace with a private /run. Ganesha
// exports a kernel overlayfs mount of the same lower with a fresh upper, and the plain
// copy of the lower.
func (bb *benchBed) startGanesha() {
	b := bb.b
	m := filepath.Join(bb.dir, "ganesha-root")
	plain := filepath.Join(bb.dir, "plain")
	for _, d := range []string{m, filepath.Join(bb.dir, "g-upper"), filepath.Join(bb.dir, "g-work")} {
		must(b, os.MkdirAll(d, 0o755))
	}
	// index and nfs_export make overlayfs file handles work, which FSAL_VFS needs.
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", fmt.Sprintf("lowerdir=%s,upperdir=%s/g-upper,workdir=%s/g-work,index=on,nfs_export=on", bb.lower, bb.dir, bb.dir), m).CombinedOutput(); err != nil {
		b.Fatalf("mount overlay: %v\n%s", err, out)
	}
	b.Cleanup(func() { _ = exec.Command("umount", m).Run() })
	conf := filepath.Join(bb.dir, "ganesha.conf")
	must(b, os.WriteFile(conf, []byte(fmt.Sprintf(`NFS_CORE_PARAM { Protocols = 3; NFS_Port = %d; MNT_Port = %d; Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; Bind_addr = 127.0.0.1; }
NFSV4 { Graceless = true; }
EXPORT { Export_Id = 1; Path = %s; Pseudo = /bench; Access_Type = RW; Squash = No_Root_Squash; Protocols = 3; Transports = TCP; FSAL { Name = VFS; } }
EXPORT { Export_Id = 2; Path = %s; Pseudo = /plain; Access_Type = RW; Squash = No_Root_Squash; Protocols = 3; Transports = TCP; FSAL { Name = VFS; } }
`, ganeshaNFSPort, ganeshaMountPort, m, plain)), 0o644))
	script := fmt.Sprintf("mount -t tmpfs tmpfs /run && mkdir -p /run/rpcbind && { rpcbind -f -w & echo $! > %s/rpcbind.pid; } && sleep 0.3 && exec taskset -c 0 ganesha.nfsd -F -L %s/ganesha.log -f %s -p %s/ganesha.pid -N NIV_EVENT",
		bb.dir, bb.dir, conf, bb.dir)
	cmd := exec.Command("ip", "netns", "exec", bb.ns, "unshare", "-m", "sh", "-c", script)
	must(b, cmd.Start())
	b.Cleanup(func() {
		// Stop what this benchmark started, by pid: ganesha (the exec chain keeps the pid
		// of cmd) and the rpcbind its shell started.
		_ = cmd.Process.Signal(unix.SIGTERM)
		if b, err := os.ReadFile(filepath.Join(bb.dir, "rpcbind.pid")); err == nil {
			var pid int
			if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 1 {
				_ = unix.Kill(pid, unix.SIGTERM)
			}
		}
		_ = cmd.Wait()
		time.Sleep(200 * time.Millisecond)
	})
	for range 300 {
		if c, err := bb.dialNetns(ganeshaMountPort); err == nil {
			c.Close()
			// ip netns exec, unshare, sh and taskset each exec the next: cmd's pid is ganesha's.
			pid := cmd.Process.Pid
			bb.servers = append(bb.servers,
				benchServer{name: "ganesha on overlayfs", pid: pid, nfsPort: ganeshaNFSPort, mountPort: ganeshaMountPort, export: m},
				benchServer{name: "ganesha on plain dir", pid: pid, nfsPort: ganeshaNFSPort, mountPort: ganeshaMountPort, export: plain})
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(bb.dir, "ganesha.log"))
	b.Fatalf("ganesha did not start:\n%s", log)
}

// dialNetns connects to 127.0.0.1:port inside the benchmark's namespace.
func (bb *benchBed) dialNetns(port int) (net.Conn, error) {
	var c net.Conn
	err := bb.inNetns(func() (err error) {
		c, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
		return err
	})
	return c, err
}

// dial mounts srv's export and opens the connection the rows use.
func (bb *benchBed) dial(srv benchServer) *benchConn {
	mc, err := bb.dialNetns(srv.mountPort)
	must(bb.b, err)
	m := &client{t: bb.b, c: mc, br: bufio.NewReader(mc), xid: 100}
	st, root := m.mnt(srv.export)
	if st != 0 {
		bb.b.Fatalf("%s: mount %s: status %d", srv.name, srv.export, st)
	}
	mc.Close()
	nc, err := bb.dialNetns(srv.nfsPort)
	must(bb.b, err)
	var rc *rpc.Client
	must(bb.b, bb.inNetns(func() (err error) {
		rc, err = nfsc.DialServiceAtPort("127.0.0.1", srv.nfsPort)
		return err
	}))
	auth := rpc.AuthUnix{Machinename: "bench", Uid: 0, Gid: 0, GidLen: 1}
	// An entry timeout of 0: go-nfs-client lists the directory again on every ReadDirPlus.
	gnc, err := nfsc.NewTargetWithClient(rc, auth.Auth(), root, "/", 0)
	must(bb.b, err)
	bb.b.Cleanup(func() { rc.Close() })
	return &benchConn{srv: srv, c: &client{t: bb.b, c: nc, br: bufio.NewReader(nc), xid: 100}, root: root, gnc: gnc}
}

const benchIO = 1 << 20

func fhArgs(fh []byte) *xdrWriter {
	w := &xdrWriter{}
	w.opaque(fh)
	return w
}

func (c *client) fastLookup(b *testing.B, dir []byte, name string) []byte {
	w := fhArgs(dir)
	w.str(name)
	st, r := c.rawNFS(3, w.b)
	if st != 0 {
		b.Fatalf("lookup %s: %d", name, st)
	}
	return r.opaque(maxFHSize)
}

func skipPostOpAttr(r *xdrReader) {
	if r.bool() {
		r.fixed(84)
	}
}

// readData decodes a READ result after its status and returns the data's length.
func readData(b *testing.B, r *xdrReader) int {
	skipPostOpAttr(r)
	r.u32()
	r.bool()
	data := r.opaque(maxIO)
	if r.err != nil {
		b.Fatal(r.err)
	}
	return len(data)
}

// fastRead reads one chunk and returns its length.
func (c *client) fastRead(b *testing.B, fh []byte, off uint64, n uint32) int {
	w := fhArgs(fh)
	w.u64(off)
	w.u32(n)
	st, r := c.rawNFS(6, w.b)
	if st != 0 {
		b.Fatalf("read at %d: %d", off, st)
	}
	return readData(b, r)
}

// pipeline makes n NFS calls of procedure proc with depth of them in flight (as a kernel
// client's readahead or writeback does), and hands each result after its NFS status,
// which must be OK, to check.
func (c *client) pipeline(b *testing.B, proc uint32, n, depth int, args func(i int) []byte, check func(r *xdrReader)) {
	_ = c.c.SetDeadline(time.Now().Add(2 * time.Minute))
	sent := 0
	send := func() {
		if _, err := c.c.Write(c.callMsg(progNFS, 3, proc, rawArgs(args(sent)))); err != nil {
			b.Fatal(err)
		}
		sent++
	}
	for sent < min(depth, n) {
		send()
	}
	var buf []byte
	for range n {
		rec, err := readRecord(c.br, buf, 1<<30)
		if err != nil {
			b.Fatal(err)
		}
		buf = rec
		r := &xdrReader{b: rec}
		r.u32() // xid: replies come in any order, each is checked alike
		if r.u32() != rpcReply || r.u32() != msgAccepted {
			b.Fatalf("proc %d: not an accepted reply", proc)
		}
		r.u32()
		r.opaque(maxAuthBody)
		if st := r.u32(); st != acceptSuccess {
			b.Fatalf("proc %d: accept_stat %d", proc, st)
		}
		if st := r.u32(); st != 0 || r.err != nil {
			b.Fatalf("proc %d: status %d %v", proc, st, r.err)
		}
		check(r)
		if sent < n {
			send()
		}
	}
}

func (bb *benchBed) seqRead(b *testing.B, sc *benchConn) {
	fh := sc.c.fastLookup(b, sc.root, "big")
	var total int
	sc.c.pipeline(b, 6, 256<<20/benchIO, 1, func(i int) []byte {
		w := fhArgs(fh)
		w.u64(uint64(i) * benchIO)
		w.u32(benchIO)
		return w.b
	}, func(r *xdrReader) { total += readData(b, r) })
	if total != 256<<20 {
		b.Fatalf("read %d bytes", total)
	}
}

// readAhead reads the big file as the Linux client's readahead does: 128 KiB READs, 8 in
// flight.
func (bb *benchBed) readAhead(b *testing.B, sc *benchConn) {
	const chunk = 128 << 10
	fh := sc.c.fastLookup(b, sc.root, "big")
	var total int
	sc.c.pipeline(b, 6, 256<<20/chunk, 8, func(i int) []byte {
		w := fhArgs(fh)
		w.u64(uint64(i) * chunk)
		w.u32(chunk)
		return w.b
	}, func(r *xdrReader) { total += readData(b, r) })
	if total != 256<<20 {
		b.Fatalf("read %d bytes", total)
	}
}

var benchSeq int

// write creates a file and writes 64 MiB to it in 1 MiB UNSTABLE WRITEs, depth of them
// in flight, then COMMITs.
func (bb *benchBed) write(b *testing.B, sc *benchConn, depth int) {
	c := sc.c
	benchSeq++
	name := fmt.Sprintf("w%d", benchSeq)
	w := fhArgs(sc.root)
	w.str(name)
	w.u32(createUnchecked)
	w.b = append(w.b, make([]byte, 6*4)...) // empty sattr3
	st, r := c.rawNFS(8, w.b)
	if st != 0 || !r.bool() {
		b.Fatalf("create: %d", st)
	}
	fh := r.opaque(maxFHSize)
	data := make([]byte, benchIO)
	written := 0
	c.pipeline(b, 7, 64<<20/benchIO, depth, func(i int) []byte {
		w := fhArgs(fh)
		w.u64(uint64(i) * benchIO)
		w.u32(benchIO)
		w.u32(unstable)
		w.opaque(data)
		return w.b
	}, func(r *xdrReader) {
		skipWcc(r)
		written += int(r.u32())
	})
	if written != 64<<20 {
		b.Fatalf("wrote %d bytes", written)
	}
	w = fhArgs(fh)
	w.u64(0)
	w.u32(0)
	if st, _ := c.rawNFS(21, w.b); st != 0 {
		b.Fatalf("commit: %d", st)
	}
	bb.written = append(bb.written, name)
}

func skipWcc(r *xdrReader) {
	if r.bool() {
		r.fixed(24)
	}
	skipPostOpAttr(r)
}

// cleanRound removes what a round wrote, untimed, so the disk does not fill up.
func (bb *benchBed) cleanRound(b *testing.B, sc *benchConn) {
	for _, name := range bb.written {
		w := fhArgs(sc.root)
		w.str(name)
		if st, _ := sc.c.rawNFS(12, w.b); st != 0 {
			b.Fatalf("remove %s: %d", name, st)
		}
	}
	bb.written = nil
}

func (bb *benchBed) list(b *testing.B, sc *benchConn) {
	c := sc.c
	dir := c.fastLookup(b, sc.root, "dir10k")
	n := 0
	cookie := uint64(0)
	var verf []byte = make([]byte, 8)
	for eof := false; !eof; {
		w := fhArgs(dir)
		w.u64(cookie)
		w.fixed(verf)
		w.u32(16384)
		w.u32(131072)
		st, r := c.rawNFS(17, w.b)
		if st != 0 {
			b.Fatalf("readdirplus: %d", st)
		}
		skipPostOpAttr(r)
		verf = r.fixed(8)
		for r.bool() {
			r.u64()
			name := r.str(maxNameLen)
			cookie = r.u64()
			skipPostOpAttr(r)
			if r.bool() {
				r.opaque(maxFHSize)
			}
			if name != "." && name != ".." {
				n++
			}
		}
		eof = r.bool()
		if r.err != nil {
			b.Fatal(r.err)
		}
	}
	if n != 10000 {
		b.Fatalf("listed %d entries", n)
	}
}

// goNFSList lists the 10,000-entry directory with go-nfs-client's ReadDirPlus (4 KiB
// replies, its fixed size; XDR decoded by reflection, alike for every server).
func (bb *benchBed) goNFSList(b *testing.B, sc *benchConn) {
	ents, err := sc.gnc.ReadDirPlus("dir10k")
	if err != nil {
		b.Fatal(err)
	}
	if len(ents) != 10000 {
		b.Fatalf("go-nfs-client listed %d entries", len(ents))
	}
}

// nfsLs lists the 10,000-entry directory with libnfs's nfs-ls (READDIRPLUS), pinned to
// CPU 0 like the server; process start is part of the time, alike for every server.
func (bb *benchBed) nfsLs(b *testing.B, sc *benchConn) {
	url := fmt.Sprintf("nfs://127.0.0.1%s/dir10k?version=3&nfsport=%d&mountport=%d&auto-traverse-mounts=0",
		sc.srv.export, sc.srv.nfsPort, sc.srv.mountPort)
	cmd := exec.Command("taskset", "-c", "0", "nfs-ls", url)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := bb.inNetns(cmd.Run); err != nil {
		b.Fatalf("nfs-ls %s: %v\n%s", url, err, out.String())
	}
	if n := strings.Count(out.String(), "entry-"); n != 10000 {
		b.Fatalf("nfs-ls listed %d entries:\n%.2000s", n, out.String())
	}
}

func (bb *benchBed) smallFiles(b *testing.B, sc *benchConn) {
	c := sc.c
	dirs := map[string][]byte{".": sc.root}
	var dirOf func(string) []byte
	dirOf = func(d string) []byte {
		if fh, ok := dirs[d]; ok {
			return fh
		}
		fh := c.fastLookup(b, dirOf(filepath.Dir(d)), filepath.Base(d))
		dirs[d] = fh
		return fh
	}
	for _, rel := range bb.smallRel {
		fh := c.fastLookup(b, dirOf(filepath.Dir(rel)), filepath.Base(rel))
		if st, _ := c.rawNFS(1, fhArgs(fh).b); st != 0 {
			b.Fatalf("getattr %s: %d", rel, st)
		}
		c.fastRead(b, fh, 0, 64<<10)
	}
}

// pinProcess pins every thread of the process to cpu (new threads inherit it) and returns
// a function that gives them all CPUs back.
func pinProcess(b testing.TB, cpu int) func() {
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		b.Logf("not pinned: %v", err)
		return func() {}
	}
	var one unix.CPUSet
	one.Set(cpu)
	setAll := func(set *unix.CPUSet) {
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, t := range tasks {
			var tid int
			if _, err := fmt.Sscan(t.Name(), &tid); err == nil {
				_ = unix.SchedSetaffinity(tid, set)
			}
		}
	}
	setAll(&one)
	return func() { setAll(&old) }
}
