// Package shell runs a command in an image's merged root on the server: the kernel's
// overlayfs over the image's layers with a fresh upper, /proc, /dev, /sys, /run and /tmp set
// up, chroot, and arm64 binaries through qemu-user binfmt; Clean turns the upper into a layer.
//
// Everything runs in a helper process (this binary re-executed, see IsHelper and Main) in
// its own mount, PID, UTS and IPC namespaces: the mounts never reach the host's mount table,
// and when the command ends, or pifleet dies (the helper has a parent-death signal), the
// kernel kills what it left running and drops every mount with the namespace.
package shell

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Bind makes a host directory visible, read-only, inside the root while the command runs
// (e.g. the .deb files to install). Nothing of it lands in the upper.
type Bind struct {
	Host string // absolute path on the host
	Path string // absolute path inside the root; created in a scratch layer if missing
}

// Options says what to run over which layers.
type Options struct {
	// Lowers are the image's layer dirs, topmost first (images.Store.Layers).
	Lowers []string
	// Upper and Work are empty dirs on one file system (the upper becomes the new layer);
	// Scratch is an empty dir for the helper's mount points. All three are normally inside
	// one images.Store.TempDir, so a killed run leaves nothing the store does not sweep.
	Upper, Work, Scratch string
	// Command is what runs, looked up in the root's PATH; empty: a login shell, /bin/bash
	// if the root has it, else /bin/sh.
	Command []string
	// Env is added to the command's environment (KEY=VALUE), which otherwise holds only
	// PATH, HOME, and TERM when the caller's environment has it.
	Env []string
	// Binds are host dirs mounted read-only inside the root.
	Binds []Bind
	// Interactive puts the command in the terminal's foreground (Stdin must be the
	// terminal), so Ctrl-C reaches the shell, not pifleet; /dev/pts is then the host's, so
	// that the terminal is found by its name (tty, ttyname) inside the root.
	Interactive bool
	// Stdin, Stdout and Stderr are the command's; nil means /dev/null.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// BinfmtDir is where binfmt_misc is read; empty means DefaultBinfmtDir. Tests point it
	// at a dir of their own to see the error a host without qemu-user gets.
	BinfmtDir string
}

// ExitError is a command that ran and exited non-zero (or 128+N when signal N killed it).
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("command exited with status %d", e.Code) }

// helperName is argv[0] of the helper process; IsHelper recognises it.
const helperName = "pifleet-image-shell"

// helperSetupFailed is the helper's exit status when it failed before the command ran;
// the reason comes over the report pipe.
const helperSetupFailed = 125

// config is what the parent sends the helper (as JSON over fd 3).
type config struct {
	Lowers               []string
	Upper, Work, Scratch string
	Command, Env         []string
	Binds                []Bind
	BinfmtDir            string
	ResolvConf           []byte // the host's /etc/resolv.conf, for DNS inside the root
	HostPTS              bool   // /dev/pts is the host's, so the terminal has its name inside
}

// Run runs the command in the merged root and returns when it has ended and every mount is
// gone. A command that exits non-zero returns *ExitError; a failure to set the root up
// returns the reason. Cancelling ctx kills the command and everything it started.
func Run(ctx context.Context, o Options) error {
	if len(o.Lowers) == 0 {
		return errors.New("image shell: no layers")
	}
	for _, d := range []string{o.Upper, o.Work, o.Scratch} {
		if d == "" || !strings.HasPrefix(d, "/") {
			return fmt.Errorf("image shell: upper, work and scratch must be absolute paths, got %q", d)
		}
	}
	for _, b := range o.Binds {
		if !strings.HasPrefix(b.Host, "/") || !strings.HasPrefix(b.Path, "/") || strings.Contains(b.Path, "/../") || strings.HasSuffix(b.Path, "/..") {
			return fmt.Errorf("image shell: bind %s:%s: both paths must be absolute", b.Host, b.Path)
		}
	}
	if o.BinfmtDir == "" {
		o.BinfmtDir = DefaultBinfmtDir
	}
	c := config{Lowers: o.Lowers, Upper: o.Upper, Work: o.Work, Scratch: o.Scratch,
		Command: o.Command, Env: commandEnv(o.Env), Binds: o.Binds, BinfmtDir: o.BinfmtDir, HostPTS: o.Interactive}
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil && len(b) < 1<<16 {
		c.ResolvConf = b
	}
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("image shell: %w", err)
	}
	defer cfgR.Close()
	repR, repW, err := os.Pipe()
	if err != nil {
		cfgW.Close()
		return fmt.Errorf("image shell: %w", err)
	}
	defer repR.Close()

	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{helperName}
	cmd.Env = []string{}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.Stdin, o.Stdout, o.Stderr
	cmd.ExtraFiles = []*os.File{cfgR, repW}
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	var tty *os.File
	if o.Interactive {
		f, ok := o.Stdin.(*os.File)
		if !ok {
			return errors.New("image shell: interactive needs a terminal on stdin")
		}
		tty = f
		cmd.SysProcAttr.Foreground = true
		cmd.SysProcAttr.Ctty = int(f.Fd())
	}
	// Pdeathsig fires when the thread that started the helper ends, not the process:
	// keep this goroutine on its thread until the helper is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		cfgW.Close()
		repW.Close()
		return fmt.Errorf("image shell: start helper: %w", err)
	}
	repW.Close()
	if tty != nil {
		defer reclaimTerminal(tty)
	}
	enc := json.NewEncoder(cfgW)
	encErr := enc.Encode(c)
	cfgW.Close()
	report := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(repR, 1<<16))
		report <- b
	}()
	waitErr := cmd.Wait()
	if encErr != nil {
		return fmt.Errorf("image shell: send config to helper: %w", encErr)
	}
	var rep []byte
	select {
	case rep = <-report:
	case <-time.After(5 * time.Second):
	}
	if ctx.Err() != nil {
		return fmt.Errorf("image shell: %w", ctx.Err())
	}
	if len(rep) > 0 {
		return fmt.Errorf("image shell: %s", bytes.TrimSpace(rep))
	}
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return &ExitError{Code: code}
	}
	if waitErr != nil {
		return fmt.Errorf("image shell: %w", waitErr)
	}
	return nil
}

// reclaimTerminal makes pifleet's process group the terminal's foreground again after an
// interactive command had it; a background group that does this gets SIGTTOU, hence the
// ignore around it.
func reclaimTerminal(tty *os.File) {
	signal.Ignore(syscall.SIGTTOU)
	defer signal.Reset(syscall.SIGTTOU)
	_ = unix.IoctlSetPointerInt(int(tty.Fd()), unix.TIOCSPGRP, unix.Getpgrp())
}

// defaultPath is Debian's root PATH.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// commandEnv is the command's environment: a clean root one plus what the caller adds (a
// later KEY wins), never the server's environment.
func commandEnv(extra []string) []string {
	env := []string{"PATH=" + defaultPath, "HOME=/root", "USER=root", "LOGNAME=root"}
	if t := os.Getenv("TERM"); t != "" {
		env = append(env, "TERM="+t)
	}
	env = append(env, extra...)
	seen := map[string]int{}
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := seen[k]; ok {
			out[i] = kv
			continue
		}
		seen[k] = len(out)
		out = append(out, kv)
	}
	return out
}
