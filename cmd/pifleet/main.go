// Command pifleet network-boots a fleet of Raspberry Pis (and generic arm64 U-Boot
// boards) with no SD cards. This package is the CLI only: flags, subcommands and exit
// codes; the work is done by package server and the packages below it.
//
// Exit codes: 0 success, 1 failure, 2 usage error, 128+N when signal N (SIGINT: 130,
// SIGTERM: 143) stopped a command midway; image shell exits with its command's status.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"sort"
	"strings"

	"github.com/pifleet/pifleet/images/shell"
)

// usageError marks a mistake in how pifleet was called; it exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// command is one subcommand (or group of subcommands).
type command struct {
	summary string
	run     func(ctx context.Context, env *env, args []string) error
}

// env is what a subcommand may touch: its output streams.
type env struct {
	out, err io.Writer
}

func commands() map[string]command {
	cmds := map[string]command{
		"serve": {"run the DHCP, TFTP, NFS and HTTP services for the fleet", runServe},
		"check": {"validate fleet.yaml and report every problem with its line", runCheck},
		"board": {"list, reset and diff boards (pifleet board --help)", runBoard},
		"image": {"list, import, verify and remove base images (pifleet image --help)", runImage},
	}
	maps.Copy(cmds, installCommands())
	return cmds
}

func main() {
	if shell.IsHelper() { // image shell's helper process: this binary, re-executed
		os.Exit(shell.Main())
	}
	ctx, stop := signalContext()
	code := run(ctx, &env{out: os.Stdout, err: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}

// run dispatches args to a subcommand and maps its error to an exit code.
func run(ctx context.Context, e *env, args []string) int {
	err := dispatch(ctx, e, "pifleet", commands(), args)
	if msg, code, ok := interruption(ctx, err); ok {
		fmt.Fprintf(e.err, "pifleet: %s\n", msg)
		return code
	}
	var ue usageError
	var es exitStatus
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(e.err, "pifleet: %s\n", ue.msg)
		return 2
	case errors.As(err, &es):
		fmt.Fprintf(e.err, "pifleet: %v\n", err)
		return es.code
	default:
		fmt.Fprintf(e.err, "pifleet: %v\n", err)
		return 1
	}
}

func dispatch(ctx context.Context, e *env, prog string, cmds map[string]command, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printCommands(e.out, prog, cmds)
		if len(args) == 0 {
			return usagef("%s needs a subcommand", prog)
		}
		return nil
	}
	c, ok := cmds[args[0]]
	if !ok {
		return usagef("unknown command %q (see %s --help)", args[0], prog)
	}
	return c.run(ctx, e, args[1:])
}

func printCommands(w io.Writer, prog string, cmds map[string]command) {
	fmt.Fprintf(w, "Usage: %s <command> [flags]\n\nCommands:\n", prog)
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintf(w, "\nRun '%s <command> --help' for a command's flags.\n", prog)
}

// newFlags makes a subcommand's flag set whose --help prints usage and whose errors
// become usage errors (exit 2).
func newFlags(e *env, name, args, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.err)
	fs.Usage = func() {
		fmt.Fprintf(e.out, "Usage: %s %s\n\n%s\n", name, args, about)
		var flags strings.Builder
		printFlags(&flags, fs)
		if flags.Len() > 0 {
			fmt.Fprintf(e.out, "\nFlags:\n%s", flags.String())
		}
	}
	return fs
}

// parse parses flags, turning flag errors into usage errors.
func parse(fs *flag.FlagSet, args []string) error {
	// Let flags follow positional arguments too ("board reset pi-01 --force").
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) > 0 {
			pos = append(pos, args[0])
			args = args[1:]
		}
	}
	return fs.Parse(append([]string{"--"}, pos...))
}

// configFlag registers -c/--config with the default search: $PIFLEET_CONFIG, then
// ./fleet.yaml, then /etc/pifleet/fleet.yaml.
func configFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("PIFLEET_CONFIG")
	if def == "" {
		def = "fleet.yaml"
		if _, err := os.Stat(def); err != nil {
			if _, err := os.Stat("/etc/pifleet/fleet.yaml"); err == nil {
				def = "/etc/pifleet/fleet.yaml"
			}
		}
	}
	p := new(string)
	fs.StringVar(p, "c", def, "read the fleet from `FILE`")
	fs.StringVar(p, "config", def, "read the fleet from `FILE`")
	return p
}
