package dhcp

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
	"github.com/pifleet/pifleet/boot/boottest"
	"github.com/pifleet/pifleet/test/netns"
	"github.com/pifleet/pifleet/test/require"
)

// Real DHCP clients against the server, each in the client namespace.

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		require.Missing(t, fmt.Sprintf("needs %s (Debian: busybox / isc-dhcp-client)", name))
	}
	return p
}

// TestUdhcpcPiStyle: busybox udhcpc dressed as a Pi (vendor class, option 93 and a
// Pi 4 option 97, asking for 43) gets the board's fixed address, the TFTP server and
// option 43 through a full exchange.
func TestUdhcpcPiStyle(t *testing.T) {
	busybox := needTool(t, "busybox")
	n := newNetns(t)
	mac := mustMAC("dc:a6:32:aa:bb:cc")
	n.SetClientMAC(t, mac.String())
	fixed := netip.MustParseAddr("198.18.0.30")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "pi-udhcpc", Serial: "c0ffee01", IP: fixed}}}
	srv := startServer(t, n, fullConfig(t, fleet, false))

	dir := t.TempDir()
	envFile := filepath.Join(dir, "env")
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && env > "+envFile+"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opt97 := hex.EncodeToString(pi4Option97(0xc0ffee01, 0xc03111, mac))
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.Client, busybox, "udhcpc",
		"-i", n.ClientIf, "-f", "-q", "-n", "-t", "4", "-T", "1", "-s", script,
		"-V", piVendorClass, "-x", "0x5d:0000", "-x", "0x61:"+opt97, "-O", "43", "-O", "66").CombinedOutput()
	if err != nil {
		t.Fatalf("udhcpc: %v\n%s\nserver log:\n%s", err, out, srv.logs)
	}
	env, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatalf("udhcpc did not bind: %v\n%s", err, out)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(string(env), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vars[k] = v
		}
	}
	if vars["ip"] != fixed.String() || vars["siaddr"] != serverIP.String() || vars["serverid"] != serverIP.String() {
		t.Errorf("udhcpc got ip=%s siaddr=%s serverid=%s, want %v/%v", vars["ip"], vars["siaddr"], vars["serverid"], fixed, serverIP)
	}
	if vars["tftp"] != serverIP.String() {
		t.Errorf("udhcpc tftp (option 66) = %q", vars["tftp"])
	}
	menuHex := hex.EncodeToString(dnsmasqOption43("Raspberry Pi Boot"))
	if !strings.Contains(strings.ToLower(string(env)), menuHex) {
		t.Errorf("option 43 with %q not seen by udhcpc:\n%s", piMenu, env)
	}
}

// TestDhclientBoard: ISC dhclient (never touching the host: script /bin/true, lease
// and pid files in a temp dir) on a board's MAC gets the board's fixed address.
func TestDhclientBoard(t *testing.T) {
	dhclient := needTool(t, "dhclient")
	n := newNetns(t)
	mac := mustMAC("02:42:00:00:00:31")
	n.SetClientMAC(t, mac.String())
	fixed := netip.MustParseAddr("198.18.0.31")
	fleet := &boottest.Fleet{Boards: []*boot.Board{{Name: "board-31", MAC: mac, IP: fixed}}}
	cfg := fullConfig(t, fleet, false)
	srv := startServer(t, n, cfg)

	dir := t.TempDir()
	lf, pf := filepath.Join(dir, "dhclient.leases"), filepath.Join(dir, "dhclient.pid")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.Client, dhclient, "-4", "-d", "-1",
		"-sf", "/bin/true", "-lf", lf, "-pf", pf, "-cf", "/dev/null", n.ClientIf)
	var out netns.LogBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill() // our own child, by its pid
		cmd.Wait()
	}()
	var leases string
	for range 200 {
		b, _ := os.ReadFile(lf)
		if leases = string(b); strings.Contains(leases, "fixed-address") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(leases, "fixed-address "+fixed.String()+";") {
		t.Fatalf("dhclient lease file:\n%s\ndhclient:\n%s\nserver log:\n%s", leases, out.String(), srv.logs)
	}
	if !strings.Contains(leases, "option dhcp-server-identifier "+serverIP.String()) {
		t.Errorf("dhclient lease lacks our server identifier:\n%s", leases)
	}
	if !leaseFileHas(t, cfg.LeaseFile, mac, fixed) {
		t.Errorf("server did not persist the lease it ACKed")
	}
}
