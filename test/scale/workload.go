package scale

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
)

// The NFS workload is SYNTHETIC: a Debian-like tree and an access sequence shaped like a
// systemd boot (the dynamic loader's library walk, unit and rules directories listed,
// configuration files read, optional files probed, a journal written), generated from a
// fixed seed. It is not a capture of a real boot.

// stepKind is what one workload step does; nfsClient expands it into NFS calls.
type stepKind int

const (
	stepRead    stepKind = iota // lookup + GETATTR + READ to EOF
	stepStat                    // lookup + GETATTR
	stepAbsent                  // LOOKUP answered NOENT
	stepReaddir                 // READDIRPLUS to EOF
	stepWrite                   // WRITE (UNSTABLE) + COMMIT, into an existing lower file (copy-up)
	stepCreate                  // CREATE + WRITE + COMMIT
)

type step struct {
	kind stepKind
	path string
	size int // stepWrite, stepCreate
}

// Workload is a synthetic root tree's files and the steps one board's boot makes on it.
type Workload struct {
	files map[string]int // path (absolute, in the root) -> size
	dirs  []string
	steps []step
}

// dirSpec is one directory of the synthetic tree: how many files, and their size class.
type dirSpec struct {
	dir   string
	files int
	big   bool // shared libraries and binaries: larger files
}

var debianDirs = []dirSpec{
	{"/etc", 120, false},
	{"/etc/systemd/system", 40, false},
	{"/etc/systemd/system/multi-user.target.wants", 20, false},
	{"/etc/default", 20, false},
	{"/etc/ssh", 10, false},
	{"/usr/bin", 140, true},
	{"/usr/sbin", 60, true},
	{"/usr/lib/aarch64-linux-gnu", 260, true},
	{"/usr/lib/systemd", 30, true},
	{"/usr/lib/systemd/system", 220, false},
	{"/usr/lib/systemd/system-generators", 12, true},
	{"/usr/lib/udev/rules.d", 90, false},
	{"/usr/lib/modules/6.1.0-rpi-v8/kernel/drivers/net", 60, true},
	{"/usr/lib/modules/6.1.0-rpi-v8/kernel/drivers/usb", 50, true},
	{"/usr/lib/modules/6.1.0-rpi-v8/kernel/fs", 30, true},
	{"/usr/lib/python3/dist-packages", 120, false},
	{"/usr/share/locale/en/LC_MESSAGES", 30, false},
	{"/usr/share/dbus-1/system.d", 30, false},
	{"/usr/share/zoneinfo/Europe", 40, false},
	{"/var/lib/dpkg/info", 120, false},
	{"/var/lib/systemd", 8, false},
	{"/var/log", 6, false},
}

// NewWorkload generates the tree and the boot's steps. scale 1 gives the full ~1,500-file
// tree (about 41 MiB read per board); a smaller scale keeps every directory but fewer files.
func NewWorkload(scale float64) *Workload {
	rng := rand.New(rand.NewPCG(16, 1))
	w := &Workload{files: map[string]int{}}
	var all []string
	for _, d := range debianDirs {
		w.dirs = append(w.dirs, d.dir)
		n := max(2, int(float64(d.files)*scale))
		for i := range n {
			var size int
			switch r := rng.Float64(); {
			case d.big && r < 0.05:
				size = 512<<10 + rng.IntN(1536<<10) // libc, systemd, a big binary
			case d.big && r < 0.5:
				size = 16<<10 + rng.IntN(112<<10)
			case r < 0.75:
				size = 200 + rng.IntN(4<<10)
			default:
				size = 4<<10 + rng.IntN(28<<10)
			}
			if scale < 1 {
				size = min(size, 3000)
			}
			p := fmt.Sprintf("%s/f%03d", d.dir, i)
			switch {
			case d.dir == "/usr/lib/aarch64-linux-gnu":
				p = fmt.Sprintf("%s/lib%03d.so.1", d.dir, i)
			case d.dir == "/usr/lib/systemd/system":
				p = fmt.Sprintf("%s/unit%03d.service", d.dir, i)
			case d.dir == "/usr/lib/udev/rules.d":
				p = fmt.Sprintf("%s/%02d-rule%03d.rules", d.dir, 10+i%89, i)
			}
			w.files[p] = size
			all = append(all, p)
		}
	}
	// The boot: the loader and early userspace read libraries and /etc, then systemd lists
	// unit and rules directories and reads most of what it finds, probing optional paths;
	// a third of the files are only stat'ed. The walk is shuffled per directory group so
	// lookups interleave across directories as services start in parallel.
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	slices.SortStableFunc(all, func(a, b string) int { return bootPhase(a) - bootPhase(b) })
	listed := map[string]bool{}
	for i, p := range all {
		dir := path.Dir(p)
		if listDir(dir) && !listed[dir] {
			listed[dir] = true
			w.steps = append(w.steps, step{kind: stepReaddir, path: dir})
		}
		if i%5 == 0 {
			w.steps = append(w.steps, step{kind: stepAbsent, path: fmt.Sprintf("%s/optional-%d.conf", dir, i)})
		}
		if i%3 == 2 {
			w.steps = append(w.steps, step{kind: stepStat, path: p})
		} else {
			w.steps = append(w.steps, step{kind: stepRead, path: p})
		}
	}
	// What a first boot writes: the random seed and machine state (copied up from the
	// image), and a journal.
	w.steps = append(w.steps,
		step{kind: stepWrite, path: "/var/lib/systemd/f000", size: 512},
		step{kind: stepWrite, path: "/etc/f001", size: 1024},
		step{kind: stepCreate, path: "/var/log/journal.log", size: int(max(64<<10, scale*1536*1024))},
		step{kind: stepCreate, path: "/var/lib/systemd/timesync-clock", size: 64},
		step{kind: stepCreate, path: "/etc/adjtime", size: 48},
	)
	return w
}

// bootPhase orders the walk: libraries and binaries, then /etc, then units and the rest.
func bootPhase(p string) int {
	switch {
	case hasPrefix(p, "/usr/lib/aarch64-linux-gnu"), hasPrefix(p, "/usr/bin"), hasPrefix(p, "/usr/sbin"):
		return 0
	case hasPrefix(p, "/etc"):
		return 1
	case hasPrefix(p, "/usr/lib/systemd"), hasPrefix(p, "/usr/lib/udev"), hasPrefix(p, "/usr/lib/modules"):
		return 2
	}
	return 3
}

func hasPrefix(p, dir string) bool {
	return len(p) > len(dir) && p[:len(dir)] == dir && p[len(dir)] == '/'
}

// listDir says which directories the boot lists (systemd, udev, dbus, the module loader).
func listDir(dir string) bool {
	return hasPrefix(dir+"/", "/etc/systemd") || hasPrefix(dir+"/", "/usr/lib/systemd") ||
		dir == "/usr/lib/udev/rules.d" || dir == "/usr/share/dbus-1/system.d" || hasPrefix(dir+"/", "/usr/lib/modules") ||
		dir == "/etc" || dir == "/etc/default"
}

// Files is the number of files in the tree.
func (w *Workload) Files() int { return len(w.files) }

// Steps is the number of workload steps per board.
func (w *Workload) Steps() int { return len(w.steps) }

// WriteTree lays the tree out under root (file contents are filler; sizes are what count).
func (w *Workload) WriteTree(root string) error {
	for _, d := range w.dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return fmt.Errorf("workload tree: %w", err)
		}
	}
	filler := make([]byte, 2<<20)
	for i := range filler {
		filler[i] = byte(i*7 + i>>9)
	}
	for p, size := range w.files {
		if err := os.WriteFile(filepath.Join(root, p), filler[:size], 0o644); err != nil {
			return fmt.Errorf("workload tree: %w", err)
		}
	}
	return nil
}

// run replays the steps on c; it returns the bytes read.
func (w *Workload) run(c *nfsClient) (int64, error) {
	var read int64
	for _, s := range w.steps {
		var err error
		switch s.kind {
		case stepRead:
			var n int64
			n, err = c.readFile(s.path)
			read += n
		case stepStat:
			err = c.stat(s.path)
		case stepAbsent:
			err = c.absent(s.path)
		case stepReaddir:
			_, err = c.readdir(s.path)
		case stepWrite:
			err = c.writeFile(s.path, s.size, false)
		case stepCreate:
			err = c.writeFile(s.path, s.size, true)
		}
		if err != nil {
			return read, err
		}
	}
	return read, nil
}
