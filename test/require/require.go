// Package require decides what a test does when its machine lacks something the test
// needs (root, a command): on a developer's machine the test is skipped, saying what is
// missing; under CI (PIFLEET_STRICT=1, set by .ci/run) it fails, so that a CI machine
// without a test dependency never goes green by skipping.
//
// Every test that needs root or an external tool goes through this package (directly or
// through test/netns and test/e2e/testbed, which use it); no test calls t.Skip itself for
// a missing tool or privilege.
package require

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// StrictEnv is the environment variable that turns skips for missing dependencies into
// failures when set to "1".
const StrictEnv = "PIFLEET_STRICT"

// Strict reports whether missing dependencies fail tests (PIFLEET_STRICT=1).
func Strict() bool { return os.Getenv(StrictEnv) == "1" }

// Missing ends t because the machine lacks what reason names: t.Skip normally, t.Fatal
// under PIFLEET_STRICT=1.
func Missing(t testing.TB, reason string) {
	t.Helper()
	if Strict() {
		t.Fatalf("%s (%s=1: a missing test dependency is a failure)", reason, StrictEnv)
	}
	t.Skip(reason)
}

// Root ends t (see Missing) unless it runs as root. why says what the test needs root
// for; the message reads "needs root: <why>".
func Root(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root: "+why)
	}
}

// Tool ends t (see Missing) unless the command name is on PATH, naming the Debian package
// pkg that has it; it returns the command's path.
func Tool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, fmt.Sprintf("%s not installed (apt-get install %s)", name, pkg))
	}
	return p
}

// Tools is Tool for several commands (command -> Debian package); it names every missing
// one at once.
func Tools(t testing.TB, tools map[string]string) {
	t.Helper()
	var missing []string
	for tool, pkg := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", tool, pkg))
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		Missing(t, "not installed: "+strings.Join(missing, ", "))
	}
}
