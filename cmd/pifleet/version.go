package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at link time by `make build`/`make install` (-ldflags -X): the Makefile builds with
// -buildvcs=false (it runs under sudo, where git may refuse the checkout), so Go's own VCS
// stamp is absent and git describe/rev-parse supply it instead.
var (
	version  string // git describe --tags --dirty: empty without a tag
	revision string // git rev-parse HEAD, "-dirty" appended for uncommitted changes
)

// buildVersion returns the version and VCS revision of this binary: the link-time values
// when set, else what the Go toolchain recorded (a module version from `go install
// ...@v1.2.3`, vcs.revision from a plain `go build` in a checkout), else "(devel)" and
// "unknown".
func buildVersion() (ver, rev string) {
	ver, rev = version, revision
	bi, ok := debug.ReadBuildInfo()
	if ver == "" && ok && bi.Main.Version != "" {
		ver = bi.Main.Version
	}
	if rev == "" && ok {
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if rev != "" && modified {
			rev += "-dirty"
		}
	}
	if ver == "" {
		ver = "(devel)"
	}
	if rev == "" {
		rev = "unknown"
	}
	return ver, rev
}

func runVersion(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet version", "", "Prints pifleet's version, the VCS revision it was built from, and the Go toolchain.")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("version takes no arguments (got %q)", fs.Args())
	}
	ver, rev := buildVersion()
	fmt.Fprintf(e.out, "pifleet %s\nrevision %s\n%s %s/%s\n", ver, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}

// installCommands are the commands for running pifleet as an installed program.
func installCommands() map[string]command {
	return map[string]command{
		"version":    {"print the version and VCS revision pifleet was built from", runVersion},
		"completion": {"print a shell completion script (pifleet completion bash)", runCompletion},
	}
}
