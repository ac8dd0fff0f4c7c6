package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// insertedLines returns the lines of after that are not in before, checking that they
// are one contiguous block and that removing it gives before back exactly.
func insertedLines(t *testing.T, before, after string) string {
	t.Helper()
	b, a := strings.SplitAfter(before, "\n"), strings.SplitAfter(after, "\n")
	i := 0
	for i < len(b) && i < len(a) && a[i] == b[i] {
		i++
	}
	j := 0
	for j < len(b)-i && j < len(a)-i && a[len(a)-1-j] == b[len(b)-1-j] {
		j++
	}
	if i+j != len(b) {
		t.Fatalf("the edit changed more than one inserted block:\n--- before\n%s--- after\n%s", before, after)
	}
	return strings.Join(a[i:len(a)-j], "")
}

func writeFleet(t *testing.T, text string) string {
	t.Helper()
	dir := t.TempDir()
	text = strings.ReplaceAll(text, "IMG", testImage(t))
	p := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(p, []byte(text), 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

func checkPasses(t *testing.T, path string) *Config {
	t.Helper()
	cfg, _, err := Load(path)
	if err != nil {
		t.Fatalf("check after the edit: %v", err)
	}
	if ps := CheckImages(cfg); ps.Errors() > 0 {
		t.Fatalf("check after the edit:\n%s", ps.Format(path))
	}
	return cfg
}

const oddFleet = `# My fleet: every comment here must survive.
server:
   state: ./st        # odd three-space indent
   dhcp: {mode: off}  # no DHCP

images:
     img: {path: IMG}   # five spaces

boards:    # the boards
    # first board
    -   name: pi-01       # three spaces after the dash
        mac: 'dc:a6:32:01:02:03'
        serial: 9ffefdef
        # a comment inside the entry
    -   name: pi-02
        mac: dc:a6:32:01:02:04

        config:
          - dtoverlay=disable-bt   # trailing
          # still pi-02's
    # spare: pi-99 (not racked yet)

# defaults after the boards
defaults:
  image: img   # the only image
`

func TestAddBoardKeepsFile(t *testing.T) {
	p := writeFleet(t, oddFleet)
	before, _ := os.ReadFile(p)
	err := AddBoard(p, BoardSpec{Name: "pi-03", MAC: "DC-A6-32-01-02-05", Serial: "10000000ABCD1234", Group: "rack1"})
	if err == nil || !strings.Contains(err.Error(), "last 8 hex digits: abcd1234") {
		t.Fatalf("a 16-digit serial: %v", err)
	}
	if err := AddBoard(p, BoardSpec{Name: "pi-03", MAC: "DC-A6-32-01-02-05", Serial: "ABCD1234", IP: "10.0.0.3", Group: "rack1"}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(p)
	got := insertedLines(t, string(before), string(after))
	want := "    -   name: pi-03\n        mac: dc:a6:32:01:02:05\n        serial: abcd1234\n        ip: 10.0.0.3\n        group: rack1\n"
	if got != want {
		t.Errorf("inserted:\n%s\nwant:\n%s", got, want)
	}
	if !strings.Contains(string(after), "          # still pi-02's\n"+want+"    # spare: pi-99") {
		t.Errorf("entry not after pi-02's comment and before the spare's:\n%s", after)
	}
	cfg := checkPasses(t, p)
	if n := len(cfg.Boards); n != 3 || cfg.Boards[2].Serial != "abcd1234" || cfg.Boards[2].Image != "img" {
		t.Errorf("boards after the edit: %+v", cfg.Boards)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode changed to %v", fi.Mode())
	}

	// Duplicates are refused, and the file is left alone.
	for _, c := range []struct {
		spec BoardSpec
		want string
	}{
		{BoardSpec{Name: "pi-01", MAC: "02:00:00:00:00:09"}, "board pi-01 is already in the fleet"},
		{BoardSpec{Name: "pi-09", MAC: "DC:A6:32:01:02:04"}, "mac dc:a6:32:01:02:04 is already board pi-02's"},
		{BoardSpec{Name: "pi-09", Serial: "9FFEFDEF"}, "serial 9ffefdef is already board pi-01's"},
		{BoardSpec{Name: "pi-09", MAC: "02:00:00:00:00:09", IP: "10.0.0.3"}, "ip 10.0.0.3 is already board pi-03's"},
		{BoardSpec{Name: "pi-09", MAC: "02:00:00:00:00:09", Image: "nope"}, `unknown image "nope"`},
		{BoardSpec{Name: "Pi_09", MAC: "02:00:00:00:00:09"}, "not a valid hostname"},
		{BoardSpec{Name: "pi-09"}, "give its mac"},
	} {
		err := AddBoard(p, c.spec)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.spec, err, c.want)
		}
	}
	if again, _ := os.ReadFile(p); string(again) != string(after) {
		t.Error("a refused add changed the file")
	}
}

func TestAddBoardStyles(t *testing.T) {
	head := "server:\n  state: ./st\n  dhcp: {mode: off}\nimages:\n  img: {path: IMG}\ndefaults: {image: img}\n"
	for _, c := range []struct{ name, boards, want string }{
		{"flow entries", "boards:\n  - {name: a, mac: '02:00:00:00:00:01'}   # one line each\n", "  - {name: b, mac: '02:00:00:00:00:02', serial: \"12345678\"}\n"},
		{"dash at column 0", "boards:\n- name: a\n  mac: 02:00:00:00:00:01\n", "- name: b\n  mac: 02:00:00:00:00:02\n  serial: \"12345678\"\n"},
		{"empty list", "boards:   # none yet\n", "  - name: b\n    mac: 02:00:00:00:00:02\n    serial: \"12345678\"\n"},
		{"no boards key", "", "boards:\n  - name: b\n    mac: 02:00:00:00:00:02\n    serial: \"12345678\"\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := writeFleet(t, head+c.boards)
			before, _ := os.ReadFile(p)
			if err := AddBoard(p, BoardSpec{Name: "b", MAC: "02:00:00:00:00:02", Serial: "12345678"}); err != nil {
				t.Fatal(err)
			}
			after, _ := os.ReadFile(p)
			if c.name == "empty list" {
				if !strings.HasSuffix(string(after), "boards: # none yet\n"+c.want) {
					t.Errorf("got:\n%s", after)
				}
			} else if got := insertedLines(t, string(before), string(after)); got != c.want {
				t.Errorf("inserted:\n%q\nwant:\n%q", got, c.want)
			}
			if cfg := checkPasses(t, p); cfg.Boards[len(cfg.Boards)-1].Serial != "12345678" {
				t.Errorf("boards: %+v", cfg.Boards)
			}
		})
	}
	p := writeFleet(t, head+"boards: [{name: a, mac: '02:00:00:00:00:01'}]\n")
	if err := AddBoard(p, BoardSpec{Name: "b", MAC: "02:00:00:00:00:02"}); err == nil || !strings.Contains(err.Error(), "add the board by hand") {
		t.Errorf("flow list: %v", err)
	}
	p = writeFleet(t, head+"boards:\n  - {name: a, mac: 'zz'}\n")
	if err := AddBoard(p, BoardSpec{Name: "b", MAC: "02:00:00:00:00:02"}); err == nil || !strings.Contains(err.Error(), "fix them first") {
		t.Errorf("broken file: %v", err)
	}
}

func TestStateDirOf(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"server:\n  state: ./st   # here\nboards: []\n", "st"},
		{"server:\n  dhcp: {mode: off\n  state: 'my state'\nboards:\n - name: [\n", "my state"},
		{"server:\n\tstate: /abs\n  state: \"/srv/pf\"\n", "/abs"},
		{"images: {}\n  state: nope\n", DefaultState},
		{"server: {state: /x}\n", "/x"},
		{"server: {address: 1.2.3.4/24, state: 'st 2', dhcp: {mode: off}}\nboards: [\n", "st 2"},
		{"server: {dhcp: {mode: off}, state: st3}\nboards: [\n", "st3"},
	} {
		p := filepath.Join(t.TempDir(), "fleet.yaml")
		os.WriteFile(p, []byte(c.text), 0o644)
		got, err := StateDirOf(p)
		want := c.want
		if !filepath.IsAbs(want) {
			want = filepath.Join(filepath.Dir(p), want)
		}
		if err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", c.text, got, err, want)
		}
	}
}

// FuzzSpliceBoard: whatever fleet.yaml holds, adding a board never panics, and when it
// succeeds on a valid file the result still has every board as it was, then the new one.
func FuzzSpliceBoard(f *testing.F) {
	f.Add([]byte(oddFleet))
	f.Add([]byte("images: {img: {path: /x}}\ndefaults: {image: img}\nboards:\n  - {name: a, mac: '02:00:00:00:00:01'}\n"))
	f.Add([]byte("boards:\n- name: a\n  serial: '12345678'\n  image: i\nimages: {i: {}}\n"))
	f.Add([]byte("server:\n\tstate: x\nboards: [\n"))
	spec := BoardSpec{Name: "zz-new", MAC: "02:00:00:00:00:fe", Serial: "fedcba98"}
	f.Fuzz(func(t *testing.T, data []byte) {
		stateKey(data)
		cur, _, err := Parse(data, "fleet.yaml")
		if err != nil || refuseDuplicate(cur, spec) != nil {
			return
		}
		out, err := spliceBoard(data, spec)
		if err != nil {
			return
		}
		next, _, err := Parse(out, "fleet.yaml")
		if err == nil && !keptBoards(cur, next, spec.Name) {
			t.Fatalf("boards changed:\n%s\n---\n%s", data, out)
		}
	})
}

// TestAddBoardToGroup: a board added with a group of groups: takes the group's image;
// a group that is not declared is refused with the check's line-numbered error.
func TestAddBoardToGroup(t *testing.T) {
	p := writeFleet(t, "server: {state: ./st, dhcp: {mode: off}}\nimages:\n  img: {path: IMG}\n  lab-img: {path: IMG}\ndefaults: {image: img}\ngroups:\n  lab: {image: lab-img}\nboards:\n  - {name: pi-01, mac: '02:00:00:00:00:01'}\n")
	if err := AddBoard(p, BoardSpec{Name: "pi-02", MAC: "02:00:00:00:00:02", Group: "lab"}); err != nil {
		t.Fatal(err)
	}
	cfg := checkPasses(t, p)
	if b, _ := boardByName(cfg, "pi-02"); b.Image != "lab-img" || b.Group != "lab" {
		t.Errorf("added board = %+v, want image lab-img from group lab", b)
	}
	err := AddBoard(p, BoardSpec{Name: "pi-03", MAC: "02:00:00:00:00:03", Group: "lba"})
	if err == nil || !strings.Contains(err.Error(), `unknown group "lba"`) || !strings.Contains(err.Error(), `did you mean "lab"`) {
		t.Errorf("undeclared group: err = %v", err)
	}
}
