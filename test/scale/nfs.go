package scale

import (
	"fmt"
	"net/netip"
	"path"
	"strings"
)

// NFS status codes the replay expects.
const (
	nfsOK    = 0
	nfsNoEnt = 2
)

// readSize is the READ count per call: the kernel's readahead window on a board.
const readSize = 128 << 10

// nfsClient replays a workload as one board's kernel would: a dentry cache (each
// directory looked up once), GETATTR at every open (close-to-open), READs to EOF.
type nfsClient struct {
	rpc   *rpcConn
	root  []byte
	fhs   map[string][]byte // path -> handle, the board's dcache
	ops   map[string]int    // procedure name -> calls made
	wdata []byte
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
	if p == "/" {
		return c.root, false, nil
	}
	if fh, ok := c.fhs[p]; ok {
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

// readFile opens p (lookup, GETATTR) and reads it to EOF; it returns the bytes read.
func (c *nfsClient) readFile(p string) (int64, error) {
	fh, missing, err := c.lookup(p)
	if err == nil && missing {
		err = fmt.Errorf("%s: no such file", p)
	}
	if err != nil {
		return 0, err
	}
	a, err := c.getattr(p, fh)
	if err != nil {
		return 0, err
	}
	var off uint64
	for range a.size/readSize + 2 {
		var e enc
		e.opaque(fh)
		e.u64(off)
		e.u32(readSize)
		d, st, err := c.nfs("READ", procRead, e.b)
		if err != nil {
			return int64(off), fmt.Errorf("%s: %w", p, err)
		}
		if st != nfsOK {
			return int64(off), fmt.Errorf("READ %s at %d: status %d", p, off, st)
		}
		d.postOpAttr()
		d.u32() // count
		eof := d.u32() != 0
		data := d.opaque()
		if d.err != nil {
			return int64(off), fmt.Errorf("READ %s: %w", p, d.err)
		}
		off += uint64(len(data))
		if eof || len(data) == 0 {
			break
		}
	}
	if off != a.size {
		return int64(off), fmt.Errorf("READ %s: got %d bytes, size %d", p, off, a.size)
	}
	return int64(off), nil
}

// stat is a lookup and GETATTR (stat(2) on a cached dentry revalidates).
func (c *nfsClient) stat(p string) error {
	fh, missing, err := c.lookup(p)
	if err == nil && missing {
		err = fmt.Errorf("%s: no such file", p)
	}
	if err != nil {
		return err
	}
	_, err = c.getattr(p, fh)
	return err
}

// absent looks up a name that must not exist (a library search path, an optional config).
func (c *nfsClient) absent(p string) error {
	_, missing, err := c.lookup(p)
	if err == nil && !missing {
		err = fmt.Errorf("%s exists, the workload expects it absent", p)
	}
	return err
}

// readdir lists dir with READDIRPLUS to the end and returns the number of entries; the
// handles it brings fill the dcache, as the kernel's readdirplus does.
func (c *nfsClient) readdir(dir string) (int, error) {
	fh, missing, err := c.lookup(dir)
	if err == nil && missing {
		err = fmt.Errorf("%s: no such directory", dir)
	}
	if err != nil {
		return 0, err
	}
	var cookie uint64
	verf := make([]byte, 8)
	n := 0
	for range 10000 {
		var e enc
		e.opaque(fh)
		e.u64(cookie)
		e.b = append(e.b, verf...)
		e.u32(8192)  // dircount
		e.u32(32768) // maxcount
		d, st, err := c.nfs("READDIRPLUS", procReaddirplus, e.b)
		if err != nil {
			return n, fmt.Errorf("%s: %w", dir, err)
		}
		if st != nfsOK {
			return n, fmt.Errorf("READDIRPLUS %s: status %d", dir, st)
		}
		d.postOpAttr()
		verf = append(verf[:0], d.take(8)...)
		for d.u32() != 0 && d.err == nil {
			d.u64() // fileid
			name := string(d.opaque())
			cookie = d.u64()
			d.postOpAttr()
			if d.u32() != 0 {
				h := append([]byte(nil), d.opaque()...)
				if name != "." && name != ".." {
					c.fhs[path.Join(dir, name)] = h
				}
			}
			n++
		}
		eof := d.u32() != 0
		if d.err != nil {
			return n, fmt.Errorf("READDIRPLUS %s: %w", dir, d.err)
		}
		if eof {
			return n, nil
		}
	}
	return n, fmt.Errorf("READDIRPLUS %s: no EOF after 10000 calls", dir)
}

// writeFile writes size bytes to p in 64 KiB UNSTABLE writes (creating it if create),
// then COMMITs, as the page cache flushes a file a daemon wrote.
func (c *nfsClient) writeFile(p string, size int, create bool) error {
	var fh []byte
	if create {
		dir, missing, err := c.lookup(path.Dir(p))
		if err == nil && missing {
			err = fmt.Errorf("%s: no such directory", path.Dir(p))
		}
		if err != nil {
			return err
		}
		var e enc
		e.opaque(dir)
		e.str(path.Base(p))
		e.u32(0)     // UNCHECKED
		e.u32(1)     // set mode
		e.u32(0o640) // mode
		e.u32(0)     // uid
		e.u32(0)     // gid
		e.u32(0)     // size
		e.u32(0)     // atime
		e.u32(0)     // mtime
		d, st, err := c.nfs("CREATE", procCreate, e.b)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if st != nfsOK {
			return fmt.Errorf("CREATE %s: status %d", p, st)
		}
		if d.u32() == 0 {
			return fmt.Errorf("CREATE %s: no handle in the reply", p)
		}
		fh = append([]byte(nil), d.opaque()...)
		if d.err != nil {
			return fmt.Errorf("CREATE %s: %w", p, d.err)
		}
		c.fhs[p] = fh
	} else {
		var missing bool
		var err error
		fh, missing, err = c.lookup(p)
		if err == nil && missing {
			err = fmt.Errorf("%s: no such file", p)
		}
		if err != nil {
			return err
		}
	}
	const chunk = 64 << 10
	if len(c.wdata) < chunk {
		c.wdata = []byte(strings.Repeat("journal entry ", chunk/14+1))[:chunk]
	}
	for off := 0; off < size; off += chunk {
		n := min(chunk, size-off)
		var e enc
		e.opaque(fh)
		e.u64(uint64(off))
		e.u32(uint32(n))
		e.u32(0) // UNSTABLE
		e.opaque(c.wdata[:n])
		d, st, err := c.nfs("WRITE", procWrite, e.b)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if st != nfsOK {
			return fmt.Errorf("WRITE %s at %d: status %d", p, off, st)
		}
		d.wccData()
		if got := d.u32(); got != uint32(n) || d.err != nil {
			return fmt.Errorf("WRITE %s at %d: wrote %d of %d (%v)", p, off, got, n, d.err)
		}
	}
	var e enc
	e.opaque(fh)
	e.u64(0)
	e.u32(0)
	_, st, err := c.nfs("COMMIT", procCommit, e.b)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if st != nfsOK {
		return fmt.Errorf("COMMIT %s: status %d", p, st)
	}
	return nil
}
