package shell

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// IsHelper reports whether this process is the helper Run starts; a program using this
// package calls Main first thing in main when it is: if shell.IsHelper() { os.Exit(shell.Main()) }.
func IsHelper() bool { return len(os.Args) > 0 && os.Args[0] == helperName }

// Main is the helper: pid 1 of fresh mount and PID namespaces. It mounts the root, runs the
// command chrooted and returns its exit status (128+N for signal N); when it returns, the
// kernel kills whatever the command left running and unmounts everything.
func Main() int {
	unix.CloseOnExec(3)
	unix.CloseOnExec(4)
	cfgFile, report := os.NewFile(3, "config"), os.NewFile(4, "report")
	var c config
	if err := json.NewDecoder(io.LimitReader(cfgFile, 1<<20)).Decode(&c); err != nil {
		fmt.Fprintf(report, "helper: read config: %v", err)
		return helperSetupFailed
	}
	cmd, err := c.setup()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		fmt.Fprint(report, err.Error())
		return helperSetupFailed
	}
	report.Close()
	// The terminal's SIGINT/SIGQUIT reach the command directly (same process group); pid 1
	// only has to outlive it. Handled (not ignored) so that the command gets the default
	// dispositions back at exec.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGQUIT, unix.SIGTSTP, unix.SIGTERM, unix.SIGHUP)
	go func() {
		for s := range sigs {
			if s == unix.SIGTERM || s == unix.SIGHUP {
				_ = cmd.Process.Signal(s)
			}
		}
	}()
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if err != nil {
		return helperSetupFailed
	}
	return 0
}

// setup mounts the root, chroots the helper into it and returns the command, ready to start.
func (c *config) setup() (*exec.Cmd, error) {
	// Nothing mounted here may propagate back to the host's mount table.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("make mounts private: %w", err)
	}
	unix.Umask(0)
	probe, scaffold, root := filepath.Join(c.Scratch, "probe"), filepath.Join(c.Scratch, "scaffold"), filepath.Join(c.Scratch, "root")
	for _, d := range []string{probe, scaffold, root} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, fmt.Errorf("scratch: %w", err)
		}
	}
	// The image's own merged tree, read-only, to see which mount points it has.
	if len(c.Lowers) == 1 {
		if err := unix.Mount(c.Lowers[0], probe, "", unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return nil, fmt.Errorf("bind %s: %w", c.Lowers[0], err)
		}
	} else if err := mountOverlay(probe, c.Lowers, "", "", true); err != nil {
		return nil, err
	}
	mounts, err := c.planMounts(probe, scaffold)
	if err == nil {
		// The merged root's own attributes are the upper's: give it the image's.
		err = copyAttrs(probe, c.Upper)
	}
	if uerr := unix.Unmount(probe, unix.MNT_DETACH); err == nil && uerr != nil {
		err = fmt.Errorf("unmount probe: %w", uerr)
	}
	if err != nil {
		return nil, err
	}
	if err := mountOverlay(root, append([]string{scaffold}, c.Lowers...), c.Upper, c.Work, false); err != nil {
		return nil, err
	}
	for _, m := range mounts {
		if err := m.mount(root); err != nil {
			return nil, err
		}
	}
	bf, err := readBinfmt(c.BinfmtDir)
	if err != nil {
		return nil, err
	}
	// The helper looks the command up inside the root, then steps back out: the command
	// alone is chrooted, so /proc/1/root (this helper's) is not its root and Debian's
	// maintainer scripts see a chroot (ischroot, systemd-detect-virt --chroot) and skip
	// what only a booted system does.
	host, err := os.Open("/")
	if err != nil {
		return nil, err
	}
	defer host.Close()
	if err := unix.Chroot(root); err != nil {
		return nil, fmt.Errorf("chroot %s: %w", root, err)
	}
	if err := os.Chdir("/"); err != nil {
		return nil, err
	}
	unix.Umask(0o022)
	args := c.Command
	if len(args) == 0 {
		args = []string{"/bin/sh", "-l"}
		if _, err := os.Stat("/bin/bash"); err == nil {
			args[0] = "/bin/bash"
		}
	}
	os.Setenv("PATH", defaultPath)
	for _, kv := range c.Env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			os.Setenv("PATH", p)
		}
	}
	path, err := exec.LookPath(args[0])
	if err != nil {
		return nil, fmt.Errorf("%s: not found in the image", args[0])
	}
	if err := checkExecutable(bf, path); err != nil {
		return nil, err
	}
	if err := unix.Fchdir(int(host.Fd())); err != nil {
		return nil, err
	}
	if err := unix.Chroot("."); err != nil {
		return nil, fmt.Errorf("leave the root: %w", err)
	}
	cmd := exec.Command(path, args[1:]...)
	cmd.Args[0] = args[0]
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	cmd.Env = c.Env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd, nil
}

// checkExecutable checks that the host can run path (and a script's interpreter).
func checkExecutable(bf *binfmt, path string) error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return err
	}
	uname := unix.ByteSliceToString(uts.Machine[:])
	for range 4 { // a script's interpreter may be a script, a few levels deep
		head, err := readHead(path)
		if err != nil {
			return err
		}
		if interp, ok := scriptInterpreter(head); ok {
			path = interp
			continue
		}
		return bf.checkRunnable(uname, path, head)
	}
	return nil
}

func readHead(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, 256)
	n, err := io.ReadFull(f, head)
	if err != nil && n == 0 && err != io.EOF {
		return nil, err
	}
	return head[:n], nil
}

// scriptInterpreter returns the interpreter a "#!" line names.
func scriptInterpreter(head []byte) (string, bool) {
	line, ok := bytes.CutPrefix(head, []byte("#!"))
	if !ok {
		return "", false
	}
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	f := strings.Fields(string(line))
	if len(f) == 0 {
		return "", false
	}
	return f[0], true
}

// overlayOptions keep the upper in the plain format a layer has: no redirects (a renamed
// lower dir is copied, as rename(2) returns EXDEV and tools copy), no metacopy (data always
// in the upper), no index or uuid records.
var overlayOptions = [][2]string{{"redirect_dir", "off"}, {"index", "off"}, {"metacopy", "off"}, {"uuid", "off"}, {"xino", "off"}}

// mountOverlay mounts the kernel's overlayfs; without upper it is a read-only view of the
// lowers. It hands the kernel one lower at a time (fsconfig "lowerdir+", Linux 6.8), so a
// deep stack is not bounded by the one page mount(2) takes for all options, and falls back
// to mount(2) on older kernels.
func mountOverlay(target string, lowers []string, upper, work string, readOnly bool) error {
	err := fsconfigOverlay(target, lowers, upper, work, readOnly)
	if !errors.Is(err, errNoFsconfig) {
		return err
	}
	esc := make([]string, len(lowers))
	for i, l := range lowers {
		esc[i] = overlayEscape(l)
	}
	opts := "lowerdir=" + strings.Join(esc, ":")
	if upper != "" {
		opts += ",upperdir=" + overlayEscape(upper) + ",workdir=" + overlayEscape(work)
	}
	for _, o := range overlayOptions {
		opts += "," + o[0] + "=" + o[1]
	}
	if len(opts) >= os.Getpagesize() {
		return fmt.Errorf("overlay of %d layers: %d bytes of mount options, more than this kernel takes (%d; Linux 6.8 takes any number)", len(lowers), len(opts), os.Getpagesize()-1)
	}
	var flags uintptr
	if readOnly {
		flags = unix.MS_RDONLY
	}
	if err := unix.Mount("overlay", target, "overlay", flags, opts); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("mount overlay: %w (modprobe overlay)", err)
		}
		return fmt.Errorf("mount overlay on %s (%s): %w", target, opts, err)
	}
	return nil
}

// errNoFsconfig: the kernel lacks the new mount API or overlayfs's "lowerdir+".
var errNoFsconfig = errors.New("no fsconfig lowerdir+")

func fsconfigOverlay(target string, lowers []string, upper, work string, readOnly bool) (err error) {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) {
		return errNoFsconfig
	}
	if errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("mount overlay: %w (modprobe overlay)", err)
	}
	if err != nil {
		return fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fd)
	defer func() {
		if err != nil && !errors.Is(err, errNoFsconfig) {
			err = fmt.Errorf("mount overlay on %s: %w%s", target, err, fsconfigLog(fd))
		}
	}()
	for i, l := range lowers {
		if err := unix.FsconfigSetString(fd, "lowerdir+", l); err != nil {
			if i == 0 && errors.Is(err, unix.EINVAL) {
				fsconfigLog(fd)
				return errNoFsconfig
			}
			return fmt.Errorf("lower %s: %w", l, err)
		}
	}
	if upper != "" {
		if err := unix.FsconfigSetString(fd, "upperdir", upper); err != nil {
			return fmt.Errorf("upper %s: %w", upper, err)
		}
		if err := unix.FsconfigSetString(fd, "workdir", work); err != nil {
			return fmt.Errorf("work %s: %w", work, err)
		}
	}
	for _, o := range overlayOptions {
		if err := unix.FsconfigSetString(fd, o[0], o[1]); err != nil {
			return fmt.Errorf("%s=%s: %w", o[0], o[1], err)
		}
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return err
	}
	var attr int
	if readOnly {
		attr = unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, attr)
	if err != nil {
		return err
	}
	defer unix.Close(mfd)
	return unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH)
}

// fsconfigLog reads the messages the kernel left on an fs context (why a mount failed).
func fsconfigLog(fd int) string {
	var msgs []string
	buf := make([]byte, 1024)
	for range 16 {
		n, err := unix.Read(fd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	if len(msgs) == 0 {
		return ""
	}
	return " (kernel: " + strings.Join(msgs, "; ") + ")"
}

// overlayEscape escapes the characters overlayfs's option parser splits on.
func overlayEscape(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `:`, `\:`, `,`, `\,`)
	return r.Replace(p)
}
