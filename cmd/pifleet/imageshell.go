package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/images/shell"
	"github.com/pifleet/pifleet/overlay"
	"github.com/pifleet/pifleet/server"
	"golang.org/x/sys/unix"
)

// defaultBindDir is where --bind DIR shows up inside the root when no :PATH is given.
const defaultBindDir = "/srv/host"

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func runImageShell(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet image shell", "[-c fleet.yaml] IMAGE --as NEW [--bind DIR[:PATH]]... [--env KEY=VALUE]... [-m COMMENT] [-- CMD [ARG...]]",
		"Runs CMD (default: a login shell, /bin/bash or /bin/sh) as root in IMAGE's merged root on this\n"+
			"server, and makes what it writes the new image NEW: IMAGE's layers plus one layer, IMAGE\n"+
			"untouched. arm64 binaries run through qemu-user (apt-get install qemu-user-static\n"+
			"binfmt-support). /proc, /sys, /dev, /run, /tmp and /var/tmp are the session's own, the\n"+
			"server's DNS config is used, and what `board commit` leaves out is left out of the layer\n"+
			"too (per-board identity and state, files under /var/log and caches; fleet.yaml's\n"+
			"server.commit.exclude adds paths). A command that fails (non-zero exit, in a shell: the last\n"+
			"command's status, or `exit 1`), Ctrl-C or a killed pifleet makes no image.")
	cfgPath := configFlag(fs)
	as := fs.String("as", "", "`NAME` of the new image (required)")
	comment := fs.String("m", "", "the new layer's `COMMENT` (default: the command)")
	var binds, envs listFlag
	fs.Var(&binds, "bind", "show the server's `DIR[:PATH]` read-only at PATH (default "+defaultBindDir+") inside the root; repeatable")
	fs.Var(&envs, "env", "set `KEY=VALUE` for the command (e.g. DEBIAN_FRONTEND=noninteractive); repeatable")
	// Everything after "--" is the command, flags included.
	var command []string
	if i := slices.Index(args, "--"); i >= 0 {
		args, command = args[:i], args[i+1:]
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *as == "" {
		return usagef("image shell needs IMAGE and --as NEW")
	}
	base := fs.Arg(0)
	if err := images.CheckName(*as); err != nil {
		return usageError{err.Error()}
	}
	o := shell.Options{Command: command, Stdin: os.Stdin, Stdout: e.out, Stderr: e.err}
	for _, b := range binds {
		host, dir, ok := strings.Cut(b, ":")
		if !ok {
			dir = defaultBindDir
		}
		abs, err := filepath.Abs(host)
		if err != nil {
			return err
		}
		if !strings.HasPrefix(dir, "/") {
			return usagef("--bind %s: the path inside the root must be absolute", b)
		}
		o.Binds = append(o.Binds, shell.Bind{Host: abs, Path: dir})
	}
	for _, kv := range envs {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return usagef("--env %q: want KEY=VALUE", kv)
		}
	}
	o.Env = envs
	// On a terminal the command gets it to itself: Ctrl-C reaches the command (a shell
	// keeps running; apt-get dies, and then no image is made), not pifleet.
	o.Interactive = inForeground(os.Stdin)
	if *comment == "" {
		*comment = strings.Join(command, " ")
		if len(command) == 0 {
			*comment = "interactive"
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("image shell needs root: it mounts the image with the kernel's overlayfs and chroots into it")
	}
	cfg, store, err := openStore(*cfgPath)
	if err != nil {
		return err
	}
	ex, err := overlay.ParseExcludes(server.LayerExcludes(cfg))
	if err != nil {
		return err
	}
	if store.Exists(*as) {
		return fmt.Errorf("image %s exists: choose another name for --as", *as)
	}
	o.Lowers, err = store.Layers(base)
	if err != nil {
		return err
	}
	tmp, err := store.TempDir("shell-" + *as)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	o.Upper, o.Work, o.Scratch = filepath.Join(tmp, "upper"), filepath.Join(tmp, "work"), filepath.Join(tmp, "mnt")
	for _, d := range []string{o.Upper, o.Work, o.Scratch} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	if err := shell.Run(ctx, o); err != nil {
		var ee *shell.ExitError
		if errors.As(err, &ee) {
			return exitStatus{code: ee.Code, err: fmt.Errorf("image shell %s: %w: no image made", base, err)}
		}
		return fmt.Errorf("%w: no image made", err)
	}
	dropped, err := shell.Clean(o.Upper, o.Lowers, ex)
	if err != nil {
		return fmt.Errorf("image shell %s: %w: no image made", base, err)
	}
	if len(dropped) > 0 {
		fmt.Fprintf(e.err, "image shell: left out of the layer (logs, caches, per-board files): %d file(s)\n", len(dropped))
	}
	meta := images.ImageMeta{Source: "image shell", Comment: *comment} // image ls: "image shell: COMMENT"
	if ents, err := os.ReadDir(o.Upper); err == nil && len(ents) == 0 {
		if err := store.CreateImage(*as, base, nil, meta); err != nil {
			return err
		}
		fmt.Fprintf(e.out, "created image %s: the same as %s (the command changed nothing)\n", *as, base)
		return nil
	}
	layer, err := store.AddLayer(o.Upper, "image shell: "+*comment)
	if err != nil {
		return fmt.Errorf("image shell %s: %w: no image made", base, err)
	}
	if err := store.CreateImage(*as, base, []string{layer.Digest}, meta); err != nil {
		return err
	}
	fmt.Fprintf(e.out, "created image %s: %s + layer %.12s (%d files, %s)\n", *as, base, layer.Digest, layer.Files, images.HumanBytes(layer.Bytes))
	return nil
}

// inForeground reports whether f is a terminal and pifleet is its foreground job (not
// started with & from a shell, which must keep the terminal).
func inForeground(f *os.File) bool {
	pgrp, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCGPGRP)
	return err == nil && pgrp == unix.Getpgrp()
}

// exitStatus is an error that ends pifleet with a given exit status: image shell passes
// on its command's.
type exitStatus struct {
	code int
	err  error
}

func (e exitStatus) Error() string { return e.err.Error() }
func (e exitStatus) Unwrap() error { return e.err }
