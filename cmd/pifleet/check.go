package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/pifleet/pifleet/server"
)

func runCheck(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet check", "[-c fleet.yaml]",
		"Validates fleet.yaml without starting anything and reports every problem as\nfile:line:column: message (hint: what to do). Exits 1 if there is any error;\nwarnings alone exit 0.")
	cfgPath := configFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("check takes no arguments (got %q)", fs.Args())
	}
	cfg, problems, err := server.Load(*cfgPath)
	fmt.Fprint(e.out, problems.Format(*cfgPath))
	var ce *server.ConfigError
	if errors.As(err, &ce) {
		return fmt.Errorf("%s: %d error(s)", *cfgPath, problems.Errors())
	}
	if err != nil {
		return err
	}
	// What serve checks against the disk: image paths and the state dir's image store.
	disk := server.CheckImages(cfg)
	fmt.Fprint(e.out, disk.Format(*cfgPath))
	if n := disk.Errors(); n > 0 {
		return fmt.Errorf("%s: %d error(s): pifleet serve would refuse it", *cfgPath, n)
	}
	fmt.Fprintf(e.out, "%s: ok: %d board(s), %d image(s), dhcp %s\n", *cfgPath, len(cfg.Boards), len(cfg.Images), cfg.Server.DHCP.Mode)
	return nil
}
