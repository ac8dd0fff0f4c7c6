package server

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const goodFleet = `
server:
  interface: eth0
  address: 10.0.0.1/24
  state: /srv/pifleet
  dhcp:
    mode: full
    range: 10.0.0.200-10.0.0.250
    router: 10.0.0.254
    dns: [10.0.0.254, 1.1.1.1]
    lease: 1h
  ports: {tftp: 69, nfs: 2049, mount: 20048, http: 8080}
images:
  bookworm: {}
  custom: {path: roots/custom}
defaults:
  image: bookworm
  cmdline: console=serial0,115200
  config: [enable_uart=1]
boards:
  - name: pi-01
    mac: DC:A6:32:01:02:03
    serial: 9FFEFDEF
    ip: 10.0.0.11
  - name: pi-02
    mac: dc-a6-32-01-02-04
    ip: 10.0.0.12
    image: custom
    cmdline: quiet
    config: dtoverlay=disable-bt
    root_squash: true
    group: rack-a
    user: {name: pi, password_hash: "$6$abc$def", ssh_keys: ["ssh-ed25519 AAAA pi@x"]}
`

func TestParseGood(t *testing.T) {
	cfg, ps, err := Parse([]byte(goodFleet), "/etc/pifleet/fleet.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(ps) != 0 {
		t.Fatalf("unexpected problems:\n%s", ps.Format("fleet.yaml"))
	}
	if cfg.Server.Address != netip.MustParsePrefix("10.0.0.1/24") || cfg.Server.DHCP.Mode != DHCPFull {
		t.Errorf("server = %+v", cfg.Server)
	}
	if !cfg.Server.DHCP.InPool(netip.MustParseAddr("10.0.0.222")) || cfg.Server.DHCP.InPool(netip.MustParseAddr("10.0.0.12")) {
		t.Errorf("pool = %v-%v", cfg.Server.DHCP.PoolStart, cfg.Server.DHCP.PoolEnd)
	}
	if got := cfg.Images["custom"].Path; got != "/etc/pifleet/roots/custom" {
		t.Errorf("relative image path resolved to %q", got)
	}
	if len(cfg.Boards) != 2 {
		t.Fatalf("boards = %d", len(cfg.Boards))
	}
	b1, b2 := cfg.Boards[0], cfg.Boards[1]
	if b1.MAC.String() != "dc:a6:32:01:02:03" || b1.Serial != "9ffefdef" || b1.Hostname != "pi-01" || b1.Image != "bookworm" {
		t.Errorf("board 1 = %+v", b1)
	}
	if b2.Image != "custom" || b2.Cmdline != "console=serial0,115200 quiet" || !b2.RootSquash || b2.Group != "rack-a" {
		t.Errorf("board 2 = %+v", b2)
	}
	if strings.Join(b2.Config, "|") != "enable_uart=1|dtoverlay=disable-bt" {
		t.Errorf("board 2 config = %q", b2.Config)
	}
	if b2.User == nil || b2.User.Name != "pi" || len(b2.User.AuthorizedKeys) != 1 {
		t.Errorf("board 2 user = %+v", b2.User)
	}
}

// TestParseProblems feeds one broken fleet per kind of mistake and expects the message
// at the exact line:column.
func TestParseProblems(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string // "line:col: substring"
	}{
		{"unknown key with hint", "server:\n  adress: 10.0.0.1/24\n", []string{`2:3: unknown key "adress" in server (hint: did you mean "address"?)`}},
		{"unknown top key", "board:\n  - name: x\n", []string{`1:1: unknown key "board" in the top level (hint: did you mean "boards"?)`}},
		{"unknown board key", "images: {i: {}}\nboards:\n  - name: a\n    mac: dc:a6:32:01:02:03\n    image: i\n    seriall: 12345678\n", []string{`6:5: unknown key "seriall" in board a (hint: did you mean "serial"?)`}},
		{"bad mac", "images: {i: {}}\nboards:\n  - name: a\n    mac: dc:a6:32:zz:02:03\n    image: i\n", []string{`4:10: board a: mac "dc:a6:32:zz:02:03" is not a MAC address (hint: six hex pairs`}},
		{"bad serial", "images: {i: {}}\nboards:\n  - name: a\n    serial: 10000000abcd1234\n    image: i\n", []string{`4:13: board a: serial "10000000abcd1234" is not a Pi serial (hint: the Pi uses the last 8 hex digits: abcd1234)`}},
		{"bad ip", "images: {i: {}}\nboards:\n  - name: a\n    mac: dc:a6:32:01:02:03\n    ip: 10.0.0.300\n    image: i\n", []string{`5:9: board a.ip "10.0.0.300" is not an IPv4 address`}},
		{"dup name", "images: {i: {}}\ndefaults: {image: i}\nboards:\n  - {name: a, mac: 'dc:a6:32:01:02:03'}\n  - {name: a, mac: 'dc:a6:32:01:02:04'}\n", []string{`5:12: duplicate board name a (hint: already used by board a at line 4`}},
		{"dup mac", "images: {i: {}}\ndefaults: {image: i}\nboards:\n  - name: a\n    mac: dc:a6:32:01:02:03\n  - name: b\n    mac: DC:A6:32:01:02:03\n", []string{`7:10: duplicate mac dc:a6:32:01:02:03 (hint: already used by board a at line 5`}},
		{"dup serial", "images: {i: {}}\ndefaults: {image: i}\nboards:\n  - {name: a, serial: '12345678'}\n  - {name: b, serial: '12345678'}\n", []string{`5:23: duplicate serial 12345678`}},
		{"dup ip", "server: {address: 10.0.0.1/24}\nimages: {i: {}}\ndefaults: {image: i}\nboards:\n  - {name: a, mac: 'dc:a6:32:01:02:03', ip: 10.0.0.5}\n  - {name: b, mac: 'dc:a6:32:01:02:04', ip: 10.0.0.5}\n", []string{`6:45: duplicate ip 10.0.0.5`}},
		{"ip outside subnet", "server: {address: 10.0.0.1/24}\nimages: {i: {}}\ndefaults: {image: i}\nboards:\n  - name: a\n    mac: dc:a6:32:01:02:03\n    ip: 10.0.1.5\n", []string{`7:9: board a: ip 10.0.1.5 is outside the server's subnet`}},
		{"ip in range", "server:\n  address: 10.0.0.1/24\n  dhcp: {mode: full, range: 10.0.0.100-10.0.0.200}\nimages: {i: {}}\ndefaults: {image: i}\nboards:\n  - name: a\n    mac: dc:a6:32:01:02:03\n    ip: 10.0.0.150\n", []string{`9:9: board a: ip 10.0.0.150 is inside the dynamic range`}},
		{"unknown image", "images: {bookworm: {}}\nboards:\n  - name: a\n    mac: dc:a6:32:01:02:03\n    image: bookwrom\n", []string{`5:12: unknown image "bookwrom" (hint: did you mean "bookworm"?)`}},
		{"unknown default image", "images: {bookworm: {}}\ndefaults:\n  image: trixie\n", []string{`3:10: unknown image "trixie"`}},
		{"bad hostname", "images: {i: {}}\ndefaults: {image: i}\nboards:\n  - name: Pi_01\n    mac: dc:a6:32:01:02:03\n", []string{`4:11: board name "Pi_01" is not a valid hostname`}},
		{"port clash", "server:\n  ports:\n    nfs: 2049\n    mount: 2049\n", []string{`4:12: ports nfs and mount are both 2049`}},
		{"port clash http", "server:\n  ports: {http: 2049}\n", []string{`2:17: ports nfs and http are both 2049`}},
		{"bad port", "server:\n  ports: {tftp: 70000}\n", []string{`2:17: tftp port "70000" is not a port number`}},
		{"bad mode", "server:\n  dhcp: {mode: fulll}\n", []string{`2:16: server.dhcp.mode "fulll" is not a DHCP mode`}},
		{"bad proxy_pxe", "server:\n  dhcp: {proxy_pxe: yes please}\n", []string{`2:21: server.dhcp.proxy_pxe must be true or false, not "yes please"`}},
		{"full without address", "server:\n  dhcp: {mode: full}\n", []string{`2:3: server.dhcp.mode is full but server.address is not set`}},
		{"no mac no serial", "images: {i: {}}\ndefaults: {image: i}\nboards:\n  - name: a\n", []string{`4:5: board a has neither mac nor serial`}},
		{"no image", "images: {i: {}}\nboards:\n  - name: a\n    mac: dc:a6:32:01:02:03\n", []string{`3:5: board a has no image`}},
		{"bad yaml", "server:\n  address: [\n", []string{`2:3: not valid YAML`}},
		// yaml.v3 names the line of the enclosing block (boards:); the report names the line that broke it.
		{"misindented board key", "server:\n  state: st\nboards:\n  - name: a\n    mac: 02:00:00:00:00:01\n   image: x\n",
			[]string{`6:4: not valid YAML: did not find expected '-' indicator (in the block that starts at line 3)`}},
		{"misindented board entry", "images:\n  img: {path: r}\nboards:\n  - {name: a, mac: 02:00:00:00:00:01}\n - {name: b}\n",
			[]string{`5:2: not valid YAML: did not find expected key`}},
		{"outdented board key", "boards:\n  - name: a\n    mac: 02:00:00:00:00:01\n  image: x\n", []string{`4:3: not valid YAML`}},
		{"tabs", "server:\n\taddress: 10.0.0.1/24\n", []string{`2:1: not valid YAML`}},
		{"repeated key", "server:\n  state: /a\n  state: /b\n", []string{`3:3: key "state" repeated in server (first at line 2)`}},
		{"boards not a list", "boards:\n  name: a\n", []string{`2:3: boards must be a list`}},
		{"range outside subnet", "server:\n  address: 10.0.0.1/24\n  dhcp: {mode: full, range: 10.0.1.1-10.0.1.9}\n", []string{`3:29: server.dhcp.range is outside the server's subnet`}},
		{"plain password", "defaults:\n  user: {name: pi, password_hash: raspberry}\n", []string{`2:35: defaults.user.password_hash is not a password hash`}},
		{"bad http address", "server:\n  http: [127.0.0.1, nope]\n", []string{`2:21: server.http entry "nope" is not an address or address:port`}},
		{"repeated http address", "server:\n  ports: {http: 81}\n  http: [127.0.0.1, '127.0.0.1:81']\n", []string{`3:21: server.http lists 127.0.0.1:81 twice`}},
		{"empty http list", "server:\n  http: []\n", []string{`2:9: server.http is an empty list`}},
		{"http mapping", "server:\n  http: {a: b}\n", []string{`2:9: server.http must be a list of addresses`}},
		{"base and path", "images:\n  k: {path: /r, base: b}\n", []string{`2:23: image k has both path and base`}},
		{"own base", "images:\n  k:\n    base: k\n", []string{`3:11: image k cannot be its own base`}},
		{"bad base", "images:\n  k: {base: ../b}\n", []string{`2:13: image k: base "../b" is not a valid image name`}},
		{"all problems at once", "server:\n  adress: x\n  dhcp: {mode: nope}\nimages: {i: {}}\nboards:\n  - name: A\n    mac: zz\n    image: j\n",
			[]string{`2:3: unknown key "adress"`, `3:16: server.dhcp.mode "nope"`, `6:11: board name "A"`, `7:10: board A: mac "zz"`, `8:12: unknown image "j"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, ps, err := Parse([]byte(c.yaml), "fleet.yaml")
			if err == nil {
				t.Fatalf("Parse accepted a bad fleet; problems: %v", ps)
			}
			out := ps.Format("fleet.yaml")
			for _, w := range c.want {
				if !strings.Contains(out, "fleet.yaml:"+w) {
					t.Errorf("missing %q in:\n%s", w, out)
				}
			}
		})
	}
}

func TestParseWarnings(t *testing.T) {
	y := "images: {i: {}}\ndefaults: {image: i}\nboards:\n  - name: uboot\n    mac: 52:54:00:12:34:56\n    cmdline: root=/dev/sda1\n"
	cfg, ps, err := Parse([]byte(y), "fleet.yaml")
	if err != nil {
		t.Fatalf("warnings must not fail the load: %v", err)
	}
	out := ps.Format("fleet.yaml")
	for _, w := range []string{"4:5: warning: board uboot has no serial", "6:14: warning: cmdline sets root=/dev/sda1"} {
		if !strings.Contains(out, "fleet.yaml:"+w) {
			t.Errorf("missing %q in:\n%s", w, out)
		}
	}
	if cfg == nil || len(cfg.Boards) != 1 {
		t.Fatalf("cfg = %+v", cfg)
	}
}

// TestRepoFleet keeps the demo fleet.yaml that `make run` serves valid.
func TestRepoFleet(t *testing.T) {
	cfg, ps, err := Load(filepath.Join("..", "fleet.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if ps.Errors() != 0 || len(cfg.Boards) != 2 || cfg.Server.DHCP.Mode != DHCPProxy {
		t.Fatalf("demo fleet: %d boards, mode %s, problems:\n%s", len(cfg.Boards), cfg.Server.DHCP.Mode, ps.Format("fleet.yaml"))
	}
}

func TestLoadErrors(t *testing.T) {
	if _, _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(big, make([]byte, maxConfigSize+10), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
}

// FuzzParse: no input may panic the loader, and a rejected file always says where.
func FuzzParse(f *testing.F) {
	f.Add([]byte(goodFleet))
	f.Add([]byte("server: {http: ['[::1]:8080', 0.0.0.0, '10.0.0.1:0', x]}\n"))
	f.Add([]byte("server: {ports: {nfs: 1, mount: 1}}\nboards: [{name: a}]"))
	f.Add([]byte("a: &x [*x, *x]\n"))
	f.Add([]byte("boards:\n  - name: a\n    mac: [1,2]\n    serial: {x: y}\n    ip: !!binary aGVsbG8=\n"))
	f.Add([]byte("---\n...\n---\n"))
	f.Add([]byte("boards:\n  - name: a\n    mac: 02:00:00:00:00:01\n   image: x\n"))
	f.Add([]byte{0xff, 0xfe, 0, 1})
	f.Add([]byte("groups: {lab: {image: x, user: {name: pi}}, b: null}\nboards: [{name: a, group: lab}, {name: b, group: c}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, ps, err := Parse(data, "fleet.yaml")
		if err != nil {
			if ps.Errors() == 0 {
				t.Fatalf("error without problems: %v", err)
			}
			for _, p := range ps {
				if p.Line < 1 || p.Col < 1 || p.Msg == "" {
					t.Fatalf("problem without position or message: %+v", p)
				}
			}
			return
		}
		if cfg == nil {
			t.Fatal("nil config without error")
		}
	})
}

// TestParseProxyPXE: server.dhcp.proxy_pxe is off by default, read as a boolean, and
// warned about (with its line) in a mode that ignores it.
func TestParseProxyPXE(t *testing.T) {
	cfg, ps, err := Parse([]byte("server:\n  dhcp:\n    proxy_pxe: true\n"), "fleet.yaml")
	if err != nil || len(ps) != 0 || !cfg.Server.DHCP.ProxyPXE {
		t.Fatalf("proxy_pxe: true: err %v, problems %v, cfg %+v", err, ps, cfg.Server.DHCP)
	}
	if cfg, _, _ := Parse([]byte("server:\n  dhcp: {mode: proxy}\n"), "fleet.yaml"); cfg == nil || cfg.Server.DHCP.ProxyPXE {
		t.Fatalf("proxy_pxe is on by default")
	}
	_, ps, err = Parse([]byte("server:\n  address: 10.0.0.1/24\n  dhcp:\n    mode: full\n    proxy_pxe: true\n"), "fleet.yaml")
	if err != nil {
		t.Fatalf("a warning failed the load: %v", err)
	}
	if out := ps.Format("fleet.yaml"); !strings.Contains(out, "fleet.yaml:5:16: warning: server.dhcp.proxy_pxe is ignored in full mode") {
		t.Errorf("no warning for proxy_pxe in full mode:\n%s", out)
	}
}

// TestParseHTTPListen: server.http takes addresses with or without a port (the port
// defaults to server.ports.http); left out, it is nil (serve's default).
func TestParseHTTPListen(t *testing.T) {
	cfg, _, err := Parse([]byte("server:\n  ports: {http: 8081}\n  http: [127.0.0.1, '10.0.0.1:9000', '::1']\n"), "fleet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:8081"), netip.MustParseAddrPort("10.0.0.1:9000"), netip.MustParseAddrPort("[::1]:8081")}
	if !slices.Equal(cfg.Server.HTTP, want) {
		t.Errorf("server.http = %v, want %v", cfg.Server.HTTP, want)
	}
	if cfg, _, err := Parse([]byte("server:\n  http: 127.0.0.1\n"), "fleet.yaml"); err != nil || len(cfg.Server.HTTP) != 1 || cfg.Server.HTTP[0].Port() != 8080 {
		t.Errorf("a single address: %v %v", cfg, err)
	}
	if cfg, _, err := Parse([]byte("server: {}\n"), "fleet.yaml"); err != nil || cfg.Server.HTTP != nil {
		t.Errorf("default: %v %v", cfg, err)
	}
}

// TestParseGroups: a group's settings sit between the defaults and the board's own
// (board > group > defaults); an unknown group or key is an error with its line.
func TestParseGroups(t *testing.T) {
	const fleet = `server: {dhcp: {mode: off}}
images: {v1: {}, v2: {}, v3: {}}
defaults: {image: v1, cmdline: quiet, config: [a=1]}
groups:
  lab: {image: v2, cmdline: debug, config: [b=2], root_squash: true}
  rack: {}
boards:
  - {name: pi-01, mac: '02:00:00:00:00:01', group: lab}
  - {name: pi-02, mac: '02:00:00:00:00:02', group: lab, image: v3, cmdline: x=1, root_squash: false}
  - {name: pi-03, mac: '02:00:00:00:00:03', group: rack}
  - {name: pi-04, mac: '02:00:00:00:00:04'}
`
	cfg, ps, err := Parse([]byte(fleet), "fleet.yaml")
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, ps.Format("fleet.yaml"))
	}
	type want struct {
		image, cmdline, config string
		squash                 bool
	}
	for i, w := range []want{
		{"v2", "quiet debug", "a=1|b=2", true},
		{"v3", "quiet debug x=1", "a=1|b=2", false},
		{"v1", "quiet", "a=1", false},
		{"v1", "quiet", "a=1", false},
	} {
		b := cfg.Boards[i]
		got := want{b.Image, b.Cmdline, strings.Join(b.Config, "|"), b.RootSquash}
		if got != w {
			t.Errorf("%s: %+v, want %+v", b.Name, got, w)
		}
	}

	// Without a groups: section a group is a plain label (reset --group); with one, it
	// must be declared.
	if _, _, err := Parse([]byte("images: {v1: {}}\ndefaults: {image: v1}\nboards:\n  - {name: a, mac: '02:00:00:00:00:01', group: free}\n"), "fleet.yaml"); err != nil {
		t.Errorf("a group label without groups: rejected: %v", err)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"images: {v1: {}}\ndefaults: {image: v1}\ngroups:\n  lab: {}\nboards:\n  - name: a\n    mac: '02:00:00:00:00:01'\n    group: lba\n",
			`fleet.yaml:8:12: board a: unknown group "lba"`},
		{"images: {v1: {}}\ndefaults: {image: v1}\ngroups:\n  lab: {imag: v1}\n",
			`fleet.yaml:4:9: unknown key "imag" in group lab`},
		{"images: {v1: {}}\ndefaults: {image: v1}\ngroups:\n  lab: {image: v9}\n",
			`fleet.yaml:4:16: unknown image "v9"`},
		{"images: {v1: {}}\ngroups: [lab]\n",
			`fleet.yaml:2:9: groups must be a mapping`},
		{"images: {v1: {}}\ngroups:\n  lab: {}\n  lab: {}\n",
			`fleet.yaml:4:3: group "lab" is listed twice`},
		{"images: {v1: {}}\ngroups:\n  lab: {}\nboards:\n  - {name: a, mac: '02:00:00:00:00:01', group: lab}\n",
			`fleet.yaml:5:5: board a has no image`},
	} {
		_, ps, err := Parse([]byte(tc.yaml), "fleet.yaml")
		if err == nil {
			t.Errorf("accepted:\n%s", tc.yaml)
			continue
		}
		if out := ps.Format("fleet.yaml"); !strings.Contains(out, tc.want) {
			t.Errorf("problems:\n%s\nwant %q", out, tc.want)
		}
	}
}
