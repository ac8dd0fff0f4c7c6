package demo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/e2e/testbed"
)

// TestInitramfsBootsToNFSMount boots the built kernel8.img + initramfs8 directly (no
// firmware) on QEMU -M virt, with a throwaway busybox udhcpd in the test's namespace and no
// NFS server: the initramfs must load its modules, get the lease, try the mount it was told
// to and fail into its rescue shell. The full NFS boot is test/e2e's job.
func TestInitramfsBootsToNFSMount(t *testing.T) {
	tr := builtTree(t)
	testbed.RequireTools(t, map[string]string{"qemu-system-aarch64": "qemu-system-arm", "busybox": "busybox"})
	dir := t.TempDir()
	net := testbed.NewNet(t, "pfbr0", "10.78.0.1/24")
	net.AddTap("tap0")

	conf := filepath.Join(dir, "udhcpd.conf")
	leases := filepath.Join(dir, "leases")
	if err := os.WriteFile(leases, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`start 10.78.0.50
end 10.78.0.60
interface pfbr0
lease_file %s
option subnet 255.255.255.0
option router 10.78.0.1
option lease 3600
`, leases)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	dhcpd := net.Command(context.Background(), "busybox", "udhcpd", "-f", "-a", "100", conf)
	dhcpd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	dhcpdLog, _ := os.Create(filepath.Join(dir, "udhcpd.log"))
	dhcpd.Stdout, dhcpd.Stderr = dhcpdLog, dhcpdLog
	if err := dhcpd.Start(); err != nil {
		t.Fatalf("udhcpd: %v", err)
	}
	t.Cleanup(func() { dhcpd.Process.Kill(); dhcpd.Wait() })

	fw := filepath.Join(tr.Root, "boot/firmware")
	board := testbed.MustStartBoard(t, net, testbed.BoardConfig{
		Name: "smoke", Tap: "tap0", MAC: "52:54:00:12:34:99", LogDir: dir,
		Machine: []string{"-M", "virt", "-cpu", "cortex-a72", "-smp", "1", "-m", "512",
			"-kernel", filepath.Join(fw, "kernel8.img"), "-initrd", filepath.Join(fw, "initramfs8"),
			"-append", "console=ttyAMA0,115200 nfsroot=10.78.0.1:/boards/smoke,vers=3,tcp,port=2049,mountport=20048,nolock rw ip=dhcp"},
	})
	fail := regexp.MustCompile(`Kernel panic|pifleet-initramfs: FAILED: (no network|no DHCP|no nfsroot)`)
	for _, step := range []struct {
		re      string
		timeout time.Duration
	}{
		{`pifleet-initramfs: loading modules`, 3 * time.Minute},
		{`pifleet-initramfs: DHCP on eth0`, time.Minute},
		{`pifleet-initramfs: lease 10\.78\.0\.(5[0-9]|60)/255\.255\.255\.0 on eth0 from 10\.78\.0\.1`, time.Minute},
		{`pifleet-initramfs: mounting 10\.78\.0\.1:/boards/smoke on /newroot \(rw,nolock,vers=3,proto=tcp,mountproto=tcp,vers=3,tcp,port=2049,mountport=20048,nolock,addr=10\.78\.0\.1\)`, time.Minute},
		{`pifleet-initramfs: FAILED: cannot mount 10\.78\.0\.1:/boards/smoke`, 2 * time.Minute},
		{`pifleet-initramfs: rescue shell`, time.Minute},
	} {
		if _, err := board.Console.Expect(regexp.MustCompile(step.re), fail, step.timeout); err != nil {
			t.Fatalf("%v\nconsole log %s, last output:\n%s", err, board.LogPath, board.Console.Tail(3000))
		}
	}
	// The rescue shell takes commands: the modules really are loaded.
	if err := board.Console.Send("grep -c -E '^(nfsv3|virtio_net) ' /proc/modules; echo modules-listed"); err != nil {
		t.Fatal(err)
	}
	if _, err := board.Console.Expect(regexp.MustCompile(`\n2\r?\nmodules-listed`), nil, time.Minute); err != nil {
		t.Fatalf("nfsv3 and virtio_net not both in /proc/modules: %v\n%s", err, board.Console.Tail(2000))
	}
}
