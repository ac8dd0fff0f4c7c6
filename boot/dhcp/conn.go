package dhcp

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// rcvBuf is the socket receive buffer: about 8,000 DHCP packets.
const rcvBuf = 4 << 20

// listen opens the server socket: 0.0.0.0:port, because a socket bound to one address
// never receives the broadcast DISCOVERs of clients that have none; SO_BINDTODEVICE
// when an interface is given, so we answer only that LAN and our broadcasts leave
// through it; SO_BROADCAST to send to 255.255.255.255; SO_REUSEADDR so a restart does
// not wait for the old socket.
func listen(iface string, port int) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr != nil {
				serr = fmt.Errorf("SO_BROADCAST: %w", serr)
				return
			}
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
				serr = fmt.Errorf("SO_REUSEADDR: %w", serr)
				return
			}
			// A burst of boards powering on (or a load test) must wait in the kernel,
			// not be dropped, while workers wait for lease fsyncs. SO_RCVBUFFORCE
			// passes rmem_max as root; otherwise the capped SO_RCVBUF still helps.
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
			}
			if iface != "" {
				if serr = unix.BindToDevice(int(fd), iface); serr != nil {
					serr = fmt.Errorf("bind to interface %s (SO_BINDTODEVICE): %w", iface, serr)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := lc.ListenPacket(context.Background(), "udp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return nil, fmt.Errorf("listen on port %d: %w", port, err)
	}
	return c, nil
}
