package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/pifleet/pifleet/images"
	"gopkg.in/yaml.v3"
)

// StateDirOf finds the state dir a fleet file names (server.state, default
// DefaultState) without validating the rest of it, so that read-only commands can reach
// the running server while the file on disk has errors. A file that is not valid YAML
// is scanned line by line for the state: key under server:.
func StateDirOf(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("fleet file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize))
	if err != nil {
		return "", fmt.Errorf("fleet file %s: %w", path, err)
	}
	dir := stateKey(data)
	if dir == "" {
		dir = DefaultState
	}
	if !filepath.IsAbs(dir) {
		base, err := filepath.Abs(filepath.Dir(path))
		if err != nil {
			return "", fmt.Errorf("fleet file %s: %w", path, err)
		}
		dir = filepath.Join(base, dir)
	}
	return dir, nil
}

var (
	stateLineRE = regexp.MustCompile(`^\s+state:\s*(?:'([^']*)'|"([^"]*)"|([^\s#]+))`)
	stateFlowRE = regexp.MustCompile(`^server:\s*\{.*?[{,]\s*state:\s*(?:'([^']*)'|"([^"]*)"|([^\s,}#]+))`)
)

// stateKey returns server.state as written in data, or "".
func stateKey(data []byte) string {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) == nil {
		if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
			return ""
		}
		root := doc.Content[0]
		for i := 0; i+1 < len(root.Content); i += 2 {
			if root.Content[i].Value != "server" || root.Content[i+1].Kind != yaml.MappingNode {
				continue
			}
			srv := root.Content[i+1]
			for j := 0; j+1 < len(srv.Content); j += 2 {
				if srv.Content[j].Value == "state" && srv.Content[j+1].Kind == yaml.ScalarNode {
					return strings.TrimSpace(srv.Content[j+1].Value)
				}
			}
		}
		return ""
	}
	// Not YAML: the block under a top-level "server:" line.
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, maxConfigSize)
	inServer := false
	for sc.Scan() {
		line := sc.Text()
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			if m := stateFlowRE.FindStringSubmatch(line); m != nil { // server: {state: ...}
				return m[1] + m[2] + m[3]
			}
			inServer = strings.HasPrefix(line, "server:")
			continue
		}
		if m := stateLineRE.FindStringSubmatch(line); inServer && m != nil {
			return m[1] + m[2] + m[3]
		}
	}
	return ""
}

// Layout is the state dir layout this pifleet reads and writes, recorded in <state>/layout.
// Layout 1 (no layout file) kept each image as images/NAME/{root,prep,manifest}; layout 2
// keeps images as stacks of content-addressed layers (package images, README.md).
const Layout = 2

// layoutHeader starts the layout file; the version follows it.
const layoutHeader = "pifleet state layout "

// parseLayout reads the layout file: "pifleet state layout N\n".
func parseLayout(b []byte) (int, error) {
	s := strings.TrimSpace(string(b))
	rest, ok := strings.CutPrefix(s, layoutHeader)
	if !ok || len(b) > 64 {
		return 0, fmt.Errorf("not a layout file (want %q and a number)", layoutHeader)
	}
	v, err := strconv.Atoi(rest)
	if err != nil || v < 1 || strconv.Itoa(v) != rest {
		return 0, fmt.Errorf("layout version %q is not a positive number", rest)
	}
	return v, nil
}

// OpenStore opens the state dir's image store, first bringing a state dir written by an
// older pifleet to the current layout (see UpgradeState). held is the caller's lock on the
// state dir (serve holds one), or nil: the upgrade then takes the lock itself, and only when
// there is something to upgrade.
func OpenStore(stateDir string, held *StateLock, log *slog.Logger) (*images.Store, error) {
	if err := UpgradeState(stateDir, held, log); err != nil {
		return nil, err
	}
	store, err := images.OpenStore(State{Dir: stateDir}.Images())
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	return store, nil
}

// UpgradeState brings the state dir to Layout. A state dir of a newer layout is refused; one
// of layout 1 (images with root/ dirs, no layout file) has its images migrated by renames
// (images.MigrateLayout1: the layer trees are the very dirs the images had, at the same
// positions in each board's stack, so boards' uppers and NFS handles stay valid), which a
// crash interrupts safely and the next start resumes. Boards' uppers, identity layers, NFS
// handle tables, addresses, leases and histories keep their places. The layout file is
// written last.
func UpgradeState(stateDir string, held *StateLock, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	st := State{Dir: stateDir}
	b, err := os.ReadFile(st.LayoutFile())
	switch {
	case err == nil:
		v, err := parseLayout(b)
		if err != nil {
			return fmt.Errorf("state dir %s: %s: %w", stateDir, st.LayoutFile(), err)
		}
		if v > Layout {
			return fmt.Errorf("state dir %s has layout %d, written by a newer pifleet; this one reads layout %d: run the newer pifleet (state dirs are not downgraded)",
				stateDir, v, Layout)
		}
		if v == Layout {
			return nil
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("state dir %s: %w", stateDir, err)
	}
	old, err := images.Layout1Images(st.Images())
	if err != nil {
		return fmt.Errorf("state dir %s: %w", stateDir, err)
	}
	if len(old) > 0 {
		if held == nil {
			lock, err := LockOffline(stateDir)
			if err != nil {
				return fmt.Errorf("state dir %s is in the layout of an older pifleet (images %s) and must be upgraded, which needs it to itself: %w",
					stateDir, strings.Join(old, ", "), err)
			}
			defer lock.Release()
		}
		log.Info("upgrading the state dir to the current layout (renames only)", "dir", stateDir, "from", 1, "to", Layout, "images", strings.Join(old, ","))
		if err := images.MigrateLayout1(st.Images(), log); err != nil {
			return fmt.Errorf("state dir %s: %w (run pifleet again to resume)", stateDir, err)
		}
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := replaceFile(st.LayoutFile(), []byte(fmt.Sprintf("%s%d\n", layoutHeader, Layout)), 0o644); err != nil {
		return fmt.Errorf("state dir %s: layout file: %w", stateDir, err)
	}
	return nil
}
