package images

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestWriteIdentity(t *testing.T) {
	dir := t.TempDir()
	id := Identity{Hostname: "pi-07", Serial: "10000000abcdef01", MAC: "dc:a6:32:01:02:03", User: "admin",
		PasswordHash: "$6$salt$hash", AuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests admin@laptop"}}
	if err := WriteIdentity(dir, id); err != nil {
		t.Fatal(err)
	}
	read := func(rel string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read("etc/hostname"); got != "pi-07\n" {
		t.Errorf("hostname %q", got)
	}
	if got := read("etc/hosts"); !strings.Contains(got, "127.0.1.1\tpi-07\n") || !strings.Contains(got, "localhost") {
		t.Errorf("hosts %q", got)
	}
	mid := read("etc/machine-id")
	if !regexp.MustCompile(`^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}\n$`).MatchString(mid) {
		t.Errorf("machine-id %q is not 32 hex digits of a v4 UUID", mid)
	}
	if got := read("boot/firmware/userconf.txt"); got != "admin:$6$salt$hash\n" {
		t.Errorf("userconf.txt %q", got)
	}
	if got := read("etc/ssh/authorized_keys/admin"); got != id.AuthorizedKeys[0]+"\n" {
		t.Errorf("authorized keys %q", got)
	}
	if !strings.Contains(read("etc/ssh/sshd_config.d/pifleet-authorized-keys.conf"), "/etc/ssh/authorized_keys/%u") {
		t.Error("sshd drop-in missing")
	}
	read("boot/firmware/ssh")
	keys := map[string]string{}
	for _, k := range []string{"ed25519", "ecdsa", "rsa"} {
		priv := filepath.Join(dir, "etc/ssh/ssh_host_"+k+"_key")
		fi, err := os.Stat(priv)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", priv, fi, err)
		}
		keys[k] = read("etc/ssh/ssh_host_" + k + "_key.pub")
	}
	// a second call keeps the host keys and the machine-id, and leaves unchanged files alone
	before, _ := os.Stat(filepath.Join(dir, "etc/hostname"))
	if err := WriteIdentity(dir, id); err != nil {
		t.Fatal(err)
	}
	for k, pub := range keys {
		if got := read("etc/ssh/ssh_host_" + k + "_key.pub"); got != pub {
			t.Errorf("%s host key changed on the second call", k)
		}
	}
	if read("etc/machine-id") != mid {
		t.Error("machine-id changed on the second call")
	}
	if after, _ := os.Stat(filepath.Join(dir, "etc/hostname")); !os.SameFile(before, after) {
		t.Error("unchanged /etc/hostname was rewritten (new inode)")
	}
	// a changed hostname is rewritten
	id.Hostname = "pi-07b"
	if err := WriteIdentity(dir, id); err != nil {
		t.Fatal(err)
	}
	if got := read("etc/hostname"); got != "pi-07b\n" {
		t.Errorf("hostname after change %q", got)
	}
	id.Hostname = "pi-07"
	if err := WriteIdentity(dir, id); err != nil {
		t.Fatal(err)
	}
	// another board gets other keys and another machine-id; the machine-id is a pure
	// function of the serial
	other := t.TempDir()
	if err := WriteIdentity(other, Identity{Hostname: "pi-08", Serial: "10000000abcdef02"}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(other, "etc/ssh/ssh_host_ed25519_key.pub"))
	if strings.Fields(string(b))[1] == strings.Fields(keys["ed25519"])[1] {
		t.Error("two boards share an SSH host key")
	}
	if m, _ := os.ReadFile(filepath.Join(other, "etc/machine-id")); string(m) == mid {
		t.Error("two boards share a machine-id")
	}
	if (Identity{Serial: "10000000ABCDEF01"}).MachineID()+"\n" != mid {
		t.Error("machine-id depends on the serial's case")
	}
	if (Identity{MAC: "DC-A6-32-01-02-03"}).MachineID() != (Identity{MAC: "dc:a6:32:01:02:03"}).MachineID() {
		t.Error("machine-id from MAC depends on its spelling")
	}
	if _, err := os.Stat(filepath.Join(other, "boot/firmware/userconf.txt")); err == nil {
		t.Error("userconf.txt written without a user")
	}
	// a password but no keys: userconf.txt, SSH stays off (the flag of the earlier call goes);
	// keys but no password: a password field no password matches, which userconf-service
	// still takes (an empty one makes it ask on the console)
	id.AuthorizedKeys = nil
	must(t, WriteIdentity(dir, id))
	if _, err := os.Stat(filepath.Join(dir, "boot/firmware/ssh")); err == nil {
		t.Error("ssh flag kept without authorized keys")
	}
	if _, err := os.Stat(filepath.Join(dir, "etc/ssh/authorized_keys/admin")); err == nil {
		t.Error("authorized keys kept after fleet.yaml dropped them")
	}
	id.PasswordHash, id.AuthorizedKeys = "", []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests admin@laptop"}
	must(t, WriteIdentity(dir, id))
	if got := read("boot/firmware/userconf.txt"); got != "admin:*\n" {
		t.Errorf("userconf.txt without a password hash: %q", got)
	}
	read("boot/firmware/ssh")
	id.User, id.AuthorizedKeys = "", nil
	must(t, WriteIdentity(dir, id))
	for _, p := range []string{"boot/firmware/userconf.txt", "boot/firmware/ssh", "etc/ssh/authorized_keys/admin"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("%s kept after fleet.yaml dropped the user", p)
		}
	}
	// leftovers of the atomic writes
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if strings.HasSuffix(p, ".pifleet-tmp") {
			t.Errorf("temp file left: %s", p)
		}
		return nil
	})
}

func TestWriteIdentityRejects(t *testing.T) {
	for name, id := range map[string]Identity{
		"newline hostname": {Hostname: "pi\n127.0.0.1 evil", Serial: "1"},
		"no serial or mac": {Hostname: "pi"},
		"bad user":         {Hostname: "pi", Serial: "1", User: "Root:0"},
		"userconf refuses": {Hostname: "pi", Serial: "1", User: "_ops"},
		"underscore":       {Hostname: "pi", Serial: "1", User: "ops_team"},
		"colon in hash":    {Hostname: "pi", Serial: "1", User: "u", PasswordHash: "a:b"},
		"hash, no user":    {Hostname: "pi", Serial: "1", PasswordHash: "x"},
		"two-line key":     {Hostname: "pi", Serial: "1", User: "u", AuthorizedKeys: []string{"ssh-ed25519 AAAA\nssh-rsa BBBB"}},
	} {
		dir := t.TempDir()
		if err := WriteIdentity(dir, id); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: wrote %v", name, ents)
		}
	}
}
