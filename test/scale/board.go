package scale

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// board is one simulated Raspberry Pi 4.
type board struct {
	index  int
	name   string
	mac    net.HardwareAddr
	serial uint32
	addr   netip.Addr
}

// BoardResult is what one board's boot took and met.
type BoardResult struct {
	Name            string
	DHCP, TFTP, NFS time.Duration // stage times
	Total           time.Duration // from power-on to the last NFS reply of the boot
	TFTPBytes       int64
	NFSBytes        int64 // read over NFS
	Ops             map[string]int
	Retries         int    // retransmissions (DHCP and TFTP) in all
	MaxRetries      int    // the most retransmissions any one exchange (a DHCP step, a file) needed
	KeepAlives      int    // NULL calls answered while idle
	Diverged        int    // replayed NFS calls answered otherwise than in the capture
	FirstDiverge    string // the first of them
	MaxInFlight     int    // the most replayed NFS calls outstanding at once
	Err             error  // the first failure; the boot stopped there
	IdleErr         error  // a keep-alive that failed

	DivergedBy map[string]int // Diverged per procedure name
}

// bootFile is one TFTP request of the Pi 4 boot set.
type bootFile struct {
	name  string
	probe bool
}

// pi4Files is what a Pi 4 fetches, in order, after its serial-prefix probe (PI-BOOT.md).
var pi4Files = []bootFile{
	{"start4.elf", true}, {"config.txt", false}, {"start4.elf", false}, {"fixup4.dat", false},
	{"cmdline.txt", false}, {"bcm2711-rpi-4-b.dtb", false}, {"kernel8.img", false}, {"initramfs8", false},
}

// boot plays the board from power-on to a booted root, then idles with keep-alives
// until idle is cancelled. booted is called once the boot ended (well or not).
func (b *board) boot(ctx, idle context.Context, f *Fleet, booted func(*BoardResult)) *BoardResult {
	r := &BoardResult{Name: b.name, Ops: map[string]int{}}
	start := time.Now()
	done := func(err error) *BoardResult {
		r.Err = err
		r.Total = time.Since(start)
		booted(r)
		return r
	}
	note := func(retries int) {
		r.Retries += retries
		r.MaxRetries = max(r.MaxRetries, retries)
	}

	dhcpRetries, err := b.dhcp(ctx, f.dhcp, f.cfg.FullDHCP, f.serverIP)
	note(dhcpRetries)
	r.DHCP = time.Since(start)
	if err != nil {
		return done(fmt.Errorf("board %s: dhcp: %w", b.name, err))
	}

	t := time.Now()
	var conn *net.UDPConn
	err = f.inClientNS(func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.addr, 0)))
		return err
	})
	if err != nil {
		return done(fmt.Errorf("board %s: tftp socket: %w", b.name, err))
	}
	tftpServer := netip.AddrPortFrom(f.serverIP, 69)
	prefix := fmt.Sprintf("%08x/", b.serial)
	for _, bf := range pi4Files {
		n, retries, err := b.tftpGet(conn, tftpServer, prefix+bf.name, bf.probe, f.cfg.Delay)
		note(retries)
		r.TFTPBytes += n
		if err == nil {
			err = f.checkBootFile(bf, n)
		}
		if err != nil {
			conn.Close()
			r.TFTP = time.Since(t)
			return done(fmt.Errorf("board %s: tftp: %w", b.name, err))
		}
	}
	conn.Close()
	r.TFTP = time.Since(t)

	t = time.Now()
	c, err := b.mountRoot(f, r)
	if err == nil {
		defer c.rpc.Close()
		r.NFSBytes, err = f.work.run(c)
		r.Diverged, r.FirstDiverge, r.MaxInFlight, r.DivergedBy = c.diverged, c.firstDiverge, c.maxInFlight, c.divergedBy
	}
	r.NFS = time.Since(t)
	if err != nil {
		return done(fmt.Errorf("board %s: nfs: %w", b.name, err))
	}
	done(nil)

	// Idle: a booted board's kernel keeps its connection; a NULL call every few seconds
	// stands in for the traffic of a system at rest.
	tick := time.NewTicker(f.cfg.KeepAlive)
	defer tick.Stop()
	for {
		select {
		case <-idle.Done():
			return r
		case <-tick.C:
			if err := c.null(); err != nil {
				r.IdleErr = fmt.Errorf("board %s: keep-alive: %w", b.name, err)
				return r
			}
			r.KeepAlives++
		}
	}
}

// mountRoot does what the initramfs's nfsmount does: GETPORT for MOUNT and NFS from the
// portmapper, MNT, then the kernel's FSINFO and GETATTR of the root on the NFS connection.
func (b *board) mountRoot(f *Fleet, r *BoardResult) (*nfsClient, error) {
	var c *nfsClient
	err := f.inClientNS(func() error {
		mountPort, err := portmapGetport(b.addr, f.serverIP, progMount)
		if err != nil {
			return err
		}
		nfsPort, err := portmapGetport(b.addr, f.serverIP, progNFS)
		if err != nil {
			return err
		}
		root, err := mount(b.addr, netip.AddrPortFrom(f.serverIP, mountPort), "/boards/"+b.name)
		if err != nil {
			return err
		}
		rpc, err := dialRPC(b.addr, netip.AddrPortFrom(f.serverIP, nfsPort), b.name, f.cfg.Delay)
		if err != nil {
			return err
		}
		c = &nfsClient{rpc: rpc, root: root, fhs: map[string][]byte{}, ops: r.Ops}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := c.fsinfo(); err != nil {
		c.rpc.Close()
		return nil, err
	}
	if _, err := c.getattr("/", c.root); err != nil {
		c.rpc.Close()
		return nil, err
	}
	return c, nil
}
