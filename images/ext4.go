package images

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
)

// The ext4 root is read with go-diskfs for what it does well (the directory tree, htree
// directories included, and xattrs) and with the small inode and extent reader below for
// everything else: go-diskfs v1.9.4 returns other blocks' data for holes, ignores unwritten
// (preallocated) extents, does not report setuid/setgid/sticky from ReadDir and keeps only
// short symlink targets. Reading the inode ourselves keeps file data exact.

// ext4 superblock features we must look at.
const (
	ext4IncompatRecover    = 0x4
	ext4IncompatJournalDev = 0x8
	ext4IncompatMetaBG     = 0x10
	ext4Incompat64Bit      = 0x80
	ext4IncompatInlineData = 0x8000
	ext4IncompatEncrypt    = 0x10000

	ext4InodeFlagExtents    = 0x80000
	ext4InodeFlagInlineData = 0x10000000
	ext4InodeFlagEncrypt    = 0x800

	ext4ExtentMagic = 0xF30A
	ext4XattrMagic  = 0xEA020000
	ext4RootInode   = 2
	// maxExtentDepth is the kernel's own limit (EXT4_MAX_EXTENT_DEPTH).
	maxExtentDepth = 5
)

// ext4Part is one ext4 partition of a disk image.
type ext4Part struct {
	image     string
	r         io.ReaderAt // the partition, offset 0 = its first byte
	size      int64
	fs        *ext4.FileSystem
	blockSize int64
	ipg       uint32 // inodes per group
	inodeSize int64
	inodes    uint32
	gdt       []byte
	descSize  int
	is64      bool
}

// openExt4 checks the superblock (refusing what we cannot read faithfully) and opens the
// partition with go-diskfs.
func openExt4(image string, b backend.Storage, start, size int64) (*ext4Part, error) {
	r := io.NewSectionReader(b, start, size)
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, 1024); err != nil {
		return nil, fmt.Errorf("ext4 superblock: %w", err)
	}
	p, err := parseExt4Superblock(sb, size)
	if err != nil {
		return nil, err
	}
	p.image, p.r, p.size = image, r, size
	gdtBlock := int64(binary.LittleEndian.Uint32(sb[0x14:])) + 1
	groups := (p.inodes + p.ipg - 1) / p.ipg
	p.gdt = make([]byte, int64(groups)*int64(p.descSize))
	if _, err := r.ReadAt(p.gdt, gdtBlock*p.blockSize); err != nil {
		return nil, fmt.Errorf("ext4 group descriptors: %w", err)
	}
	fs, err := ext4.Read(b, size, start, 512)
	if err != nil {
		return nil, fmt.Errorf("ext4: %w", err)
	}
	p.fs = fs
	return p, nil
}

// parseExt4Superblock reads the fields the inode reader needs and refuses file systems it
// would misread. size bounds the geometry so a corrupt superblock cannot ask for huge buffers.
func parseExt4Superblock(sb []byte, size int64) (*ext4Part, error) {
	if len(sb) < 1024 || binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
		return nil, errors.New("no ext4 file system (bad superblock magic)")
	}
	le := binary.LittleEndian
	incompat := le.Uint32(sb[0x60:])
	switch {
	case incompat&ext4IncompatRecover != 0:
		return nil, errors.New("the ext4 file system needs journal recovery (it was not cleanly unmounted): run e2fsck -fy on the image file and import again")
	case incompat&ext4IncompatJournalDev != 0:
		return nil, errors.New("this is an external ext4 journal device, not a file system")
	case incompat&ext4IncompatMetaBG != 0:
		return nil, errors.New("ext4 meta_bg layout is not supported")
	case incompat&ext4IncompatInlineData != 0:
		return nil, errors.New("ext4 inline_data is not supported (Pi OS does not use it; re-create the image without -O inline_data)")
	case incompat&ext4IncompatEncrypt != 0:
		return nil, errors.New("encrypted ext4 is not supported")
	}
	logBS := le.Uint32(sb[0x18:])
	if logBS > 6 {
		return nil, fmt.Errorf("ext4 block size 2^%d KiB is invalid", logBS)
	}
	p := &ext4Part{
		blockSize: 1024 << logBS,
		ipg:       le.Uint32(sb[0x28:]),
		inodes:    le.Uint32(sb[0x0:]),
		inodeSize: 128,
		descSize:  32,
		is64:      incompat&ext4Incompat64Bit != 0,
	}
	if le.Uint32(sb[0x4C:]) >= 1 { // dynamic revision: variable inode size
		p.inodeSize = int64(le.Uint16(sb[0x58:]))
	}
	if p.is64 {
		p.descSize = int(le.Uint16(sb[0xFE:]))
	}
	switch {
	case p.ipg == 0 || p.inodes == 0:
		return nil, errors.New("ext4 superblock has no inodes")
	case p.inodeSize < 128 || p.inodeSize > p.blockSize || p.inodeSize&(p.inodeSize-1) != 0:
		return nil, fmt.Errorf("ext4 inode size %d is invalid", p.inodeSize)
	case p.descSize < 32 || p.descSize > 1024:
		return nil, fmt.Errorf("ext4 group descriptor size %d is invalid", p.descSize)
	case int64((p.inodes+p.ipg-1)/p.ipg)*int64(p.descSize) > size:
		return nil, fmt.Errorf("ext4 superblock claims %d inodes, more than the %d-byte partition can hold", p.inodes, size)
	}
	return p, nil
}

// ext4Inode is what the import needs from an on-disk inode.
type ext4Inode struct {
	num       uint32
	mode      uint32
	uid, gid  uint32
	size      int64
	mtime     time.Time
	links     uint16
	flags     uint32
	block     [60]byte
	fileACL   uint64
	hasXattrs bool
}

func (p *ext4Part) inode(n uint32) (*ext4Inode, error) {
	if n == 0 || n > p.inodes {
		return nil, fmt.Errorf("inode %d out of range", n)
	}
	group := int64((n - 1) / p.ipg)
	d := p.gdt[group*int64(p.descSize):]
	table := int64(binary.LittleEndian.Uint32(d[0x8:]))
	if p.is64 && p.descSize >= 64 {
		table |= int64(binary.LittleEndian.Uint32(d[0x28:])) << 32
	}
	off := table*p.blockSize + int64((n-1)%p.ipg)*p.inodeSize
	if table <= 0 || off < 0 || off+p.inodeSize > p.size {
		return nil, fmt.Errorf("inode %d lies outside the partition (image truncated?)", n)
	}
	b := make([]byte, p.inodeSize)
	if _, err := p.r.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("inode %d: %w", n, err)
	}
	return parseExt4Inode(n, b), nil
}

func parseExt4Inode(n uint32, b []byte) *ext4Inode {
	le := binary.LittleEndian
	in := &ext4Inode{
		num:     n,
		mode:    uint32(le.Uint16(b[0x0:])),
		uid:     uint32(le.Uint16(b[0x2:])) | uint32(le.Uint16(b[0x78:]))<<16,
		gid:     uint32(le.Uint16(b[0x18:])) | uint32(le.Uint16(b[0x7A:]))<<16,
		size:    int64(le.Uint32(b[0x4:])) | int64(le.Uint32(b[0x6C:]))<<32,
		links:   le.Uint16(b[0x1A:]),
		flags:   le.Uint32(b[0x20:]),
		fileACL: uint64(le.Uint32(b[0x68:])) | uint64(le.Uint16(b[0x76:]))<<32,
	}
	copy(in.block[:], b[0x28:0x28+60])
	sec, nsec := int64(int32(le.Uint32(b[0x10:]))), int64(0)
	if len(b) >= 0x82 {
		extra := int(le.Uint16(b[0x80:]))
		if extra >= 12 && 128+extra <= len(b) { // i_mtime_extra at 0x88
			x := le.Uint32(b[0x88:])
			sec += int64(x&3) << 32
			nsec = int64(x >> 2)
		}
		if xs := 128 + extra; xs+4 <= len(b) && le.Uint32(b[xs:]) == ext4XattrMagic {
			in.hasXattrs = true
		}
	}
	if in.fileACL != 0 {
		in.hasXattrs = true
	}
	in.mtime = time.Unix(sec, nsec)
	if in.size < 0 {
		in.size = 0
	}
	return in
}

// ext4Extent maps length blocks from logical block lblk to physical block pblk.
type ext4Extent struct {
	lblk, length int64
	pblk         int64
	unwritten    bool
}

// extents returns an inode's extents sorted by logical block.
func (p *ext4Part) extents(in *ext4Inode) ([]ext4Extent, error) {
	if in.flags&ext4InodeFlagExtents == 0 {
		return nil, errors.New("uses ext2/ext3 block maps, which this importer does not read (convert with tune2fs -O extents and e2fsck -fE bmap2extent)")
	}
	var out []ext4Extent
	if err := p.walkExtents(in.block[:], maxExtentDepth, &out); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].lblk < out[j].lblk })
	for i := 1; i < len(out); i++ {
		if out[i].lblk < out[i-1].lblk+out[i-1].length {
			return nil, errors.New("overlapping extents (corrupt file system)")
		}
	}
	return out, nil
}

func (p *ext4Part) walkExtents(node []byte, depthLeft int, out *[]ext4Extent) error {
	le := binary.LittleEndian
	if len(node) < 12 || le.Uint16(node[0:]) != ext4ExtentMagic {
		return errors.New("bad extent header (corrupt file system)")
	}
	entries := int(le.Uint16(node[2:]))
	depth := int(le.Uint16(node[6:]))
	if 12+entries*12 > len(node) {
		return errors.New("extent node overflows its block (corrupt file system)")
	}
	if depth > depthLeft {
		return errors.New("extent tree too deep (corrupt file system)")
	}
	for i := 0; i < entries; i++ {
		e := node[12+i*12 : 24+i*12]
		if depth == 0 {
			length := int64(le.Uint16(e[4:]))
			unwritten := false
			if length > 32768 {
				length -= 32768
				unwritten = true
			}
			pblk := int64(le.Uint16(e[6:]))<<32 | int64(le.Uint32(e[8:]))
			if (pblk+length)*p.blockSize > p.size {
				return fmt.Errorf("extent at block %d lies outside the partition (image truncated?)", pblk)
			}
			*out = append(*out, ext4Extent{lblk: int64(le.Uint32(e[0:])), length: length, pblk: pblk, unwritten: unwritten})
			continue
		}
		child := int64(le.Uint16(e[8:]))<<32 | int64(le.Uint32(e[4:]))
		if child <= 0 || (child+1)*p.blockSize > p.size {
			return fmt.Errorf("extent index block %d lies outside the partition (image truncated?)", child)
		}
		b := make([]byte, p.blockSize)
		if _, err := p.r.ReadAt(b, child*p.blockSize); err != nil {
			return fmt.Errorf("extent block %d: %w", child, err)
		}
		if err := p.walkExtents(b, depth-1, out); err != nil {
			return err
		}
	}
	return nil
}

// extentReader reads a file's content from its extents; holes and unwritten extents read as
// zeros, as the kernel returns them.
type extentReader struct {
	p    *ext4Part
	ext  []ext4Extent
	size int64
	pos  int64
}

func (r *extentReader) Read(b []byte) (int, error) {
	if r.pos >= r.size {
		return 0, io.EOF
	}
	if int64(len(b)) > r.size-r.pos {
		b = b[:r.size-r.pos]
	}
	bs := r.p.blockSize
	lblk := r.pos / bs
	// drop extents that end before the current position
	for len(r.ext) > 0 && r.ext[0].lblk+r.ext[0].length <= lblk {
		r.ext = r.ext[1:]
	}
	if len(r.ext) == 0 || r.ext[0].lblk > lblk || r.ext[0].unwritten {
		// a hole (or preallocated space) up to the next extent or to the end of this one
		end := r.size
		if len(r.ext) > 0 {
			e := r.ext[0]
			if e.lblk > lblk {
				end = min(end, e.lblk*bs)
			} else {
				end = min(end, (e.lblk+e.length)*bs)
			}
		}
		n := int(min(int64(len(b)), end-r.pos))
		clear(b[:n])
		r.pos += n64(n)
		return n, nil
	}
	e := r.ext[0]
	end := min(r.size, (e.lblk+e.length)*bs)
	n := int(min(int64(len(b)), end-r.pos))
	phys := e.pblk*bs + (r.pos - e.lblk*bs)
	m, err := r.p.r.ReadAt(b[:n], phys)
	r.pos += n64(m)
	if err != nil && !(errors.Is(err, io.EOF) && m == n) {
		return m, fmt.Errorf("read block %d: %w", phys/bs, err)
	}
	return m, nil
}

func n64(n int) int64 { return int64(n) }

// content returns the bytes of a symlink target or a small file.
func (p *ext4Part) content(in *ext4Inode, limit int64) ([]byte, error) {
	if in.size > limit {
		return nil, fmt.Errorf("%d bytes, more than %d", in.size, limit)
	}
	ext, err := p.extents(in)
	if err != nil {
		return nil, err
	}
	b := make([]byte, in.size)
	if _, err := io.ReadFull(&extentReader{p: p, ext: ext, size: in.size}, b); err != nil {
		return nil, err
	}
	return b, nil
}

// walk streams the file system as entries, parents first, names sorted.
func (p *ext4Part) walk(ctx context.Context, prefix string, fn func(*entry) error) error {
	links := map[uint32]string{}
	// a corrupt directory entry pointing at an ancestor would otherwise recurse forever
	seenDirs := map[uint32]bool{}
	var walkDir func(fsPath, rel string, ino uint32) error
	walkDir = func(fsPath, rel string, ino uint32) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, in, err := p.entry(fsPath, rel, ino)
		if err != nil {
			return fmt.Errorf("/%s: %w", rel, err)
		}
		if in.mode&typeMask != typeDir {
			if in.links > 1 {
				if first, ok := links[ino]; ok {
					return fn(&entry{Path: rel, LinkTo: first})
				}
				links[ino] = rel
			}
			return fn(e)
		}
		if seenDirs[ino] {
			return fmt.Errorf("/%s: directory inode %d appears twice (corrupt file system)", rel, ino)
		}
		seenDirs[ino] = true
		if err := fn(e); err != nil {
			return err
		}
		des, err := p.fs.ReadDir(fsPath)
		if err != nil {
			return fmt.Errorf("/%s: %w", rel, err)
		}
		type child struct {
			name string
			ino  uint32
		}
		kids := make([]child, 0, len(des))
		for _, de := range des {
			fi, err := de.Info()
			if err != nil {
				return fmt.Errorf("/%s: %w", path.Join(rel, de.Name()), err)
			}
			st, ok := fi.Sys().(*ext4.StatT)
			if !ok {
				return fmt.Errorf("/%s: no inode number from go-diskfs", path.Join(rel, de.Name()))
			}
			kids = append(kids, child{de.Name(), st.Ino})
		}
		sort.Slice(kids, func(i, j int) bool { return kids[i].name < kids[j].name })
		for _, k := range kids {
			if rel == "" && k.name == "lost+found" {
				continue // e2fsck's, recreated by mkfs; not part of the OS
			}
			if err := walkDir(path.Join(fsPath, k.name), path.Join(rel, k.name), k.ino); err != nil {
				return err
			}
		}
		return nil
	}
	return walkDir(".", prefix, ext4RootInode)
}

// maxSymlink is PATH_MAX: no valid symlink target is longer.
const maxSymlink = 4096

func (p *ext4Part) entry(fsPath, rel string, ino uint32) (*entry, *ext4Inode, error) {
	in, err := p.inode(ino)
	if err != nil {
		return nil, nil, err
	}
	if in.flags&ext4InodeFlagInlineData != 0 {
		return nil, nil, errors.New("inline data is not supported")
	}
	if in.flags&ext4InodeFlagEncrypt != 0 {
		return nil, nil, errors.New("encrypted file")
	}
	e := &entry{Path: rel, Mode: in.mode, UID: in.uid, GID: in.gid, Mtime: in.mtime, Size: in.size}
	switch in.mode & typeMask {
	case typeReg:
		// Holes are free on disk but not to copy and hash: a corrupt inode claiming an
		// exabyte would never finish. No file of a real root is larger than its partition.
		if in.size > p.size {
			return nil, nil, fmt.Errorf("file of %d bytes is larger than its %d-byte partition (corrupt inode?): refusing", in.size, p.size)
		}
		ext, err := p.extents(in)
		if err != nil {
			return nil, nil, err
		}
		size := in.size
		e.Open = func() (io.ReadCloser, error) {
			return io.NopCloser(&extentReader{p: p, ext: ext, size: size}), nil
		}
	case typeLnk:
		if in.size <= 0 || in.size > maxSymlink {
			return nil, nil, fmt.Errorf("symlink target of %d bytes", in.size)
		}
		if in.flags&ext4InodeFlagExtents == 0 && in.size < 60 {
			e.Target = string(in.block[:in.size]) // fast symlink, target inside the inode
		} else {
			b, err := p.content(in, maxSymlink)
			if err != nil {
				return nil, nil, fmt.Errorf("symlink: %w", err)
			}
			e.Target = string(b)
		}
	case typeChr, typeBlk:
		le := binary.LittleEndian
		if old := le.Uint32(in.block[0:]); old != 0 {
			e.Major, e.Minor = (old>>8)&0xff, old&0xff
		} else {
			nw := le.Uint32(in.block[4:])
			e.Major, e.Minor = (nw>>8)&0xfff, (nw&0xff)|((nw>>12)&0xfff00)
		}
	case typeDir:
		// go-diskfs reads a whole directory into memory: check its size and extents first so
		// a corrupt inode cannot make it allocate beyond the partition
		if in.size > p.size {
			return nil, nil, fmt.Errorf("directory of %d bytes is larger than its partition (corrupt inode?)", in.size)
		}
		if in.flags&ext4InodeFlagExtents != 0 {
			if _, err := p.extents(in); err != nil {
				return nil, nil, fmt.Errorf("directory: %w", err)
			}
		}
	case typeFifo, typeSock:
	default:
		return nil, nil, fmt.Errorf("inode %d has unknown file type %#o", ino, in.mode&typeMask)
	}
	if in.hasXattrs {
		x, err := p.fs.GetXattr(fsPath)
		if err != nil {
			return nil, nil, fmt.Errorf("xattrs: %w", err)
		}
		// ext4 keeps ACLs in its own format; setxattr takes only the kernel's
		if err := ext4ACLsToXattr(x); err != nil {
			return nil, nil, err
		}
		if len(x) > 0 {
			e.Xattrs = x
		}
	}
	return e, in, nil
}

// usedBytes estimates the data to copy (blocks in use), for the progress ETA.
func (p *ext4Part) usedBytes() int64 {
	sb := make([]byte, 1024)
	if _, err := p.r.ReadAt(sb, 1024); err != nil {
		return 0
	}
	le := binary.LittleEndian
	blocks := int64(le.Uint32(sb[0x4:]))
	free := int64(le.Uint32(sb[0xC:]))
	if p.is64 {
		blocks |= int64(le.Uint32(sb[0x150:])) << 32
		free |= int64(le.Uint32(sb[0x158:])) << 32
	}
	if free > blocks {
		return 0
	}
	return (blocks - free) * p.blockSize
}
