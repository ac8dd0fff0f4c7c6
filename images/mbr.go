package images

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
)

// bootMount is where Pi OS mounts its FAT boot partition, and where its files land.
const bootMount = "boot/firmware"

// diskLayout is what walkDisk found in the partition table.
type diskLayout struct {
	rootStart, rootSize int64
	bootStart, bootSize int64 // 0 when the image has no FAT partition
	fat32               bool
}

// findPartitions picks the root (the first ext2/3/4 partition) and the boot partition (the
// first FAT one) by looking at their content, not their type byte: image builders get the
// type wrong often enough. Partitions that reach past the end of the file mean a truncated
// image and are refused here, before anything reads garbage.
func findPartitions(b io.ReaderAt, fileSize int64, parts []struct{ start, size int64 }) (*diskLayout, error) {
	l := &diskLayout{}
	for i, p := range parts {
		if p.size <= 0 {
			continue
		}
		if p.start < 0 || p.start+p.size > fileSize {
			return nil, fmt.Errorf("partition %d ends at byte %d but the image has only %d bytes (truncated image?)", i+1, p.start+p.size, fileSize)
		}
		hdr := make([]byte, 2048)
		if _, err := b.ReadAt(hdr, p.start); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("partition %d: %w", i+1, err)
		}
		switch {
		case binary.LittleEndian.Uint16(hdr[1024+0x38:]) == 0xEF53:
			if l.rootSize == 0 {
				l.rootStart, l.rootSize = p.start, p.size
			}
		case hdr[510] == 0x55 && hdr[511] == 0xAA && (string(hdr[0x52:0x57]) == "FAT32" || string(hdr[0x36:0x3B]) == "FAT16" || string(hdr[0x36:0x3B]) == "FAT12"):
			if l.bootSize == 0 {
				l.bootStart, l.bootSize = p.start, p.size
				l.fat32 = string(hdr[0x52:0x57]) == "FAT32"
			}
		}
	}
	if l.rootSize == 0 {
		return nil, errors.New("no ext4 root partition found in the disk image")
	}
	return l, nil
}

// walkDisk reads a disk image (a file, never a device or a mount): the ext4 root partition
// first, then the FAT boot partition into /boot/firmware.
func walkDisk(ctx context.Context, img, name string, tw *treeWriter, prog *progress, log *slog.Logger) (err error) {
	fail := func(err error) error { return fmt.Errorf("image %s: %s: %w", name, img, err) }
	// go-diskfs indexes slices with values read from the image; a corrupt image must end in
	// an error, not take the process down.
	defer func() {
		if r := recover(); r != nil {
			err = fail(fmt.Errorf("corrupt disk image (reader failed: %v)", r))
		}
	}()
	fi, err := os.Stat(img)
	if err != nil {
		return fail(err)
	}
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return fail(fmt.Errorf("open disk image: %w", err))
	}
	defer d.Close()
	table, err := d.GetPartitionTable()
	if err != nil {
		return fail(fmt.Errorf("partition table: %w", err))
	}
	var parts []struct{ start, size int64 }
	for _, p := range table.GetPartitions() {
		parts = append(parts, struct{ start, size int64 }{p.GetStart(), p.GetSize()})
	}
	layout, err := findPartitions(d.Backend, fi.Size(), parts)
	if err != nil {
		return fail(err)
	}
	root, err := openExt4(name, d.Backend, layout.rootStart, layout.rootSize)
	if err != nil {
		return fail(fmt.Errorf("root partition: %w", err))
	}
	prog.begin("copy", root.usedBytes())
	add := func(e *entry) error { return tw.add(ctx, e) }
	t0 := time.Now()
	if err := root.walk(ctx, "", add); err != nil {
		return fail(fmt.Errorf("root partition: %w", err))
	}
	log.Debug("copied root partition", "image", name, "took", time.Since(t0).Round(time.Millisecond))
	if layout.bootSize == 0 {
		log.Warn("disk image has no FAT boot partition; /boot/firmware stays as the root has it", "image", name)
		return nil
	}
	var boot filesystem.FileSystem
	if layout.fat32 {
		boot, err = fat32.Read(d.Backend, layout.bootSize, layout.bootStart, 512)
	} else {
		boot, err = fat16.Read(d.Backend, layout.bootSize, layout.bootStart, 512)
	}
	if err != nil {
		return fail(fmt.Errorf("boot partition: %w", err))
	}
	if err := tw.ensureDir(bootMount); err != nil {
		return err
	}
	if err := walkFAT(ctx, boot, bootMount, add); err != nil {
		return fail(fmt.Errorf("boot partition: %w", err))
	}
	return nil
}
