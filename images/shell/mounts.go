package shell

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// mountKind says what goes on a mount point.
type mountKind int

const (
	mountProc mountKind = iota
	mountSys
	mountDev
	mountTmpfs // /run, /tmp, /var/tmp: what the command leaves there is never part of the layer
	mountBind
)

// plannedMount is one mount on the root, at Path (relative, no symlinks: planMounts checked).
type plannedMount struct {
	Kind mountKind
	Path string
	Mode uint32 // tmpfs root mode
	Host string // bind source; for /dev, the devpts to bind (else a private one)
}

// planMounts decides the mounts from what the image (mounted read-only at probe) has. A
// mount point the image lacks is made in scaffold, a read-only layer above the image's
// layers that the upper never copies from unless the command writes there: so mount
// points do not end up in the new layer. Parent dirs copied into the scaffold get the
// image's attributes, since a copy-up takes them from the topmost layer.
func (c *config) planMounts(probe, scaffold string) ([]plannedMount, error) {
	std := []plannedMount{
		{Kind: mountProc, Path: "proc"},
		{Kind: mountSys, Path: "sys"},
		{Kind: mountDev, Path: "dev"},
		{Kind: mountTmpfs, Path: "run", Mode: 0o755},
		{Kind: mountTmpfs, Path: "tmp", Mode: 0o1777},
		{Kind: mountTmpfs, Path: "var/tmp", Mode: 0o1777},
	}
	if c.HostPTS {
		std[2].Host = "/dev/pts"
	}
	var out []plannedMount
	for _, m := range std {
		ok, err := mountPoint(probe, scaffold, m.Path, pointDir)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, m)
		}
	}
	for _, b := range c.Binds {
		fi, err := os.Stat(b.Host)
		if err != nil {
			return nil, fmt.Errorf("bind %s: %w", b.Host, err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("bind %s: not a directory", b.Host)
		}
		rel := strings.Trim(filepath.Clean(b.Path), "/")
		if rel == "" {
			return nil, fmt.Errorf("bind %s: cannot cover the whole root", b.Host)
		}
		ok, err := mountPoint(probe, scaffold, rel, pointDir)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("bind %s: %s is not a directory in the image", b.Host, b.Path)
		}
		out = append(out, plannedMount{Kind: mountBind, Path: rel, Host: b.Host})
	}
	// DNS: the host's resolv.conf as a file of the scaffold layer, over whatever the image
	// has (a file, a symlink into /run or to /proc/net/pnp as a prepared Pi OS image has,
	// or nothing). Not a bind mount: package scripts (resolvconf, systemd-resolved) replace
	// it, which a mount point refuses (EBUSY). Unless the command writes it, the layer
	// keeps the image's own.
	if c.ResolvConf != nil {
		ok, err := mountPoint(probe, scaffold, "etc/resolv.conf", pointShadowFile)
		if err != nil {
			return nil, err
		}
		if ok {
			if err := os.WriteFile(filepath.Join(scaffold, "etc", "resolv.conf"), c.ResolvConf, 0o644); err != nil {
				return nil, fmt.Errorf("scaffold: %w", err)
			}
		}
	}
	return out, scaffoldTimes(probe, scaffold)
}

// scaffoldTimes gives every scaffold dir that copies an image dir that dir's times, after
// all entries are made in it (making one changes a dir's mtime).
func scaffoldTimes(probe, scaffold string) error {
	return filepath.WalkDir(scaffold, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() || p == scaffold {
			return err
		}
		rel, _ := filepath.Rel(scaffold, p)
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(probe, rel), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return nil
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
	})
}

// pointKind says what mountPoint makes.
type pointKind int

const (
	pointDir        pointKind = iota // a dir to mount on: the image's, or a scaffold one
	pointShadowFile                  // a scaffold file over whatever the image has there
)

// mountPoint makes sure rel is there to mount on (pointDir): a real dir in the image, or
// one made in scaffold; or makes a scaffold file at rel (pointShadowFile). It returns false
// when the image has a non-dir on the way (a symlink: the image points it elsewhere, so it
// is left alone). A symlink on the way is never followed.
func mountPoint(probe, scaffold, rel string, kind pointKind) (bool, error) {
	parts := strings.Split(rel, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		last := i == len(parts)-1
		var st unix.Stat_t
		err := unix.Lstat(filepath.Join(probe, p), &st)
		switch {
		case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR && (!last || kind == pointDir):
			continue
		case err == nil && !(last && kind == pointShadowFile):
			return false, nil
		case err != nil && !errors.Is(err, unix.ENOENT):
			return false, fmt.Errorf("image /%s: %w", p, err)
		}
		// Missing (or shadowed) from here on: scaffold the existing parents, then the rest.
		for j := range i {
			q := strings.Join(parts[:j+1], "/")
			if err := scaffoldDir(filepath.Join(probe, q), filepath.Join(scaffold, q)); err != nil {
				return false, err
			}
		}
		for j := i; j < len(parts)-1; j++ {
			if err := os.Mkdir(filepath.Join(scaffold, strings.Join(parts[:j+1], "/")), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return false, fmt.Errorf("scaffold: %w", err)
			}
		}
		target := filepath.Join(scaffold, rel)
		if kind == pointDir {
			err = os.Mkdir(target, 0o755)
		} else {
			err = os.WriteFile(target, nil, 0o644)
		}
		if err != nil && !errors.Is(err, os.ErrExist) {
			return false, fmt.Errorf("scaffold: %w", err)
		}
		return true, nil
	}
	return true, nil
}

// scaffoldDir makes dst as a copy of the image's dir src (owner, mode, xattrs, times),
// once.
func scaffoldDir(src, dst string) error {
	if _, err := os.Lstat(dst); err == nil {
		return nil
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return fmt.Errorf("scaffold: %w", err)
	}
	return copyAttrs(src, dst)
}

// copyAttrs gives dir dst the owner, mode, xattrs and times of dir src. Times last:
// they are what a later copy-up takes.
func copyAttrs(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if err := unix.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("%s: %w", dst, err)
	}
	if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
		return fmt.Errorf("%s: %w", dst, err)
	}
	names, err := listXattrs(src)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	for _, n := range names {
		if strings.HasPrefix(n, "trusted.overlay.") {
			continue
		}
		v, err := getXattr(src, n)
		if err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		if err := unix.Lsetxattr(dst, n, v, 0); err != nil {
			return fmt.Errorf("%s: xattr %s: %w", dst, n, err)
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("%s: %w", dst, err)
	}
	return nil
}

func listXattrs(p string) ([]string, error) {
	n, err := unix.Llistxattr(p, nil)
	if err != nil || n == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, err
	}
	buf := make([]byte, n)
	n, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			names = append(names, s)
		}
	}
	return names, nil
}

func getXattr(p, name string) ([]byte, error) {
	n, err := unix.Lgetxattr(p, name, nil)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	n, err = unix.Lgetxattr(p, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// mount puts m on root.
func (m plannedMount) mount(root string) error {
	target := filepath.Join(root, m.Path)
	var err error
	const noSuidDevExec = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	switch m.Kind {
	case mountProc:
		err = unix.Mount("proc", target, "proc", noSuidDevExec, "")
	case mountSys:
		err = unix.Mount("sysfs", target, "sysfs", noSuidDevExec|unix.MS_RDONLY, "")
	case mountTmpfs:
		err = unix.Mount("tmpfs", target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("mode=%o", m.Mode))
	case mountDev:
		err = mountDevDir(target, m.Host)
	case mountBind:
		// Read-only takes a second call: the kernel ignores MS_RDONLY on a new bind.
		err = unix.Mount(m.Host, target, "", unix.MS_BIND|unix.MS_REC, "")
		if err == nil {
			err = unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "")
		}
	}
	if err != nil {
		return fmt.Errorf("mount /%s: %w", m.Path, err)
	}
	return nil
}

// mountDevDir makes a minimal /dev on a tmpfs: the character devices programs open by
// name, a private devpts (apt runs dpkg on a pty) or hostPTS bound, /dev/shm and the usual
// links. The host's disks stay out of reach.
func mountDevDir(dev, hostPTS string) error {
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID, "mode=755,size=1m"); err != nil {
		return err
	}
	nodes := []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}}
	for _, n := range nodes {
		if err := unix.Mknod(filepath.Join(dev, n.name), unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("mknod %s: %w", n.name, err)
		}
	}
	links := [][2]string{{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"},
		{"/proc/self/fd/2", "stderr"}}
	if hostPTS == "" {
		links = append(links, [2]string{"pts/ptmx", "ptmx"})
	} else if err := unix.Mknod(filepath.Join(dev, "ptmx"), unix.S_IFCHR|0o666, int(unix.Mkdev(5, 2))); err != nil {
		// The host's devpts has its ptmx at mode 000; /dev/ptmx (5:2) opens its instance.
		return fmt.Errorf("mknod ptmx: %w", err)
	}
	for _, l := range links {
		if err := os.Symlink(l[0], filepath.Join(dev, l[1])); err != nil {
			return err
		}
	}
	for _, d := range []string{"pts", "shm"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return err
		}
	}
	if hostPTS != "" {
		if err := unix.Mount(hostPTS, filepath.Join(dev, "pts"), "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", hostPTS, err)
		}
	} else if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"); err != nil {
		return fmt.Errorf("devpts: %w", err)
	}
	return unix.Mount("tmpfs", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777")
}
