package server

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// listenPortmap opens the portmapper's TCP listener with the same listen as the other
// services, and its UDP socket on the very address and port the listener got.
func listenPortmap(addr netip.Addr, port int) (net.Listener, net.PacketConn, error) {
	l, err := listen(addr, port, "portmap")
	if err == nil {
		var u net.PacketConn
		if u, err = net.ListenPacket("udp", l.Addr().String()); err == nil {
			return l, u, nil
		}
		l.Close()
		err = bindHint(fmt.Errorf("portmap: %w", err), port)
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		err = fmt.Errorf("%w\n  the portmapper's port is usually held by the system's rpcbind, which pifleet replaces for its boards: `systemctl disable --now rpcbind.socket rpcbind` (or set server.ports.portmap: 0, which initramfs-tools boards cannot boot with)", err)
	}
	return nil, nil, err
}

// tcpPort is the port a listener is bound to.
func tcpPort(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }
