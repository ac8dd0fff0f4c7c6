package demo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pifleet/pifleet/images"
)

// Build makes the demo image in store unless it already exists, and returns its Info.
// It needs root (the tree has root-owned, setuid and device files), apt-get, dpkg-deb and
// depmod on the host.
func Build(ctx context.Context, store *images.Store, opts Options) (*images.Info, error) {
	name := opts.name()
	if store.Exists(name) {
		return store.Info(name)
	}
	// Say what happens before it happens: asking apt and downloading take a while in silence.
	opts.logger().Info("demo image: building it once from Debian packages (busybox-static:arm64, the newest "+
		"linux-image-6.1.0-*-arm64, raspi-firmware): apt check, download to the cache dir, unpack, initramfs, import",
		"image", name, "cache", opts.CacheDir)
	if opts.CacheDir == "" {
		return nil, fmt.Errorf("demo image %s: no cache directory for the downloaded packages", name)
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("demo image %s: %w", name, err)
	}
	// Built next to the cache, not in /tmp: /tmp may be a small tmpfs, and the tree is ~60 MB.
	// The pid in the name tells one process's work dir from another's sharing the cache.
	tmp, err := os.MkdirTemp(opts.CacheDir, fmt.Sprintf("demo-build-%d-", os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("demo image %s: %w", name, err)
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "root")
	tree, err := BuildTree(ctx, root, opts)
	if err != nil {
		return nil, fmt.Errorf("demo image %s: %w", name, err)
	}
	opts.logger().Info("demo image: importing", "image", name, "from", root)
	info, err := store.Import(ctx, root, name, images.ImportOptions{
		// The demo root is made for an NFS root already: no preparation layer.
		Prepare: false,
		Logger:  opts.logger(),
		Source:  "debian: linux-image-" + tree.KernelVersion + ", busybox-static, raspi-firmware",
	})
	if err != nil {
		return nil, fmt.Errorf("demo image %s: import: %w", name, err)
	}
	return info, nil
}
