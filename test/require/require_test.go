package require

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestHelperMissingTool is run as a child process by TestStrict: it needs a command that
// does not exist.
func TestHelperMissingTool(t *testing.T) {
	if os.Getenv("PIFLEET_REQUIRE_CHILD") != "1" {
		return
	}
	Tool(t, "pifleet-no-such-tool", "no-such-package")
	t.Log("reached after the missing tool")
}

// TestStrict: a missing tool skips the test normally and fails it under PIFLEET_STRICT=1.
func TestStrict(t *testing.T) {
	for _, tc := range []struct {
		strict   string
		wantFail bool
		want     string
	}{
		{"", false, "--- SKIP: TestHelperMissingTool"},
		{"0", false, "--- SKIP: TestHelperMissingTool"},
		{"1", true, "--- FAIL: TestHelperMissingTool"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMissingTool$", "-test.v")
		cmd.Env = append(os.Environ(), "PIFLEET_REQUIRE_CHILD=1", StrictEnv+"="+tc.strict)
		out, err := cmd.CombinedOutput()
		if (err != nil) != tc.wantFail {
			t.Errorf("%s=%q: exit error %v, want failure %v\n%s", StrictEnv, tc.strict, err, tc.wantFail, out)
		}
		if !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "pifleet-no-such-tool not installed (apt-get install no-such-package)") {
			t.Errorf("%s=%q: output lacks %q and the reason:\n%s", StrictEnv, tc.strict, tc.want, out)
		}
		if strings.Contains(string(out), "reached after the missing tool") {
			t.Errorf("%s=%q: the test went on after the missing tool:\n%s", StrictEnv, tc.strict, out)
		}
	}
}

// directSkip matches a test skipping itself; skips for a missing tool or privilege go
// through this package instead, so that PIFLEET_STRICT=1 turns them into failures.
var directSkip = regexp.MustCompile(`\.Skip(f|Now)?\(`)

// TestNoDirectSkips: no test in the module calls t.Skip itself, except a test binary's
// re-run of itself as a helper process (whose skip message starts "helper process").
func TestNoDirectSkips(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	self := filepath.Join(root, "test", "require")
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (path == self || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if directSkip.MatchString(line) && !strings.Contains(line, `Skip("helper process`) {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("%s:%d: %s\n\tuse test/require (Root, Tool, Missing): a missing dependency must fail under %s=1",
					rel, i+1, strings.TrimSpace(line), StrictEnv)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
