package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/test/require"
)

// buildPifleet builds this command into a temp dir (the way the Makefile does, static)
// and returns the binary's path.
func buildPifleet(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pifleet")
	cmd := exec.Command("go", "build", "-buildvcs=false", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestBashCompletion sources `pifleet completion bash` in bash and completes as bash
// would on TAB: commands, subcommands, flags, flag values and board names read from the
// fleet file that -c names.
func TestBashCompletion(t *testing.T) {
	bash := require.Tool(t, "bash", "bash")
	bin := buildPifleet(t)
	dir := t.TempDir()
	fleet := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(fleet, []byte("server: {state: st, ports: {http: 1}}\nimages: {img: {path: root}}\ndefaults: {image: img}\n"+
		"boards:\n  - {name: rack1-a, serial: '12345678'}\n  - {name: rack1-b, serial: '12345679'}\n  - {name: lab, serial: '1234567a'}\n"), 0o644)
	os.MkdirAll(filepath.Join(dir, "root", "etc"), 0o755)
	script := `set -u
source <(pifleet completion bash)
t() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); COMPREPLY=(); _pifleet; echo "$*|${COMPREPLY[*]}"; }
t pifleet bo
t pifleet ""
t pifleet image ""
t pifleet board reset --f
t pifleet serve --log-level w
t pifleet board reset -c ` + fleet + ` rack
t pifleet board diff --config ` + fleet + ` --stat ""
t pifleet check -c ` + filepath.Join(dir, "fle") + `
complete -p pifleet
`
	cmd := exec.Command(bash, "-c", script)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	want := []string{
		"pifleet bo|board\n",
		"pifleet |board check completion image serve version\n",
		"pifleet image |demo import ls rm shell verify\n",
		"pifleet board reset --f|--force\n",
		"pifleet serve --log-level w|warn\n",
		"pifleet board reset -c " + fleet + " rack|rack1-a rack1-b\n",
		"pifleet board diff --config " + fleet + " --stat |rack1-a rack1-b lab\n",
		"pifleet check -c " + filepath.Join(dir, "fle") + "|" + fleet + "\n",
		"complete -o default -F _pifleet pifleet\n",
	}
	for _, w := range want {
		if !strings.Contains(string(out), w) {
			t.Errorf("completion lacks %q; got:\n%s", w, out)
		}
	}
}
