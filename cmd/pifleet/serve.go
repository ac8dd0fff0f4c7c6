package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/pifleet/pifleet/server"
)

func runServe(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet serve", "[-c fleet.yaml] [--log-level info]",
		"Runs DHCP, TFTP, NFS and HTTP for the fleet in fleet.yaml until SIGINT/SIGTERM.\n"+
			"Edits to fleet.yaml (or a SIGHUP) reload it: a bad file is reported and the running\n"+
			"config kept; boards whose entries did not change are not disturbed.\n"+
			"Needs root: DHCP, TFTP and NFS use ports below 1024.")
	cfgPath := configFlag(fs)
	level := fs.String("log-level", "info", "debug, info, warn or error")
	jsonLog := fs.Bool("log-json", false, "log JSON lines instead of text")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("serve takes no arguments (got %q)", fs.Args())
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return usagef("--log-level %q: use debug, info, warn or error", *level)
	}
	h := logHandler(e.err, lv, *jsonLog, e.err == os.Stderr && journalStream(os.Getenv("JOURNAL_STREAM"), os.Stderr))
	if os.Geteuid() != 0 {
		fmt.Fprintln(e.err, "pifleet: warning: not running as root; binding ports 67, 69 and 2049 will fail unless fleet.yaml moves them (run: sudo pifleet serve)")
	}
	err := server.Run(ctx, server.Options{ConfigPath: *cfgPath, Logger: slog.New(h)})
	var ce *server.ConfigError
	if errors.As(err, &ce) {
		fmt.Fprint(e.err, ce.Problems.Format(*cfgPath))
		return fmt.Errorf("%s has %d error(s); nothing started", *cfgPath, ce.Problems.Errors())
	}
	return err
}
