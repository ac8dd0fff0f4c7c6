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
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/pifleet/pifleet/overlay"
	"gopkg.in/yaml.v3"
)

// maxConfigSize bounds fleet.yaml: a fleet of thousands of boards is well under it, and
// it keeps a runaway file (or a YAML bomb) from eating the server's memory.
const maxConfigSize = 8 << 20

// The keys each fleet.yaml mapping may hold. Strict: anything else is an error with a
// "did you mean" hint.
var (
	topKeys     = []string{"server", "images", "defaults", "groups", "boards"}
	serverKeys  = []string{"interface", "address", "state", "dhcp", "ports", "http", "commit"}
	dhcpKeys    = []string{"mode", "range", "router", "dns", "lease", "proxy_pxe"}
	portKeys    = []string{"dhcp", "tftp", "nfs", "mount", "http", "portmap"}
	imageKeys   = []string{"path", "base"}
	defaultKeys = []string{"image", "cmdline", "config", "root_squash", "user"}
	groupKeys   = defaultKeys // a group is a second layer of defaults for its boards
	boardKeys   = []string{"name", "mac", "serial", "ip", "image", "hostname", "cmdline", "config", "root_squash", "user", "group"}
	userKeys    = []string{"name", "password_hash", "ssh_keys"}
)

// Load reads and validates the fleet file at path. Relative paths in it (state dir, image
// paths) are taken relative to the file's directory. On any error-level problem it
// returns a *ConfigError listing all of them; warnings come back with a valid config.
func Load(path string) (*Config, Problems, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("fleet file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("fleet file %s: %w", path, err)
	}
	if len(data) > maxConfigSize {
		return nil, nil, fmt.Errorf("fleet file %s: larger than %d bytes", path, maxConfigSize)
	}
	return Parse(data, path)
}

// Parse validates fleet.yaml content; path names it in messages and anchors relative
// paths. See Load.
func Parse(data []byte, path string) (*Config, Problems, error) {
	l := &loader{file: path}
	cfg := l.parse(data)
	ps := l.ps.sorted()
	if ps.Errors() > 0 {
		return nil, ps, &ConfigError{File: path, Problems: ps}
	}
	// Relative paths are relative to fleet.yaml, and made absolute once here so nothing
	// downstream depends on the working directory.
	base, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, ps, fmt.Errorf("fleet file %s: %w", path, err)
	}
	if !filepath.IsAbs(cfg.Server.State) {
		cfg.Server.State = filepath.Join(base, cfg.Server.State)
	}
	for n, im := range cfg.Images {
		if im.Path != "" && !filepath.IsAbs(im.Path) {
			im.Path = filepath.Join(base, im.Path)
			cfg.Images[n] = im
		}
	}
	cfg.Path = path
	return cfg, ps, nil
}

type loader struct {
	file string
	ps   Problems
}

func (l *loader) add(n *yaml.Node, warning bool, hint, format string, args ...any) {
	line, col := 1, 1
	if n != nil {
		line, col = n.Line, n.Column
	}
	l.ps = append(l.ps, Problem{Line: line, Col: col, Msg: fmt.Sprintf(format, args...), Hint: hint, Warning: warning})
}

func (l *loader) errf(n *yaml.Node, hint, format string, args ...any) {
	l.add(n, false, hint, format, args...)
}

func (l *loader) warnf(n *yaml.Node, hint, format string, args ...any) {
	l.add(n, true, hint, format, args...)
}

// mapping checks that n is a mapping whose keys are all in allowed (reporting each
// unknown or repeated key) and returns the value node of each known key.
func (l *loader) mapping(n *yaml.Node, what string, allowed []string) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	if n == nil || isNull(n) {
		return out
	}
	if n.Kind != yaml.MappingNode {
		l.errf(n, "", "%s must be a mapping of key: value lines, not %s", what, kindName(n))
		return out
	}
	keyNodes := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		if !contains(allowed, key) {
			hint := "allowed keys: " + strings.Join(allowed, ", ")
			if c := closest(key, allowed); c != "" {
				hint = fmt.Sprintf("did you mean %q?", c)
			}
			l.errf(k, hint, "unknown key %q in %s", key, what)
			continue
		}
		if prev, dup := keyNodes[key]; dup {
			l.errf(k, "", "key %q repeated in %s (first at line %d)", key, what, prev.Line)
			continue
		}
		keyNodes[key] = k
		out[key] = v
	}
	return out
}

func (l *loader) str(n *yaml.Node, what string) string {
	if n == nil || isNull(n) {
		return ""
	}
	if n.Kind != yaml.ScalarNode {
		l.errf(n, "", "%s must be a single value, not %s", what, kindName(n))
		return ""
	}
	return strings.TrimSpace(n.Value)
}

func (l *loader) boolean(n *yaml.Node, what string) bool {
	if n == nil || isNull(n) {
		return false
	}
	var b bool
	if n.Kind != yaml.ScalarNode || n.Decode(&b) != nil {
		l.errf(n, "write true or false", "%s must be true or false, not %q", what, n.Value)
	}
	return b
}

func (l *loader) port(n *yaml.Node, what string, def int) int {
	if n == nil || isNull(n) {
		return def
	}
	var p int
	if n.Kind != yaml.ScalarNode || n.Decode(&p) != nil || p < 1 || p > 65535 {
		l.errf(n, "a port is a number from 1 to 65535", "%s port %q is not a port number", what, n.Value)
		return def
	}
	return p
}

// lines accepts a list of strings, or a single string (one line), for config.txt extras
// and ssh keys alike.
func (l *loader) lines(n *yaml.Node, what string) []string {
	if n == nil || isNull(n) {
		return nil
	}
	if n.Kind == yaml.ScalarNode {
		return []string{n.Value}
	}
	if n.Kind != yaml.SequenceNode {
		l.errf(n, "", "%s must be a list of lines, not %s", what, kindName(n))
		return nil
	}
	var out []string
	for _, c := range n.Content {
		if c.Kind != yaml.ScalarNode {
			l.errf(c, "", "each entry of %s must be a single line, not %s", what, kindName(c))
			continue
		}
		out = append(out, c.Value)
	}
	return out
}

func (l *loader) addr(n *yaml.Node, what string) netip.Addr {
	s := l.str(n, what)
	if s == "" {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		l.errf(n, "an IPv4 address like 192.168.1.10", "%s %q is not an IPv4 address", what, s)
		return netip.Addr{}
	}
	return a
}

func (l *loader) parse(data []byte) *Config {
	cfg := &Config{Images: map[string]Image{}}
	cfg.Server.State = DefaultState
	cfg.Server.Ports = DefaultPorts()
	cfg.Server.DHCP = DHCPConfig{Mode: DHCPProxy, Lease: DefaultLease}

	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			l.errf(nil, "start from the fleet.yaml in the pifleet repository", "the file is empty")
			return cfg
		}
		line, col, msg := yamlErrorAt(data, err)
		l.ps = append(l.ps, Problem{Line: line, Col: col, Msg: "not valid YAML: " + msg,
			Hint: "check indentation (spaces, not tabs) and quoting"})
		return cfg
	}
	var extra yaml.Node
	if dec.Decode(&extra) == nil {
		l.errf(&extra, "keep one YAML document in fleet.yaml", "a second YAML document (---) is not allowed")
	}
	if len(doc.Content) == 0 {
		l.errf(&doc, "", "the file is empty")
		return cfg
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		l.errf(root, "the top level has the keys server, images, defaults, groups, boards", "fleet.yaml must be a mapping, not %s", kindName(root))
		return cfg
	}
	top := l.mapping(root, "the top level", topKeys)
	l.server(top["server"], &cfg.Server)
	l.images(top["images"], cfg)
	def := l.defaults(top["defaults"], cfg)
	groups := l.groups(top["groups"], cfg, def)
	l.boards(top["boards"], cfg, def, groups)
	l.validate(cfg, top)
	return cfg
}

func (l *loader) server(n *yaml.Node, s *ServerConfig) {
	m := l.mapping(n, "server", serverKeys)
	s.Interface = l.str(m["interface"], "server.interface")
	if v := l.str(m["address"], "server.address"); v != "" {
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is4() {
			l.errf(m["address"], "the server's IPv4 address with its prefix length, like 192.168.1.10/24",
				"server.address %q is not an address with a prefix", v)
		} else {
			s.Address = p
		}
	}
	if v := l.str(m["state"], "server.state"); v != "" {
		s.State = v
	}
	d := l.mapping(m["dhcp"], "server.dhcp", dhcpKeys)
	if v := l.str(d["mode"], "server.dhcp.mode"); v != "" {
		switch v {
		case DHCPProxy, DHCPFull, DHCPOff:
			s.DHCP.Mode = v
		default:
			l.errf(d["mode"], "proxy (beside the LAN's router), full (closed lab network) or off",
				"server.dhcp.mode %q is not a DHCP mode", v)
		}
	}
	if v := l.str(d["range"], "server.dhcp.range"); v != "" {
		a, b, ok := strings.Cut(v, "-")
		start, err1 := netip.ParseAddr(strings.TrimSpace(a))
		end, err2 := netip.ParseAddr(strings.TrimSpace(b))
		switch {
		case !ok || err1 != nil || err2 != nil || !start.Is4() || !end.Is4():
			l.errf(d["range"], "first-last, like 192.168.1.200-192.168.1.250", "server.dhcp.range %q is not an address range", v)
		case end.Less(start):
			l.errf(d["range"], "write the lower address first", "server.dhcp.range %q ends before it starts", v)
		default:
			s.DHCP.PoolStart, s.DHCP.PoolEnd = start, end
		}
	}
	s.DHCP.Router = l.addr(d["router"], "server.dhcp.router")
	if dn := d["dns"]; dn != nil && !isNull(dn) {
		for _, line := range l.lines(dn, "server.dhcp.dns") {
			a, err := netip.ParseAddr(strings.TrimSpace(line))
			if err != nil || !a.Is4() {
				l.errf(dn, "a list of IPv4 addresses", "server.dhcp.dns entry %q is not an IPv4 address", line)
				continue
			}
			s.DHCP.DNS = append(s.DHCP.DNS, a)
		}
	}
	if v := l.str(d["lease"], "server.dhcp.lease"); v != "" {
		dur, err := time.ParseDuration(v)
		if err != nil || dur < time.Minute {
			l.errf(d["lease"], "a duration of a minute or more, like 12h or 30m", "server.dhcp.lease %q is not a lease time", v)
		} else {
			s.DHCP.Lease = dur
		}
	}
	s.DHCP.ProxyPXE = l.boolean(d["proxy_pxe"], "server.dhcp.proxy_pxe")
	p := l.mapping(m["ports"], "server.ports", portKeys)
	s.Ports.DHCP = l.port(p["dhcp"], "dhcp", s.Ports.DHCP)
	s.Ports.TFTP = l.port(p["tftp"], "tftp", s.Ports.TFTP)
	s.Ports.NFS = l.port(p["nfs"], "nfs", s.Ports.NFS)
	s.Ports.Mount = l.port(p["mount"], "mount", s.Ports.Mount)
	s.Ports.HTTP = l.port(p["http"], "http", s.Ports.HTTP)
	if n := p["portmap"]; n != nil && n.Kind == yaml.ScalarNode && n.Value == "0" {
		s.Ports.Portmap = 0 // not served (the system's rpcbind may own 111)
	} else {
		s.Ports.Portmap = l.port(n, "portmap", s.Ports.Portmap)
	}
	if s.Ports.Portmap != DefaultPorts().Portmap {
		where := fmt.Sprintf("on port %d", s.Ports.Portmap)
		if s.Ports.Portmap == 0 {
			where = "off"
		}
		l.warnf(p["portmap"], "keep 111 unless another portmapper owns it; boards with an initramfs (Debian, Raspberry Pi OS, Ubuntu) need it",
			"portmapper %s: clients look for it on 111 only, so cmdline.txt carries port=/mountport=, which klibc nfsmount (initramfs-tools) rejects", where)
	}
	l.portClashes(p, s.Ports)
	s.HTTP = l.httpListen(m["http"], s.Ports.HTTP)
	c := l.mapping(m["commit"], "server.commit", []string{"exclude"})
	s.CommitExclude = l.commitExclude(c["exclude"])
}

// commitExclude parses server.commit.exclude: a list of absolute path patterns.
func (l *loader) commitExclude(n *yaml.Node) []string {
	if n == nil || isNull(n) {
		return nil
	}
	hint := "absolute paths, * ? [..] wildcards per component, like /var/lib/myapp/cache or /home/*/.cache"
	if n.Kind != yaml.SequenceNode {
		l.errf(n, hint, "server.commit.exclude must be a list of paths, not %s", kindName(n))
		return nil
	}
	var out []string
	for _, c := range n.Content {
		if c.Kind != yaml.ScalarNode {
			l.errf(c, hint, "each entry of server.commit.exclude must be a path, not %s", kindName(c))
			continue
		}
		if err := overlay.CheckExclude(c.Value); err != nil {
			l.errf(c, hint, "server.commit.exclude: %v", err)
			continue
		}
		out = append(out, c.Value)
	}
	return out
}

// httpListen parses server.http: the addresses the HTTP API listens on, each an IP
// (port: server.ports.http) or IP:port.
func (l *loader) httpListen(n *yaml.Node, port int) []netip.AddrPort {
	if n == nil || isNull(n) {
		return nil
	}
	const hint = "addresses like 127.0.0.1 or 192.168.1.10:8080 (port default: server.ports.http)"
	var nodes []*yaml.Node
	switch n.Kind {
	case yaml.ScalarNode:
		nodes = []*yaml.Node{n}
	case yaml.SequenceNode:
		nodes = n.Content
		if len(nodes) == 0 {
			l.errf(n, hint+"; leave server.http out for the default (loopback and server.address)", "server.http is an empty list: the HTTP API would listen nowhere")
		}
	default:
		l.errf(n, hint, "server.http must be a list of addresses, not %s", kindName(n))
		return nil
	}
	var out []netip.AddrPort
	for _, c := range nodes {
		v := l.str(c, "server.http entry")
		if v == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(v)
		if err != nil {
			a, aerr := netip.ParseAddr(strings.Trim(v, "[]"))
			if aerr != nil || a.Zone() != "" {
				l.errf(c, hint, "server.http entry %q is not an address or address:port", v)
				continue
			}
			ap = netip.AddrPortFrom(a, uint16(port))
		} else if ap.Port() == 0 {
			l.errf(c, hint, "server.http entry %q has port 0", v)
			continue
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if slices.Contains(out, ap) {
			l.errf(c, "list each address once", "server.http lists %s twice", ap)
			continue
		}
		out = append(out, ap)
	}
	return out
}

// portClashes reports two services of the same transport on one port. DHCP and TFTP
// are UDP; NFS, MOUNT and HTTP are TCP (pifleet serves NFS over TCP only); the
// portmapper is both.
func (l *loader) portClashes(nodes map[string]*yaml.Node, p Ports) {
	groups := [][]struct {
		name string
		port int
	}{
		{{"dhcp", p.DHCP}, {"tftp", p.TFTP}, {"portmap", p.Portmap}},
		{{"nfs", p.NFS}, {"mount", p.Mount}, {"http", p.HTTP}, {"portmap", p.Portmap}},
	}
	for _, g := range groups {
		for i := range g {
			for j := i + 1; j < len(g); j++ {
				if g[i].port == g[j].port && g[i].port != 0 { // 0: the portmapper is off
					n := nodes[g[j].name]
					if n == nil {
						n = nodes[g[i].name]
					}
					l.errf(n, "give each service its own port", "ports %s and %s are both %d", g[i].name, g[j].name, g[i].port)
				}
			}
		}
	}
}

func (l *loader) images(n *yaml.Node, cfg *Config) {
	if n == nil || isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		l.errf(n, "images: maps a name to {} (imported into the state dir) or {path: /some/root}", "images must be a mapping, not %s", kindName(n))
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name := k.Value
		if !validImageName(name) {
			l.errf(k, "letters, digits, '.', '_' and '-', starting with a letter or digit", "image name %q is not valid", name)
			continue
		}
		if _, dup := cfg.Images[name]; dup {
			l.errf(k, "", "image %q is listed twice", name)
			continue
		}
		m := l.mapping(v, "image "+name, imageKeys)
		im := Image{Name: name, Path: l.str(m["path"], "images."+name+".path"), Line: k.Line, Col: k.Column,
			Base: l.str(m["base"], "images."+name+".base"), BaseLine: k.Line, BaseCol: k.Column}
		if b := m["base"]; b != nil {
			im.BaseLine, im.BaseCol = b.Line, b.Column
			switch {
			case im.Base == "":
			case im.Path != "":
				l.errf(b, "an image is either a root tree (path:) or a store image stacked on a base (base:)", "image %s has both path and base", name)
				im.Base = ""
			case !validImageName(im.Base):
				l.errf(b, "letters, digits, '.', '_' and '-', starting with a letter or digit", "image %s: base %q is not a valid image name", name, im.Base)
				im.Base = ""
			case im.Base == name:
				l.errf(b, "", "image %s cannot be its own base", name)
				im.Base = ""
			}
		}
		cfg.Images[name] = im
	}
}

// boardDefaults are the settings a board takes unless it sets its own: fleet.yaml's
// defaults, or its group's (which start from the defaults).
type boardDefaults struct {
	image, cmdline string
	config         []string
	rootSquash     bool
	user           *User
}

func (l *loader) defaults(n *yaml.Node, cfg *Config) boardDefaults {
	return l.settings(n, "defaults", defaultKeys, boardDefaults{}, cfg)
}

// settings parses a defaults-like mapping (defaults:, or one group of groups:) over
// inherited: image, root_squash and user replace, cmdline and config append (as a
// board's own do).
func (l *loader) settings(n *yaml.Node, what string, keys []string, inherited boardDefaults, cfg *Config) boardDefaults {
	return l.settingsOf(l.mapping(n, what, keys), what, inherited, cfg)
}

// settingsOf is settings for a mapping already checked (a board's).
func (l *loader) settingsOf(m map[string]*yaml.Node, what string, inherited boardDefaults, cfg *Config) boardDefaults {
	d := inherited
	d.config = append([]string(nil), inherited.config...)
	if v := l.str(m["image"], what+".image"); v != "" {
		d.image = v
		l.knownImage(m["image"], v, cfg)
	}
	if c := l.str(m["cmdline"], what+".cmdline"); c != "" {
		l.cmdlineWarnings(m["cmdline"], c)
		d.cmdline = strings.TrimSpace(d.cmdline + " " + c)
	}
	d.config = append(d.config, l.lines(m["config"], what+".config")...)
	if v, ok := m["root_squash"]; ok {
		d.rootSquash = l.boolean(v, what+".root_squash")
	}
	if u := l.user(m["user"], what+".user"); u != nil {
		d.user = u
	}
	return d
}

// groupSettings are fleet.yaml's groups: each group's settings (over the defaults), and
// whether the section is there at all: then a board's group must be one of them.
type groupSettings struct {
	declared bool
	byName   map[string]boardDefaults
}

// groups parses the top-level groups: mapping, name -> settings like defaults'. A
// group changes all its boards in one line (`groups: {lab: {image: v3}}`).
func (l *loader) groups(n *yaml.Node, cfg *Config, def boardDefaults) groupSettings {
	g := groupSettings{byName: map[string]boardDefaults{}}
	if n == nil || isNull(n) {
		return g
	}
	g.declared = true
	if n.Kind != yaml.MappingNode {
		l.errf(n, "groups: maps a group name to its settings, like lab: {image: v3}", "groups must be a mapping, not %s", kindName(n))
		return g
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name := strings.TrimSpace(k.Value)
		if name == "" {
			l.errf(k, "", "a group needs a name")
			continue
		}
		if _, dup := g.byName[name]; dup {
			l.errf(k, "", "group %q is listed twice", name)
			continue
		}
		g.byName[name] = l.settings(v, "group "+name, groupKeys, def, cfg)
	}
	return g
}

func (l *loader) user(n *yaml.Node, what string) *User {
	if n == nil || isNull(n) {
		return nil
	}
	m := l.mapping(n, what, userKeys)
	u := &User{
		Name:           l.str(m["name"], what+".name"),
		PasswordHash:   l.str(m["password_hash"], what+".password_hash"),
		AuthorizedKeys: l.lines(m["ssh_keys"], what+".ssh_keys"),
	}
	if u.Name == "" {
		l.errf(n, "add name: pi (or another user name)", "%s has no name", what)
	} else if !userNameRE.MatchString(u.Name) {
		l.errf(m["name"], "lowercase letters, digits and '-', starting with a letter, at most 32 (what Raspberry Pi OS's userconf accepts)", "%s.name %q is not a valid user name", what, u.Name)
	}
	if u.PasswordHash != "" && !strings.HasPrefix(u.PasswordHash, "$") {
		l.errf(m["password_hash"], "a crypt(3) hash such as the output of `openssl passwd -6`", "%s.password_hash is not a password hash (never put a plain password here)", what)
	}
	return u
}

func (l *loader) knownImage(n *yaml.Node, name string, cfg *Config) {
	if _, ok := cfg.Images[name]; ok {
		return
	}
	names := make([]string, 0, len(cfg.Images))
	for k := range cfg.Images {
		names = append(names, k)
	}
	hint := "add it under images:"
	if c := closest(name, names); c != "" {
		hint = fmt.Sprintf("did you mean %q?", c)
	}
	l.errf(n, hint, "unknown image %q", name)
}

func (l *loader) cmdlineWarnings(n *yaml.Node, cmdline string) {
	for _, f := range strings.Fields(cmdline) {
		k, _, _ := strings.Cut(f, "=")
		switch k {
		case "root", "nfsroot", "ip":
			l.warnf(n, "pifleet generates root=/dev/nfs nfsroot=... ip=dhcp; remove it unless you mean to override", "cmdline sets %s", f)
		}
	}
}

func (l *loader) boards(n *yaml.Node, cfg *Config, def boardDefaults, groups groupSettings) {
	if n == nil || isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		l.errf(n, "boards is a list: each board starts with '- name: ...'", "boards must be a list, not %s", kindName(n))
		return
	}
	for i, bn := range n.Content {
		what := fmt.Sprintf("board #%d", i+1)
		if name := l.subNodes(bn)["name"]; name != nil && name.Kind == yaml.ScalarNode && name.Value != "" {
			what = "board " + name.Value
		}
		m := l.mapping(bn, what, boardKeys)
		b := Board{Name: l.str(m["name"], what+".name")}
		b.Hostname = l.str(m["hostname"], what+".hostname")
		b.Group = l.str(m["group"], what+".group")
		// Precedence: the board's own keys, then its group's, then the defaults.
		base := def
		if gd, ok := groups.byName[b.Group]; ok {
			base = gd
		} else if b.Group != "" && groups.declared {
			names := make([]string, 0, len(groups.byName))
			for k := range groups.byName {
				names = append(names, k)
			}
			slices.Sort(names)
			hint := "add it under groups: (known: " + strings.Join(names, ", ") + ")"
			if c := closest(b.Group, names); c != "" {
				hint = fmt.Sprintf("did you mean %q?", c)
			}
			l.errf(m["group"], hint, "%s: unknown group %q", what, b.Group)
		}
		own := l.settingsOf(m, what, base, cfg)
		b.Image, b.Cmdline, b.Config, b.RootSquash, b.User = own.image, own.cmdline, own.config, own.rootSquash, own.user
		l.board(bn, m, &b, what)
		cfg.Boards = append(cfg.Boards, b)
	}
}

var (
	hostnameLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	serialRE      = regexp.MustCompile(`^[0-9a-f]{8}$`)
	imageNameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	userNameRE    = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`) // what Pi OS's userconf accepts
	yamlLineRE    = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
)

func validHostname(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !hostnameLabel.MatchString(label) {
			return false
		}
	}
	return true
}

func validImageName(s string) bool {
	return imageNameRE.MatchString(s)
}

// board parses and checks the fields of one board that need more than a type check.
func (l *loader) board(bn *yaml.Node, m map[string]*yaml.Node, b *Board, what string) {
	switch {
	case b.Name == "":
		l.errf(bn, "add name: pi-01 (it becomes the hostname and the NFS export)", "%s has no name", what)
	case !hostnameLabel.MatchString(b.Name):
		l.errf(m["name"], "lowercase letters, digits and '-', at most 63, not starting or ending with '-'",
			"board name %q is not a valid hostname", b.Name)
	}
	if b.Hostname == "" {
		b.Hostname = b.Name
	} else if !validHostname(b.Hostname) {
		l.errf(m["hostname"], "lowercase letters, digits, '-' and '.'", "%s: hostname %q is not a valid hostname", what, b.Hostname)
	}
	if v := l.str(m["mac"], what+".mac"); v != "" {
		mac, err := net.ParseMAC(v)
		if err != nil || len(mac) != 6 {
			l.errf(m["mac"], "six hex pairs like dc:a6:32:01:02:03", "%s: mac %q is not a MAC address", what, v)
		} else {
			b.MAC = mac
		}
	}
	if n := m["serial"]; n != nil && !isNull(n) {
		// A serial like 0123abcd reads as a number or string depending on quoting; take
		// the text as written.
		v := strings.ToLower(strings.TrimSpace(n.Value))
		if n.Kind != yaml.ScalarNode || !serialRE.MatchString(v) {
			hint := "8 hex digits: the last 8 of `Serial` in /proc/cpuinfo, e.g. 9ffefdef"
			if n.Kind == yaml.ScalarNode && len(v) == 16 && serialRE.MatchString(v[8:]) {
				hint = fmt.Sprintf("the Pi uses the last 8 hex digits: %s", v[8:])
			}
			l.errf(n, hint, "%s: serial %q is not a Pi serial", what, n.Value)
		} else {
			b.Serial = v
		}
	}
	b.IP = l.addr(m["ip"], what+".ip")
	if m["mac"] == nil && m["serial"] == nil {
		l.errf(bn, "add mac: (every board) and, for a Pi, serial:", "%s has neither mac nor serial, so pifleet cannot recognise it", what)
	}
	if b.Image == "" {
		l.errf(bn, "add image: to the board, or set its group's image or defaults.image", "%s has no image", what)
	}
}

// validate runs the checks that look across entries: duplicates, addresses against the
// subnet and the pool, and mode-specific advice.
func (l *loader) validate(cfg *Config, top map[string]*yaml.Node) {
	s := cfg.Server
	serverNodes := l.subNodes(top["server"])
	dhcpNodes := l.subNodes(serverNodes["dhcp"])
	if s.DHCP.Mode == DHCPFull && !s.Address.IsValid() {
		l.errf(top["server"], "full DHCP needs to know the subnet: set server.address like 10.0.0.1/24", "server.dhcp.mode is full but server.address is not set")
	}
	if s.DHCP.PoolStart.IsValid() && s.Address.IsValid() {
		if !s.Address.Contains(s.DHCP.PoolStart) || !s.Address.Contains(s.DHCP.PoolEnd) {
			l.errf(dhcpNodes["range"], "keep the range inside "+s.Address.Masked().String(), "server.dhcp.range is outside the server's subnet")
		}
		if s.DHCP.InPool(s.Address.Addr()) {
			l.errf(dhcpNodes["range"], "exclude the server's own address from the range", "server.dhcp.range contains the server's address %s", s.Address.Addr())
		}
	}
	if s.DHCP.ProxyPXE && s.DHCP.Mode != DHCPProxy {
		l.warnf(dhcpNodes["proxy_pxe"], "full mode always answers U-Boot/PXE boards", "server.dhcp.proxy_pxe is ignored in %s mode", s.DHCP.Mode)
	}
	if s.DHCP.PoolStart.IsValid() && s.DHCP.Mode != DHCPFull {
		l.warnf(dhcpNodes["range"], "only full mode hands out addresses", "server.dhcp.range is ignored in %s mode", s.DHCP.Mode)
	}
	if s.DHCP.Router.IsValid() && s.Address.IsValid() && !s.Address.Contains(s.DHCP.Router) {
		l.errf(dhcpNodes["router"], "the router must be on the boards' subnet "+s.Address.Masked().String(), "server.dhcp.router %s is outside the server's subnet", s.DHCP.Router)
	}

	boardNodes := []*yaml.Node{}
	if bn := top["boards"]; bn != nil && bn.Kind == yaml.SequenceNode {
		boardNodes = bn.Content
	}
	type seen struct {
		board string
		line  int
	}
	names, macs, serials, ips := map[string]seen{}, map[string]seen{}, map[string]seen{}, map[string]seen{}
	dup := func(table map[string]seen, key, field string, n *yaml.Node, b *Board) {
		if key == "" || n == nil {
			return
		}
		if prev, ok := table[key]; ok {
			l.errf(n, fmt.Sprintf("already used by board %s at line %d; each board needs its own", prev.board, prev.line), "duplicate %s %s", field, key)
			return
		}
		table[key] = seen{b.Name, n.Line}
	}
	for i := range cfg.Boards {
		b := &cfg.Boards[i]
		var bn *yaml.Node
		if i < len(boardNodes) {
			bn = boardNodes[i]
		}
		fields := l.subNodes(bn)
		dup(names, b.Name, "board name", fields["name"], b)
		if b.MAC != nil {
			dup(macs, b.MAC.String(), "mac", fields["mac"], b)
		}
		dup(serials, b.Serial, "serial", fields["serial"], b)
		if b.IP.IsValid() {
			dup(ips, b.IP.String(), "ip", fields["ip"], b)
			switch {
			case s.Address.IsValid() && !s.Address.Contains(b.IP):
				l.errf(fields["ip"], "use an address in "+s.Address.Masked().String()+" or fix server.address", "board %s: ip %s is outside the server's subnet", b.Name, b.IP)
			case s.Address.IsValid() && b.IP == s.Address.Addr():
				l.errf(fields["ip"], "the server has that address", "board %s: ip %s is the server's own address", b.Name, b.IP)
			case s.DHCP.InPool(b.IP):
				l.errf(fields["ip"], "move the board's fixed address out of server.dhcp.range", "board %s: ip %s is inside the dynamic range", b.Name, b.IP)
			}
		} else if s.DHCP.Mode == DHCPFull && !s.DHCP.PoolStart.IsValid() {
			l.errf(bn, "give the board an ip: or configure server.dhcp.range", "board %s has no ip and full DHCP has no range to lease from", b.Name)
		}
		if b.Serial == "" && s.DHCP.Mode == DHCPProxy && bn != nil {
			l.warnf(bn, "U-Boot does not merge proxy DHCP offers: use server.dhcp.mode full, or point the router's next-server at pifleet",
				"board %s has no serial, so it boots as a U-Boot/PXE board, which proxy DHCP cannot serve", b.Name)
		}
	}
}

func (l *loader) subNodes(n *yaml.Node) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	if n == nil || n.Kind != yaml.MappingNode {
		return out
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if _, ok := out[n.Content[i].Value]; !ok {
			out[n.Content[i].Value] = n.Content[i+1]
		}
	}
	return out
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	default:
		return fmt.Sprintf("the value %q", n.Value)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// maxYAMLScan bounds the bytes yamlErrorAt parses (all prefixes together) to find a
// syntax error's line: a few hundred board lines are scanned in full, a huge file only
// near the line yaml.v3 names.
const maxYAMLScan = 64 << 20

// yamlErrorAt finds where a YAML syntax error is. yaml.v3 names the line where the
// enclosing block starts ("line 3: did not find expected key" for a board entry
// mis-indented on line 6, line 3 being "boards:"); the admin needs the line that broke
// it. That is the first line whose prefix of the file fails to parse with the same
// complaint: every line before it parsed as part of the block. A prefix that fails
// differently (a flow list cut in the middle) is not it. The column is the offending
// line's indentation, the usual culprit.
func yamlErrorAt(data []byte, err error) (line, col int, msg string) {
	line, col, msg = 1, 1, strings.TrimPrefix(err.Error(), "yaml: ")
	m := yamlLineRE.FindStringSubmatch(err.Error())
	if m == nil {
		return line, col, msg
	}
	fmt.Sscan(m[1], &line)
	msg = m[2]
	lines := bytes.SplitAfter(data, []byte("\n"))
	at, scanned := line, 0
	for n := line; n <= len(lines) && scanned < maxYAMLScan; n++ {
		prefix := bytes.Join(lines[:n], nil)
		scanned += len(prefix)
		var doc yaml.Node
		perr := yaml.Unmarshal(prefix, &doc)
		if perr == nil {
			continue
		}
		if pm := yamlLineRE.FindStringSubmatch(perr.Error()); pm != nil && pm[2] == msg {
			at = n
			break
		}
	}
	if at != line {
		msg += fmt.Sprintf(" (in the block that starts at line %d)", line)
	}
	if at <= len(lines) {
		col = len(lines[at-1]) - len(bytes.TrimLeft(lines[at-1], " ")) + 1
	}
	return at, col, msg
}
