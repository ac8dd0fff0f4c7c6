package scale

import (
	"fmt"
	"net/netip"
	"path"
)

// NFS status codes the replay expects.
const (
	nfsOK    = 0
	nfsNoEnt = 2
)

// nfsClient is one board's NFS client: its connection, the handles its replies brought
// (path -> handle, as the kernel's dcache) and what it counted; trace_replay.go drives it.
type nfsClient struct {
	rpc          *rpcConn
	root         []byte
	fhs          map[string][]byte // path -> handle, the board's dcache
	ops          map[string]int    // procedure name -> calls made
	wdata        []byte
	diverged     int    // calls answered otherwise than in the capture
	firstDiverge string // the first of them
	maxInFlight  int    // the most calls the replay had outstanding at once

	divergedBy map[string]int // diverged per procedure name
}

// known is p's handle if the board has one.
func (c *nfsClient) known(p string) ([]byte, bool) {
	if p == "/" {
		return c.root, true
	}
	fh, ok := c.fhs[p]
	return fh, ok
}

// portmapGetport asks the portmapper (TCP 111) for prog v3 over TCP, as klibc nfsmount does.
func portmapGetport(from netip.Addr, server netip.Addr, prog uint32) (uint16, error) {
	c, err := dialRPC(from, netip.AddrPortFrom(server, 111), "pi", 0)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	var e enc
	e.u32(prog)
	e.u32(3)
	e.u32(6) // TCP
	e.u32(0)
	d, err := c.call(progPortmap, 2, 3, e.b)
	if err != nil {
		return 0, fmt.Errorf("portmap GETPORT %d: %w", prog, err)
	}
	p := d.u32()
	if d.err != nil || p == 0 || p > 65535 {
		return 0, fmt.Errorf("portmap GETPORT %d: port %d (%v)", prog, p, d.err)
	}
	return uint16(p), nil
}

// mount asks MOUNT v3 for export's root handle over its own connection, as nfsmount does.
func mount(from netip.Addr, server netip.AddrPort, export string) ([]byte, error) {
	c, err := dialRPC(from, server, "pi", 0)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var e enc
	e.str(export)
	d, err := c.call(progMount, 3, 1, e.b)
	if err != nil {
		return nil, fmt.Errorf("MNT %s: %w", export, err)
	}
	if st := d.u32(); st != 0 {
		return nil, fmt.Errorf("MNT %s: status %d", export, st)
	}
	fh := d.opaque()
	if d.err != nil {
		return nil, fmt.Errorf("MNT %s: %w", export, d.err)
	}
	return append([]byte(nil), fh...), nil
}

func (c *nfsClient) nfs(name string, proc uint32, args []byte) (*dec, uint32, error) {
	c.ops[name]++
	d, err := c.rpc.call(progNFS, 3, proc, args)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", name, err)
	}
	st := d.u32()
	return d, st, d.err
}

func (c *nfsClient) null() error {
	_, err := c.rpc.call(progNFS, 3, procNull, nil)
	return err
}

func (c *nfsClient) fsinfo() error {
	var e enc
	e.opaque(c.root)
	_, st, err := c.nfs("FSINFO", procFsinfo, e.b)
	if err == nil && st != nfsOK {
		err = fmt.Errorf("FSINFO: status %d", st)
	}
	return err
}

// lookup resolves p through the dcache; missing is true for an ENOENT answer.
func (c *nfsClient) lookup(p string) (fh []byte, missing bool, err error) {
	if fh, ok := c.known(p); ok {
		return fh, false, nil
	}
	dir, missing, err := c.lookup(path.Dir(p))
	if err != nil || missing {
		return nil, missing, err
	}
	var e enc
	e.opaque(dir)
	e.str(path.Base(p))
	d, st, err := c.nfs("LOOKUP", procLookup, e.b)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", p, err)
	}
	if st == nfsNoEnt {
		return nil, true, nil
	}
	if st != nfsOK {
		return nil, false, fmt.Errorf("LOOKUP %s: status %d", p, st)
	}
	fh = append([]byte(nil), d.opaque()...)
	if d.err != nil {
		return nil, false, fmt.Errorf("LOOKUP %s: %w", p, d.err)
	}
	c.fhs[p] = fh
	return fh, false, nil
}

func (c *nfsClient) getattr(p string, fh []byte) (fattr, error) {
	var e enc
	e.opaque(fh)
	d, st, err := c.nfs("GETATTR", procGetattr, e.b)
	if err != nil {
		return fattr{}, fmt.Errorf("%s: %w", p, err)
	}
	if st != nfsOK {
		return fattr{}, fmt.Errorf("GETATTR %s: status %d", p, st)
	}
	a := d.fattr3()
	return a, d.err
}
