package images

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pifleet/pifleet/test/require"
)

// TestHostKeysReadByOpenSSH: OpenSSH itself reads every generated private key and derives
// the public key the .pub file holds; types, sizes, comment and modes are what ssh-keygen -A
// would have written.
func TestHostKeysReadByOpenSSH(t *testing.T) {
	keygen := require.Tool(t, "ssh-keygen", "openssh-client")
	dir := t.TempDir()
	if err := WriteIdentity(dir, Identity{Hostname: "pi-09", Serial: "10000000abcdef09"}); err != nil {
		t.Fatal(err)
	}
	want := []struct{ name, typ, bits string }{
		{"ed25519", "ssh-ed25519", "256"},
		{"ecdsa", "ecdsa-sha2-nistp256", "256"},
		{"rsa", "ssh-rsa", "3072"},
	}
	for _, w := range want {
		priv := filepath.Join(dir, "etc/ssh/ssh_host_"+w.name+"_key")
		for p, mode := range map[string]os.FileMode{priv: 0o600, priv + ".pub": 0o644} {
			fi, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != mode {
				t.Errorf("%s: mode %v, want %v", p, fi.Mode(), mode)
			}
		}
		pubData, err := os.ReadFile(priv + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		pub := string(pubData)
		f := strings.Fields(pub)
		if len(f) != 3 || f[0] != w.typ || f[2] != "root@pi-09" || !strings.HasSuffix(pub, "\n") || strings.Count(pub, "\n") != 1 {
			t.Errorf("%s.pub = %q, want one line %q <base64> root@pi-09", w.name, pub, w.typ)
		}
		// -y prints "type base64 comment" from the private key file alone.
		if got := run(t, keygen, "-y", "-f", priv); strings.TrimSpace(got) != strings.TrimSpace(pub) {
			t.Errorf("%s: ssh-keygen -y says %q, .pub says %q", w.name, got, pub)
		}
		if got := strings.Fields(run(t, keygen, "-l", "-f", priv)); len(got) < 1 || got[0] != w.bits {
			t.Errorf("%s: ssh-keygen -l says %v, want %s bits", w.name, got, w.bits)
		}
	}
}
