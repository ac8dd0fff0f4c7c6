package tftp

import (
	"errors"
	"io"
	"io/fs"
	"net/netip"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/boot"
)

func TestResolve(t *testing.T) {
	fleet, a, b := twoBoards(t)
	ipA, ipB := a.IP, b.IP
	stranger := netip.MustParseAddr("127.0.0.9")
	tests := []struct {
		client    netip.Addr
		name      string
		wantBoard string // "" = no board charged
		wantPath  string
		wantErr   error
	}{
		{ipA, "9ffefdef/start4.elf", "pi-a", "start4.elf", nil},
		{ipA, "9FFEFDEF/start4.elf", "pi-a", "start4.elf", nil},
		{ipA, "start4.elf", "pi-a", "start4.elf", nil},
		{ipA, "dc-a6-32-01-36-c2/kernel8.img", "pi-a", "kernel8.img", nil},
		{ipA, "overlays/vc4-kms-v3d.dtbo", "pi-a", "overlays/vc4-kms-v3d.dtbo", nil},
		{ipB, "start4.elf", "pi-b", "start4.elf", nil},
		// An address bound to no board: a prefix is not identity, whatever it names.
		{stranger, "12345678/start4.elf", "pi-b", "", errNotBound},
		{stranger, "dc-a6-32-aa-bb-cc/kernel8.img", "pi-b", "", errNotBound},
		{stranger, "pxelinux.cfg/01-dc-a6-32-aa-bb-cc", "", "", errUnknownClient},
		// Another board's prefix from a known board's address.
		{ipA, "12345678/start4.elf", "pi-a", "", errOtherBoard},
		{ipA, "dc-a6-32-aa-bb-cc/kernel8.img", "pi-a", "", errOtherBoard},
		// A serial nobody has: the Pi then drops its prefix.
		{ipA, "00000000/start4.elf", "pi-a", "", errNoSuchBoard},
		{stranger, "00000000/start4.elf", "", "", errUnknownClient},
		{stranger, "start4.elf", "", "", errUnknownClient},
		// Names that could leave the tree.
		{ipA, "../secret", "pi-a", "", errBadName},
		{ipA, "9ffefdef/../secret", "pi-a", "", errBadName},
		{ipA, "9ffefdef/../../etc/passwd", "pi-a", "", errBadName},
		{ipA, "/etc/passwd", "pi-a", "", errBadName},
		{ipA, "9ffefdef//etc/passwd", "pi-a", "", errBadName},
		{ipA, "sub/./dir", "pi-a", "", errBadName},
		{ipA, "sub/", "pi-a", "", errBadName},
		{ipA, ".", "pi-a", "", errBadName},
		{ipA, "9ffefdef/", "pi-a", "", errBadName},
		{ipA, "start4.elf\x00../secret", "", "", errBadName},
		{ipA, strings.Repeat("a", maxNameLen+1), "", "", errBadName},
		{ipA, "", "", "", errBadName},
	}
	for _, tt := range tests {
		board, path, err := resolve(fleet, boardAt(fleet, tt.client), tt.name)
		name := ""
		if board != nil {
			name = board.Name
		}
		if !errors.Is(err, tt.wantErr) || name != tt.wantBoard || path != tt.wantPath {
			t.Errorf("resolve(%v, %q) = %q, %q, %v; want %q, %q, %v", tt.client, tt.name, name, path, err, tt.wantBoard, tt.wantPath, tt.wantErr)
		}
	}
}

// boardAt is the board an address is bound to, or nil.
func boardAt(fleet boot.Fleet, ip netip.Addr) *boot.Board {
	b, _ := fleet.BoardByIP(ip)
	return b
}

func TestOpenRefusesEscapesAndSpecialFiles(t *testing.T) {
	_, a, _ := twoBoards(t)
	for _, p := range []string{"escape-rel", "escape-abs", "escape-etc", "up/secret", "fifo", "overlays", "dir-only", "missing.bin"} {
		f, err := open(a, p)
		if err == nil {
			data, _ := io.ReadAll(f.r)
			f.Close()
			t.Errorf("open(%q) succeeded with %d bytes; want an error", p, len(data))
		}
	}
	f, err := open(a, "link-inside")
	if err != nil {
		t.Fatalf("a symlink inside the tree: %v", err)
	}
	defer f.Close()
	data, _ := io.ReadAll(f.r)
	if string(data) != "target inside pi-a\n" || f.size != int64(len(data)) {
		t.Errorf("link-inside = %q (size %d)", data, f.size)
	}
	if _, err := open(a, "pxelinux.cfg/default"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pxelinux.cfg/default: %v, want not found (only 01-<mac> is served)", err)
	}
}

// FuzzResolve: whatever name a client sends, it gets a file of the board its address is
// bound to, or an error (a prefix never picks the board); never a panic, never anything outside that board's tree.
func FuzzResolve(f *testing.F) {
	for _, s := range []string{
		"start4.elf", "9ffefdef/start4.elf", "12345678/config.txt", "dc-a6-32-01-36-c2/kernel8.img",
		"../secret", "/etc/passwd", "escape-rel", "up/secret", "sub/dir/nested.txt", "a\x00b",
		"pxelinux.cfg/01-dc-a6-32-aa-bb-cc", "cmdline.txt", "fifo", "9ffefdef/../../secret", "\\..\\secret",
		"link-inside", "overlays/../escape-abs", "./start4.elf", "9ffefdef/9ffefdef/name.txt",
	} {
		f.Add(s, uint8(0))
		f.Add(s, uint8(1))
		f.Add(s, uint8(2))
	}
	fleet, a, b := twoBoards(f)
	clients := []netip.Addr{a.IP, b.IP, netip.MustParseAddr("127.0.0.9")}
	f.Fuzz(func(t *testing.T, name string, who uint8) {
		client := clients[int(who)%len(clients)]
		board, path, err := resolve(fleet, boardAt(fleet, client), name)
		if err != nil {
			return
		}
		if board == nil || !fs.ValidPath(path) || path == "." {
			t.Fatalf("resolve(%q) = %v, %q with no error", name, board, path)
		}
		if ipBoard, ok := fleet.BoardByIP(client); !ok || ipBoard != board {
			t.Fatalf("client %v (board %v) got board %s for %q", client, ipBoard, board.Name, name)
		}
		fl, err := open(board, path)
		if err != nil {
			return
		}
		defer fl.Close()
		data, err := io.ReadAll(io.LimitReader(fl.r, 4<<20))
		if err != nil {
			return
		}
		if strings.Contains(string(data), secret) || strings.Contains(string(data), "root:x:0:0") {
			t.Fatalf("%q from %v escaped the tree: %q", name, client, data[:min(len(data), 80)])
		}
		other := map[string]string{"pi-a": "pi-b", "pi-b": "pi-a"}[board.Name]
		if path == "name.txt" && strings.Contains(string(data), other) {
			t.Fatalf("%q served %s's file to %s", name, other, board.Name)
		}
	})
}
