package server

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

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
