package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/images/demo"
	"github.com/pifleet/pifleet/server"
)

func runImage(ctx context.Context, e *env, args []string) error {
	return dispatch(ctx, e, "pifleet image", map[string]command{
		"ls":     {"list the base images in the state dir", runImageLs},
		"import": {"import a Raspberry Pi OS .img/.img.xz, a directory, a tarball, or an OCI/docker save arm64 image", runImageImport},
		"verify": {"re-check an image's tree against its import manifest", runImageVerify},
		"rm":     {"remove an image no board uses", runImageRm},
		"shell":  {"run a command in an image's root; its writes become a new image (--as NEW)", runImageShell},
		"demo":   {"build the demo image (busybox + Debian arm64 kernel + Pi firmware) from apt", runImageDemo},
	}, args)
}

// openStore loads fleet.yaml and opens its state dir's image store, upgrading a state dir
// of an older pifleet first (its log lines go to stderr).
func openStore(cfgPath string) (*server.Config, *images.Store, error) {
	return openStoreLog(os.Stderr, cfgPath)
}

// openStoreLog is openStore logging to w.
func openStoreLog(w io.Writer, cfgPath string) (*server.Config, *images.Store, error) {
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		return nil, nil, err
	}
	store, err := server.OpenStore(cfg.Server.State, nil, slog.New(slog.NewTextHandler(w, nil)))
	return cfg, store, err
}

func runImageLs(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet image ls", "[-c fleet.yaml] [--names]",
		"Lists the images in the state dir as a tree: each base, then the images made on it. Under\n"+
			"each image, its own layers (those above its base). SIZE is an image's whole stack or a\n"+
			"layer's files; OWN what no other image uses (removing the image frees it), SHARED the rest.\n"+
			"USED BY names the boards (fleet.yaml) of an image and the images of a layer.")
	cfgPath := configFlag(fs)
	names := fs.Bool("names", false, "print only the image names, one a line (for scripts and completion)")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, store, err := openStoreLog(e.err, *cfgPath)
	if err != nil {
		return err
	}
	list, err := store.List()
	if err != nil {
		return err
	}
	if *names {
		return printImageNames(e, list)
	}
	all, err := store.AllLayers()
	if err != nil {
		return err
	}
	return printImageTree(e.out, cfg, list, all)
}

// printImageTree writes `image ls`: images as a tree of bases, each with its own layers.
func printImageTree(w io.Writer, cfg *server.Config, list []images.Info, all []images.Layer) error {
	layers := map[string]images.Layer{}
	for _, l := range all {
		layers[l.Digest] = l
	}
	users := map[string][]string{} // layer digest -> images
	byName := map[string]images.Info{}
	kids := map[string][]string{}
	for _, im := range list {
		byName[im.Name] = im
		for _, d := range im.Layers {
			users[d] = append(users[d], im.Name)
		}
	}
	var roots []string
	for _, im := range list {
		if _, ok := byName[im.Base]; im.Base != "" && ok {
			kids[im.Base] = append(kids[im.Base], im.Name)
		} else {
			roots = append(roots, im.Name)
		}
	}
	dash := func(n int64) string {
		if n == 0 {
			return "-"
		}
		return images.HumanBytes(n)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tOWN\tSHARED\tUSED BY\tFROM")
	var onDisk, copies int64
	for _, l := range all {
		onDisk += l.Bytes
	}
	var walk func(name, indent string)
	walk = func(name, indent string) {
		im := byName[name]
		var size, own int64
		for _, d := range im.Layers {
			size += layers[d].Bytes
			if len(users[d]) == 1 {
				own += layers[d].Bytes
			}
		}
		copies += size
		boards := usedBy(cfg, name)
		by := "-"
		if len(boards) > 0 {
			by = "boards " + strings.Join(boards, ", ")
		}
		from := im.Source
		if im.Comment != "" {
			from += ": " + im.Comment
		}
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\t%s\t%s\n", indent, name, images.HumanBytes(size), dash(own), dash(size-own), by, from)
		ownStart := 0
		if b, ok := byName[im.Base]; ok && len(b.Layers) <= len(im.Layers) && slices.Equal(b.Layers, im.Layers[:len(b.Layers)]) {
			ownStart = len(b.Layers)
		}
		for i := len(im.Layers) - 1; i >= ownStart; i-- {
			d := im.Layers[i]
			l, ok := layers[d]
			comment := l.Comment
			if !ok {
				comment = "MISSING from the store"
			}
			var lown, lshared int64
			if len(users[d]) == 1 {
				lown = l.Bytes
			} else {
				lshared = l.Bytes
			}
			fmt.Fprintf(tw, "%s  layer %s\t%s\t%s\t%s\timages %s\t%s\n", indent, d[:12], images.HumanBytes(l.Bytes), dash(lown), dash(lshared),
				strings.Join(users[d], ", "), comment)
		}
		for _, k := range kids[name] {
			walk(k, indent+"  ")
		}
	}
	for _, r := range roots {
		walk(r, "")
	}
	var unused []string
	for _, l := range all {
		if len(users[l.Digest]) == 0 {
			unused = append(unused, l.Digest[:12])
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d image(s), %d layer(s): %s of files on disk (%s if each image had its own copy)\n",
		len(list), len(all), images.HumanBytes(onDisk), images.HumanBytes(copies))
	if len(unused) > 0 {
		fmt.Fprintf(w, "unused layers (the first `pifleet image rm` a day after their last use removes them): %s\n", strings.Join(unused, ", "))
	}
	return nil
}

func usedBy(cfg *server.Config, image string) []string {
	return server.ImageUsers(cfg, image) // fleet.yaml's boards of it, and those still running it
}

func runImageImport(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet image import", "[-c fleet.yaml] --name NAME [--replace] [--no-prepare] [--ref REF] FILE",
		"Imports FILE (.img, .img.xz, a directory, or .tar/.tar.gz/.tar.xz) as image NAME, reading the\n"+
			"disk image in-process (no loop mount). The NFS-root preparation (fstab, cmdline, services\n"+
			"that must not run on an NFS root) goes into a separate layer; the import stays pristine.\n"+
			"FILE may also be a container image: an OCI image layout (directory or tar) or a `docker save`\n"+
			"archive of a linux/arm64 image; each of its layers becomes a store layer, shared with other\n"+
			"images that have it; the preparation layer only when it has /boot/firmware.")
	cfgPath := configFlag(fs)
	name := fs.String("name", "", "image name to import as (required)")
	replace := fs.Bool("replace", false, "replace an existing image of that name")
	noPrep := fs.Bool("no-prepare", false, "skip the NFS-root preparation layer")
	ref := fs.String("ref", "", "the image to take from a container archive that holds several (OCI ref name or docker tag)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *name == "" {
		return usagef("image import needs FILE and --name NAME")
	}
	cfg, store, err := openStoreLog(e.err, *cfgPath)
	if err != nil {
		return err
	}
	if *replace {
		// Replacing swaps a tree a running server may have open: only with no server.
		lock, err := server.LockOffline(cfg.Server.State)
		if err != nil {
			return fmt.Errorf("image import --replace: %w", err)
		}
		defer lock.Release()
	}
	if users := usedBy(cfg, *name); *replace && len(users) > 0 && store.Exists(*name) {
		return fmt.Errorf("image %s is used by %s: import under a new name and switch the boards in fleet.yaml", *name, strings.Join(users, ", "))
	}
	info, err := store.Import(ctx, fs.Arg(0), *name, images.ImportOptions{
		Progress: e.err, Prepare: !*noPrep, Replace: *replace, Ref: *ref,
		Logger: slog.New(slog.NewTextHandler(e.err, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if errors.Is(err, images.ErrExists) {
		return fmt.Errorf("%w: to replace it run: pifleet image import --replace --name %s %s (or remove it first: pifleet image rm %s)",
			err, *name, fs.Arg(0), *name)
	}
	if err != nil {
		return err
	}
	sum := ""
	if info.SHA256 != "" { // a directory or a container image archive has none
		sum = ", sha256 " + info.SHA256
	}
	fmt.Fprintf(e.out, "imported %s: %d files, %s%s\n", info.Name, info.Files, images.HumanBytes(info.Bytes), sum)
	return nil
}

func runImageVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet image verify", "[-c fleet.yaml] NAME",
		"Re-checks every layer of an image (its base's included) against the layer's manifest:\n"+
			"the manifest against the layer's digest, then every file, link, device, whiteout,\n"+
			"opaque dir, owner, mode, time, content and xattr.")
	cfgPath := configFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("image verify needs one image name")
	}
	_, store, err := openStoreLog(e.err, *cfgPath)
	if err != nil {
		return err
	}
	info, err := store.Info(fs.Arg(0))
	if err != nil {
		return err
	}
	problems, err := store.Verify(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	for _, p := range problems {
		fmt.Fprintln(e.out, p)
	}
	if len(problems) > 0 {
		return fmt.Errorf("image %s: %d problem(s)", fs.Arg(0), len(problems))
	}
	fmt.Fprintf(e.out, "image %s: ok (%d layers)\n", fs.Arg(0), len(info.Layers))
	return nil
}

func runImageRm(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet image rm", "[-c fleet.yaml] NAME",
		"Removes an image, and the layers no other image uses. Refused while a board in fleet.yaml\n"+
			"or another image (made on it) uses it.")
	cfgPath := configFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("image rm needs one image name")
	}
	cfg, store, err := openStoreLog(e.err, *cfgPath)
	if err != nil {
		return err
	}
	lock, err := server.LockOffline(cfg.Server.State)
	if err != nil {
		return fmt.Errorf("image rm: %w", err)
	}
	defer lock.Release()
	var bases []string
	for _, im := range cfg.Images {
		if im.Base == fs.Arg(0) {
			bases = append(bases, im.Name)
		}
	}
	if len(bases) > 0 {
		sort.Strings(bases)
		return fmt.Errorf("image %s is the base of %s in %s: change those first", fs.Arg(0), strings.Join(bases, ", "), cfg.Path)
	}
	gone, err := store.RemoveImage(fs.Arg(0), usedBy(cfg, fs.Arg(0)))
	if err != nil {
		return err
	}
	var freed int64
	for _, l := range gone {
		freed += l.Bytes
	}
	fmt.Fprintf(e.out, "removed %s and %d layer(s) no other image uses (%s)\n", fs.Arg(0), len(gone), images.HumanBytes(freed))
	return nil
}

func runImageDemo(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet image demo", "[-c fleet.yaml] [--name demo]",
		"Builds the demo image into the state dir, once: busybox-static:arm64, Debian's arm64 kernel\n"+
			"with an initramfs that mounts the NFS root, and the Pi firmware (raspi-firmware), all from\n"+
			"Debian's apt repositories. As root it enables the arm64 architecture and the\n"+
			"non-free-firmware component if apt lacks them.")
	cfgPath := configFlag(fs)
	name := fs.String("name", demo.DefaultName, "image name")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, store, err := openStoreLog(e.err, *cfgPath)
	if err != nil {
		return err
	}
	if store.Exists(*name) {
		fmt.Fprintf(e.out, "image %s already built (%s)\n", *name, filepath.Join(store.Dir(), *name))
		return nil
	}
	info, err := demo.Build(ctx, store, demo.Options{
		Name: *name, CacheDir: server.State{Dir: cfg.Server.State}.Cache(), ConfigureApt: os.Geteuid() == 0,
		Logger: slog.New(slog.NewTextHandler(e.err, nil)),
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "built image %s: %d files, %s\n", info.Name, info.Files, images.HumanBytes(info.Bytes))
	return nil
}
