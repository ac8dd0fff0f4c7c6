package server

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/test/netns"
)

// TestServeFirstUserOnDebianImage: a board whose image has no Pi OS userconfig service sees
// fleet.yaml's user in its /etc/passwd, /etc/shadow and /etc/group, read through the board's
// overlay as NFS serves it; the server hands WriteIdentity the board's image layers.
func TestServeFirstUserOnDebianImage(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	img := testImage(t)
	for rel, data := range map[string]string{
		"etc/passwd":  "root:x:0:0:root:/root:/bin/bash\n",
		"etc/shadow":  "root:*:19000:0:99999:7:::\n",
		"etc/group":   "root:x:0:\nsudo:x:27:\nshadow:x:42:\n",
		"etc/gshadow": "root:*::\nsudo:*::\nshadow:*::\n",
	} {
		if err := os.WriteFile(filepath.Join(img, rel), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ports := freePorts(t, 4)
	ts := &testServer{t: t, cfgPath: filepath.Join(dir, "fleet.yaml"), tftp: ports[0]}
	boards := "  - {name: deb-1, mac: '02:00:00:00:00:01', serial: '0000abc1', ip: 127.0.0.2,\n" +
		"     user: {name: ops, password_hash: \"$6$salt$hash\", ssh_keys: [\"ssh-ed25519 AAAAC3Nza ops@x\"]}}\n"
	y := fmt.Sprintf(fleetTmpl, filepath.Join(dir, "state"), ports[0], ports[1], ports[2], ports[3], img, boards)
	if err := os.WriteFile(ts.cfgPath, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	ts.logs = &netns.LogBuffer{}
	ts.start()
	t.Cleanup(ts.stop)
	b := ts.srv.fleet.cur.Load().boards["deb-1"]
	if b == nil {
		t.Fatal("board deb-1 not open")
	}
	root := b.fs.IOFS("")
	for rel, want := range map[string]string{
		"etc/passwd":                    "\nops:x:1000:1000:,,,:/home/ops:/bin/",
		"etc/shadow":                    "\nops:$6$salt$hash:",
		"etc/group":                     "\nsudo:x:27:ops\n",
		"home/ops/.ssh/authorized_keys": "ssh-ed25519 AAAAC3Nza ops@x\n",
	} {
		got, err := fs.ReadFile(root, rel)
		if err != nil || !strings.Contains(string(got), want) {
			t.Errorf("board's /%s lacks %q: %v\n%s", rel, want, err, got)
		}
	}
	if _, err := fs.Stat(root, "boot/firmware/userconf.txt"); err == nil {
		t.Error("userconf.txt written for an image without Pi OS's userconfig")
	}
}
