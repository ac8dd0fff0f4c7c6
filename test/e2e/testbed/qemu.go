package testbed

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// UBootQEMUArm64 is Debian u-boot-qemu's firmware for qemu-system-aarch64 -M virt.
const UBootQEMUArm64 = "/usr/lib/u-boot/qemu_arm64/u-boot.bin"

// Board is one running QEMU guest with its serial console.
type Board struct {
	// Name is used for the log file and in messages.
	Name string
	// Console is the guest's first serial port.
	Console *Console
	// LogPath is the console log file.
	LogPath string
	// Started is when QEMU started: time zero of the board's boot.
	Started time.Time
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	// closeOnce: Kill runs from cleanups and from tests.
	closeOnce sync.Once
}

// BoardConfig says how to start a board.
type BoardConfig struct {
	// Name of the board, for logs.
	Name string
	// Tap is the tap device (in net) the board's NIC uses; empty for no network.
	Tap string
	// MAC of the board's NIC.
	MAC string
	// Machine args: everything but the network, console and firmware-independent flags,
	// e.g. VirtArgs(...) or RaspiArgs(...).
	Machine []string
	// NIC is the QEMU -device for the network (it must name netdev=net0); VirtNIC by default.
	NIC string
	// LogDir keeps the console log (<LogDir>/<Name>.log, appended across reboots).
	LogDir string
}

// VirtNIC is the virtio NIC for -M virt. disable-legacy=on because Debian's U-Boot reads
// the MAC of a legacy virtio-pci device wrongly (52:52:52:52:52:52); romfile= because no
// iPXE ROM is wanted.
func VirtNIC(mac string) string {
	return "virtio-net-pci,disable-legacy=on,netdev=net0,romfile=,mac=" + mac
}

// UBootVirt is the machine for a -M virt board that network-boots through U-Boot.
func UBootVirt() []string {
	return []string{"-M", "virt", "-cpu", "cortex-a72", "-smp", "1", "-m", "1024", "-bios", UBootQEMUArm64}
}

// StartBoard starts QEMU inside net. The caller must Kill it (t.Cleanup(b.Kill)) on the
// test that owns the board, which may outlive the subtest that started it.
func StartBoard(net *Net, cfg BoardConfig) (*Board, error) {
	args := append([]string{}, cfg.Machine...)
	// -nodefaults + -serial stdio: the guest console is the process's stdin/stdout, with no
	// monitor muxed in (so no escape character can reach QEMU by accident).
	args = append(args, "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio")
	if cfg.Tap != "" {
		nic := cfg.NIC
		if nic == "" {
			nic = VirtNIC(cfg.MAC)
		}
		args = append(args, "-netdev", "tap,id=net0,ifname="+cfg.Tap+",script=no,downscript=no", "-device", nic)
	}
	cmd := net.Command(context.Background(), "qemu-system-aarch64", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	b := &Board{Name: cfg.Name, LogPath: filepath.Join(cfg.LogDir, cfg.Name+".log"), cmd: cmd, done: make(chan struct{})}
	if b.Console, err = NewConsole(stdout, stdin, b.LogPath); err != nil {
		return nil, err
	}
	fmt.Fprintf(b.Console.log, "\n==== %s: qemu-system-aarch64 %q\n", time.Now().UTC().Format(time.RFC3339), args)
	b.Started = time.Now()
	if err := cmd.Start(); err != nil {
		b.Console.Close()
		return nil, fmt.Errorf("start QEMU for %s: %w", cfg.Name, err)
	}
	go func() {
		b.waitErr = cmd.Wait()
		close(b.done)
	}()
	return b, nil
}

// MustStartBoard is StartBoard for a test: it fails t on error and kills the board when t
// ends.
func MustStartBoard(t testing.TB, net *Net, cfg BoardConfig) *Board {
	t.Helper()
	b, err := StartBoard(net, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Kill)
	return b
}

// Kill stops QEMU at once (the guest gets no shutdown) and waits for it. Calling it
// again is harmless.
func (b *Board) Kill() {
	select {
	case <-b.done:
	default:
		b.cmd.Process.Kill()
		<-b.done
	}
	b.closeOnce.Do(func() { b.Console.Close() })
}

// Wait waits up to timeout for QEMU to exit by itself (a guest poweroff with -no-reboot).
func (b *Board) Wait(timeout time.Duration) error {
	select {
	case <-b.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("board %s: QEMU still running after %v", b.Name, timeout)
	}
}
