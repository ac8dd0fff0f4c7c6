package server

import (
	"fmt"
	"net"
)

// listenPortmap opens the portmapper's TCP listener with the same listen as the other
// services, and its UDP socket on the very address and port the listener got.
func listenPortmap(port int) (net.Listener, net.PacketConn, error) {
	l, err := listen("tcp", port, "portmap")
	if err != nil {
		return nil, nil, err
	}
	u, err := net.ListenPacket("udp", l.Addr().String())
	if err != nil {
		l.Close()
		return nil, nil, bindHint(fmt.Errorf("portmap: %w", err), port)
	}
	return l, u, nil
}

// tcpPort is the port a listener is bound to.
func tcpPort(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }
