package server

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// serverAddress works out the address boards reach the server at, and its interface,
// filling in what fleet.yaml leaves out: the interface carrying server.address, or the
// first IPv4 address of server.interface, or of the default route's interface.
func serverAddress(sc ServerConfig) (netip.Prefix, string, error) {
	if sc.Address.IsValid() {
		if sc.Interface != "" {
			return sc.Address, sc.Interface, nil
		}
		ifaces, err := net.Interfaces()
		if err != nil {
			return sc.Address, "", nil
		}
		for _, ifc := range ifaces {
			for _, p := range ifacePrefixes(ifc) {
				if p.Addr() == sc.Address.Addr() {
					return sc.Address, ifc.Name, nil
				}
			}
		}
		// Not configured here (yet): bind to all interfaces and say so.
		return sc.Address, "", nil
	}
	name := sc.Interface
	if name == "" {
		name = defaultRouteInterface()
	}
	if name == "" {
		return netip.Prefix{}, "", errors.New("cannot tell this server's address: no default route; set server.address (like 192.168.1.10/24) and server.interface in fleet.yaml")
	}
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Prefix{}, "", fmt.Errorf("server.interface %s: %w", name, err)
	}
	for _, p := range ifacePrefixes(*ifc) {
		return p, name, nil
	}
	return netip.Prefix{}, "", fmt.Errorf("interface %s has no IPv4 address; set server.address in fleet.yaml", name)
}

func ifacePrefixes(ifc net.Interface) []netip.Prefix {
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok || !ip.Unmap().Is4() {
			continue
		}
		ones, _ := ipn.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out
}

// defaultRouteInterface reads the kernel's IPv4 routing table for the default route.
func defaultRouteInterface() string {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 2 && fields[1] == "00000000" && fields[0] != "Iface" {
			return fields[0]
		}
	}
	return ""
}

// listen opens a TCP listener on addr (every address if addr is the zero Addr),
// explaining the usual failures.
func listen(addr netip.Addr, port int, what string) (net.Listener, error) {
	l, err := net.Listen("tcp", bindString(addr, port))
	if err != nil {
		return nil, bindHint(fmt.Errorf("%s: %w", what, err), port)
	}
	return l, nil
}

// bindString is addr:port for net.Listen, ":port" for the zero Addr.
func bindString(addr netip.Addr, port int) string {
	if !addr.IsValid() {
		return ":" + strconv.Itoa(port)
	}
	return netip.AddrPortFrom(addr, uint16(port)).String()
}

// bindHint adds what to do to a failed bind: ports below 1024 need root.
func bindHint(err error, port int) error {
	switch {
	case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%w\n  port %d needs root: run pifleet serve as root (sudo), as DHCP/TFTP/NFS servers do", err, port)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("%w\n  that address is not configured on this host: fix server.http / server.address in fleet.yaml", err)
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%w\n  another program already uses port %d (dnsmasq? nfs-kernel-server? another pifleet?): stop it or change server.ports in fleet.yaml", err, port)
	}
	return err
}

func fileHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, maxConfigSize+1)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
