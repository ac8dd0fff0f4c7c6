package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"
)

// BoardSpec is a board to add to fleet.yaml: what `pifleet board add` and the status
// page's "adopt" know about it. Empty fields are left out of the entry (the board then
// takes defaults.image).
type BoardSpec struct {
	Name   string
	MAC    string
	Serial string
	IP     string
	Image  string
	Group  string
}

// AddBoard appends b to the boards: list of the fleet file at path, keeping the file
// as it is otherwise: comments, layout and the style of the entries (one `- {flow}` line
// or a block of keys, at the indentation the last entry uses). The file's nodes locate
// where the entry goes; the entry's text is spliced in there, so a diff of the file shows
// the new entry only. It refuses a board whose name, MAC, serial or IP is already in the
// fleet, and any result that `pifleet check` would reject (Parse, and the image checks
// against the state dir for the new board). The file is replaced atomically, keeping
// its mode; a running server picks the change up by its reload.
func AddBoard(path string, b BoardSpec) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("fleet file: %w", err)
	}
	// Serialise writers (the CLI, the status page's adopt) on the file's directory.
	unlock, err := lockDir(filepath.Dir(real))
	if err != nil {
		return fmt.Errorf("fleet file %s: %w", path, err)
	}
	defer unlock()
	data, mode, err := readFleetFile(real)
	if err != nil {
		return err
	}
	cur, _, err := Parse(data, path)
	if err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			return fmt.Errorf("%s has %d error(s); fix them first (pifleet check -c %s)", path, ce.Problems.Errors(), path)
		}
		return err
	}
	b, err = normalizeSpec(b)
	if err != nil {
		return err
	}
	if err := refuseDuplicate(cur, b); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	out, err := spliceBoard(data, b)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	next, problems, err := Parse(out, path)
	if err != nil {
		return fmt.Errorf("board %s: the result would not pass pifleet check:\n%s", b.Name, problems.Format(path))
	}
	if !keptBoards(cur, next, b.Name) {
		return fmt.Errorf("%s: cannot add board %s without changing the other entries (unusual layout of boards:); add it by hand", path, b.Name)
	}
	if before, after := CheckImages(cur), CheckImages(next); after.Errors() > before.Errors() {
		return fmt.Errorf("board %s: pifleet check would reject the result:\n%s", b.Name, after.Format(path))
	}
	if err := replaceFile(real, out, mode); err != nil {
		return fmt.Errorf("fleet file %s: %w", path, err)
	}
	if err := syncDir(filepath.Dir(real)); err != nil {
		return fmt.Errorf("fleet file %s: %w", path, err)
	}
	return nil
}

// replaceFile replaces path with data and mode so that a crash leaves the old or the
// new file: a temporary file in the same dir, fsync, rename. The caller fsyncs the dir
// (once for a batch of files) when the rename itself must survive a crash.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	err = tmp.Chmod(mode)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

func readFleetFile(path string) ([]byte, os.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("fleet file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("fleet file: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, 0, fmt.Errorf("fleet file %s: %w", path, err)
	}
	if len(data) > maxConfigSize {
		return nil, 0, fmt.Errorf("fleet file %s: larger than %d bytes", path, maxConfigSize)
	}
	return data, st.Mode().Perm(), nil
}

// lockDir takes an exclusive flock on dir, waiting for another writer.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// normalizeSpec checks b's fields the way fleet.yaml's loader reads them and writes
// them in their canonical form (MAC with colons, serial in lowercase).
func normalizeSpec(b BoardSpec) (BoardSpec, error) {
	b.Name = strings.TrimSpace(b.Name)
	if !hostnameLabel.MatchString(b.Name) {
		return b, fmt.Errorf("board name %q is not a valid hostname (lowercase letters, digits and '-', at most 63)", b.Name)
	}
	if b.MAC != "" {
		mac, err := net.ParseMAC(strings.TrimSpace(b.MAC))
		if err != nil || len(mac) != 6 {
			return b, fmt.Errorf("board %s: mac %q is not a MAC address (six hex pairs like dc:a6:32:01:02:03)", b.Name, b.MAC)
		}
		b.MAC = mac.String()
	}
	if b.Serial != "" {
		s := strings.ToLower(strings.TrimSpace(b.Serial))
		if !serialRE.MatchString(s) {
			hint := "8 hex digits: the last 8 of Serial in /proc/cpuinfo"
			if len(s) == 16 && serialRE.MatchString(s[8:]) {
				hint = "the Pi uses the last 8 hex digits: " + s[8:]
			}
			return b, fmt.Errorf("board %s: serial %q is not a Pi serial (%s)", b.Name, b.Serial, hint)
		}
		b.Serial = s
	}
	if b.MAC == "" && b.Serial == "" {
		return b, fmt.Errorf("board %s: give its mac (and, for a Pi, its serial): pifleet cannot recognise it otherwise", b.Name)
	}
	if b.IP != "" {
		a, err := netip.ParseAddr(strings.TrimSpace(b.IP))
		if err != nil || !a.Is4() {
			return b, fmt.Errorf("board %s: ip %q is not an IPv4 address", b.Name, b.IP)
		}
		b.IP = a.String()
	}
	if b.Image != "" && !validImageName(b.Image) {
		return b, fmt.Errorf("board %s: image name %q is not valid", b.Name, b.Image)
	}
	b.Group = strings.TrimSpace(b.Group)
	return b, nil
}

// refuseDuplicate names the board that already has b's name, MAC, serial or IP.
func refuseDuplicate(cfg *Config, b BoardSpec) error {
	for _, o := range cfg.Boards {
		switch {
		case o.Name == b.Name:
			return fmt.Errorf("board %s is already in the fleet", b.Name)
		case b.MAC != "" && o.MAC != nil && o.MAC.String() == b.MAC:
			return fmt.Errorf("mac %s is already board %s's", b.MAC, o.Name)
		case b.Serial != "" && o.Serial == b.Serial:
			return fmt.Errorf("serial %s is already board %s's", b.Serial, o.Name)
		case b.IP != "" && o.IP.IsValid() && o.IP.String() == b.IP:
			return fmt.Errorf("ip %s is already board %s's", b.IP, o.Name)
		}
	}
	return nil
}

// keptBoards reports whether next holds cur's boards unchanged, in order, and then the
// board named name.
func keptBoards(cur, next *Config, name string) bool {
	if len(next.Boards) != len(cur.Boards)+1 || next.Boards[len(cur.Boards)].Name != name {
		return false
	}
	for i, b := range cur.Boards {
		if !sameBoard(b, next.Boards[i]) {
			return false
		}
	}
	return true
}

// entryNode is b as a YAML mapping, keys in fleet.yaml's usual order; the encoder
// quotes whatever would not read back as the same string.
func entryNode(b BoardSpec, flow bool) *yaml.Node {
	m := &yaml.Node{Kind: yaml.MappingNode}
	if flow {
		m.Style = yaml.FlowStyle
	}
	for _, kv := range [][2]string{{"name", b.Name}, {"mac", b.MAC}, {"serial", b.Serial}, {"ip", b.IP}, {"image", b.Image}, {"group", b.Group}} {
		if kv[1] == "" {
			continue
		}
		m.Content = append(m.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: kv[0]},
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: kv[1]})
	}
	return m
}

func encodeNode(n *yaml.Node) (string, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		return "", err
	}
	if err := enc.Close(); err != nil {
		return "", err
	}
	return buf.String(), nil
}

// spliceBoard returns data with b appended to its boards: list, in the list's style.
func spliceBoard(data []byte, b BoardSpec) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("the file is not a fleet.yaml mapping")
	}
	if doc.Content[0].Style&yaml.FlowStyle != 0 {
		return nil, errors.New("the file is one {...} mapping; add the board by hand")
	}
	eol := "\n"
	if bytes.Contains(data, []byte("\r\n")) {
		eol = "\r\n"
	}
	lines := strings.SplitAfter(string(data), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if n := len(lines); n > 0 && !strings.HasSuffix(lines[n-1], "\n") {
		lines[n-1] += eol
	}
	root := doc.Content[0]
	var key, val, nextKey *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "boards" {
			key, val = root.Content[i], root.Content[i+1]
			if i+2 < len(root.Content) {
				nextKey = root.Content[i+2]
			}
		}
	}
	block := func(dash, keyCol int) (string, error) {
		text, err := encodeNode(entryNode(b, false))
		if err != nil {
			return "", err
		}
		var out strings.Builder
		for i, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
			if i == 0 {
				out.WriteString(strings.Repeat(" ", dash) + "-" + strings.Repeat(" ", max(1, keyCol-dash-1)))
			} else {
				out.WriteString(strings.Repeat(" ", keyCol))
			}
			out.WriteString(l + eol)
		}
		return out.String(), nil
	}
	insert := func(after int, text string) []byte { // after: lines kept before text
		return []byte(strings.Join(lines[:after], "") + text + strings.Join(lines[after:], ""))
	}
	switch {
	case key == nil:
		entry, err := block(2, 4)
		if err != nil {
			return nil, err
		}
		return insert(len(lines), "boards:"+eol+entry), nil
	case val.Kind == yaml.ScalarNode && val.Tag == "!!null",
		val.Kind == yaml.SequenceNode && len(val.Content) == 0:
		// `boards:`, `boards: ~` or `boards: []`: the list starts here, in block style.
		l := lines[key.Line-1]
		k := strings.Index(l, "boards:")
		if k < 0 {
			return nil, errors.New("boards: is written in a way this cannot edit; add the board by hand")
		}
		rest, comment := l[k+len("boards:"):], ""
		if h := strings.Index(rest, "#"); h >= 0 {
			comment = " " + strings.TrimRight(rest[h:], "\r\n")
		}
		lines[key.Line-1] = l[:k] + "boards:" + comment + eol
		entry, err := block(key.Column-1+2, key.Column-1+4)
		if err != nil {
			return nil, err
		}
		return insert(key.Line, entry), nil
	case val.Kind != yaml.SequenceNode:
		return nil, errors.New("boards: is not a list")
	case val.Style&yaml.FlowStyle != 0:
		return nil, errors.New("boards: is written as one [...] list; add the board by hand, or write the list one board per line")
	}
	last := val.Content[len(val.Content)-1]
	// The entry's dash: on the line of its first key, before it.
	l := lines[last.Line-1]
	dash := strings.LastIndex(l[:min(len(l), last.Column-1)], "-")
	if dash < 0 || strings.TrimSpace(l[:dash]) != "" {
		return nil, errors.New("the last board's entry does not start with '- ' on its first line; add the board by hand")
	}
	// The entry ends at its last line with content, or with a comment indented past its
	// dash, before the next top-level key (or the end of the file); other comments and
	// blank lines after it stay after the new entry.
	end := len(lines)
	if nextKey != nil {
		end = nextKey.Line - 1
	}
	after := last.Line
	for i := last.Line; i < end; i++ {
		t := strings.TrimSpace(lines[i])
		indent := len(lines[i]) - len(strings.TrimLeft(lines[i], " "))
		if t != "" && (!strings.HasPrefix(t, "#") || indent > dash) {
			after = i + 1
		}
	}
	var entry string
	if last.Kind == yaml.MappingNode && last.Style&yaml.FlowStyle != 0 {
		text, err := encodeNode(entryNode(b, true))
		if err != nil {
			return nil, err
		}
		entry = l[:last.Column-1] + strings.TrimSuffix(text, "\n") + eol
	} else {
		var err error
		if entry, err = block(dash, last.Column-1); err != nil {
			return nil, err
		}
	}
	return insert(after, entry), nil
}
