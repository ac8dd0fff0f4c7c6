package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pifleet/pifleet/test/netns"
)

// TestServeBindsBootAddress: in a namespace where the server has two addresses, NFS, the portmapper,
// MOUNT, TFTP and HTTP answer on the boot address (server.address) and HTTP also on
// loopback, while nothing answers on the other address (a management NIC, say).
func TestServeBindsBootAddress(t *testing.T) {
	if cfg := os.Getenv("PIFLEET_SERVE_CHILD"); cfg != "" {
		serveChild(cfg) // runs pifleet serve inside the namespace; exits
	}
	needRoot(t)
	p := netns.NewPair(t, "pfbind", netip.MustParsePrefix("10.77.0.1/24"))
	netns.Run(t, "ip", "-n", p.Server, "addr", "add", "10.77.1.1/24", "dev", p.ServerIf)
	netns.Run(t, "ip", "-n", p.Client, "addr", "add", "10.77.0.2/24", "dev", p.ClientIf)
	netns.Run(t, "ip", "-n", p.Client, "addr", "add", "10.77.1.2/24", "dev", p.ClientIf)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "fleet.yaml")
	y := fmt.Sprintf(`server:
  interface: %s
  address: 10.77.0.1/24
  state: %s
  dhcp: {mode: off}
images:
  img: {path: %s}
boards:
  - {name: alpha, mac: '02:00:00:00:00:01', serial: '000abc00', ip: 10.77.0.2, image: img}
`, p.ServerIf, filepath.Join(dir, "state"), testImage(t))
	must(t, os.WriteFile(cfgPath, []byte(y), 0o644))

	logs := &netns.LogBuffer{}
	cmd := exec.Command("ip", "netns", "exec", p.Server, os.Args[0], "-test.run=^TestServeBindsBootAddress$")
	cmd.Env = append(os.Environ(), "PIFLEET_SERVE_CHILD="+cfgPath)
	cmd.Stdout, cmd.Stderr = logs, logs
	must(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	for i := 0; !strings.Contains(logs.String(), "pifleet serving"); i++ {
		select {
		case err := <-exited:
			t.Fatalf("pifleet serve exited: %v\n%s", err, logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if i > 300 {
			t.Fatalf("pifleet serve did not start\n%s", logs.String())
		}
	}

	ports := DefaultPorts()
	tcp := map[string]int{"nfs": ports.NFS, "mount": ports.Mount, "http": ports.HTTP, "portmap": ports.Portmap}
	err := netns.Do(p.Client, func() error {
		var errs []error
		for what, port := range tcp {
			if err := dialTCP("10.77.0.1", port); err != nil {
				errs = append(errs, fmt.Errorf("%s on the boot address: %w", what, err))
			}
			if err := dialTCP("10.77.1.1", port); !errors.Is(err, syscall.ECONNREFUSED) {
				errs = append(errs, fmt.Errorf("%s on the other address: %v, want connection refused", what, err))
			}
		}
		if err := tftpAnswers("10.77.0.1", ports.TFTP); err != nil {
			errs = append(errs, fmt.Errorf("tftp on the boot address: %w", err))
		}
		if err := tftpRefused("10.77.1.1", ports.TFTP); err != nil {
			errs = append(errs, fmt.Errorf("tftp on the other address: %w", err))
		}
		return errors.Join(errs...)
	})
	if err != nil {
		t.Errorf("%v\n%s", err, logs.String())
	}
	err = netns.Do(p.Server, func() error { return dialTCP("127.0.0.1", ports.HTTP) })
	if err != nil {
		t.Errorf("http on the server's loopback: %v", err)
	}
}

// serveChild runs pifleet serve on cfgPath until SIGTERM and exits the process.
func serveChild(cfgPath string) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err := Run(ctx, Options{ConfigPath: cfgPath, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func dialTCP(host string, port int) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(host, fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// rrq is a TFTP read request for a file no board has.
var rrq = append(append([]byte{0, 1}, "no-such-file\x00"...), "octet\x00"...)

// tftpAnswers sends an RRQ and waits (bounded) for any TFTP packet back: the server
// answers from a fresh port, so the socket is not connected.
func tftpAnswers(host string, port int) error {
	c, err := net.ListenPacket("udp4", ":0")
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.WriteTo(rrq, &net.UDPAddr{IP: net.ParseIP(host), Port: port}); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1500)
	n, _, err := c.ReadFrom(buf)
	if err != nil {
		return err
	}
	if n < 4 || buf[0] != 0 || (buf[1] != 3 && buf[1] != 5) {
		return fmt.Errorf("not a TFTP DATA or ERROR: % x", buf[:n])
	}
	return nil
}

// tftpRefused sends an RRQ on a connected socket: if nothing listens on host:port the
// kernel answers with ICMP port unreachable, which the next read reports as
// ECONNREFUSED. (A server on every address would answer from another port instead.)
func tftpRefused(host string, port int) error {
	c, err := net.Dial("udp4", net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(rrq); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1500))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("read: %v, want connection refused (ICMP port unreachable)", err)
	}
	return nil
}
