package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
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
		"import": {"import a Raspberry Pi OS .img/.img.xz, a directory or a tarball", runImageImport},
		"verify": {"re-check an image's tree against its import manifest", runImageVerify},
		"rm":     {"remove an image no board uses", runImageRm},
		"demo":   {"build the demo image (busybox + Debian arm64 kernel + Pi firmware) from apt", runImageDemo},
	}, args)
}

func openStore(cfgPath string) (*server.Config, *images.Store, error) {
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		return nil, nil, err
	}
	store, err := server.OpenStore(cfg.Server.State, nil, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	return cfg, store, err
}

func runImageLs(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet image ls", "[-c fleet.yaml]", "Lists the images in the state dir and which boards use each.")
	cfgPath := configFlag(fs)
	names := fs.Bool("names", false, "print only the image names, one a line (for scripts and completion)")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, store, err := openStore(*cfgPath)
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
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSOURCE\tFILES\tSIZE\tIMPORTED\tPREPARED\tBOARDS")
	for _, im := range list {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%v\t%d\n", im.Name, im.Source, im.Files, images.HumanBytes(im.Bytes),
			im.Imported.Local().Format("2006-01-02 15:04"), im.Prepared, len(usedBy(cfg, im.Name)))
	}
	return tw.Flush()
}

func usedBy(cfg *server.Config, image string) []string {
	var out []string
	for _, b := range cfg.Boards {
		if b.Image == image {
			out = append(out, b.Name)
		}
	}
	return out
}

func runImageImport(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet image import", "[-c fleet.yaml] --name NAME [--replace] [--no-prepare] FILE",
		"Imports FILE (.img, .img.xz, a directory, or .tar/.tar.gz/.tar.xz) as image NAME, reading the\n"+
			"disk image in-process (no loop mount). The NFS-root preparation (fstab, cmdline, services\n"+
			"that must not run on an NFS root) goes into a separate layer; the import stays pristine.")
	cfgPath := configFlag(fs)
	name := fs.String("name", "", "image name to import as (required)")
	replace := fs.Bool("replace", false, "replace an existing image of that name")
	noPrep := fs.Bool("no-prepare", false, "skip the NFS-root preparation layer")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *name == "" {
		return usagef("image import needs FILE and --name NAME")
	}
	cfg, store, err := openStore(*cfgPath)
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
		Progress: e.err, Prepare: !*noPrep, Replace: *replace,
		Logger: slog.New(slog.NewTextHandler(e.err, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if errors.Is(err, images.ErrExists) {
		return fmt.Errorf("%w: to replace it run: pifleet image import --replace --name %s %s (or remove it first: pifleet image rm %s)",
			err, *name, fs.Arg(0), *name)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "imported %s: %d files, %s, sha256 %s\n", info.Name, info.Files, images.HumanBytes(info.Bytes), info.SHA256)
	return nil
}

func runImageVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet image verify", "[-c fleet.yaml] NAME", "Re-checks an image's files against the manifest written at import.")
	cfgPath := configFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("image verify needs one image name")
	}
	_, store, err := openStore(*cfgPath)
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
	fmt.Fprintf(e.out, "image %s: ok\n", fs.Arg(0))
	return nil
}

func runImageRm(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet image rm", "[-c fleet.yaml] NAME", "Removes an image; refused while a board in fleet.yaml uses it.")
	cfgPath := configFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("image rm needs one image name")
	}
	cfg, store, err := openStore(*cfgPath)
	if err != nil {
		return err
	}
	lock, err := server.LockOffline(cfg.Server.State)
	if err != nil {
		return fmt.Errorf("image rm: %w", err)
	}
	defer lock.Release()
	if err := store.Remove(fs.Arg(0), usedBy(cfg, fs.Arg(0))); err != nil {
		return err
	}
	fmt.Fprintf(e.out, "removed %s\n", fs.Arg(0))
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
	cfg, store, err := openStore(*cfgPath)
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
