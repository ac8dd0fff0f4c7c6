package images

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// Identity is what makes one board unique. It is written into a per-board layer (the
// topmost lower of that board's overlay), so a board reset that wipes the upper keeps it.
type Identity struct {
	// Hostname goes to /etc/hostname and /etc/hosts.
	Hostname string
	// Serial is the board's serial number (the Pi's, as in fleet.yaml); the machine-id is
	// derived from it, or from MAC when there is no serial.
	Serial string
	// MAC is the board's Ethernet address, any common spelling.
	MAC string
	// User, when set, is the first user. On Pi OS it is created by Pi OS's userconfig
	// service at first boot (it renames the image's uid-1000 user, so neither its console
	// prompt nor the desktop wizard asks for one); on an image without that service (stock
	// Debian) WriteIdentity adds it to merged copies of the image's account files.
	User string
	// PasswordHash is a crypt(3) hash (e.g. from `openssl passwd -6`); empty leaves the
	// password locked ("*": no password opens it; SSH keys and sudo NOPASSWD still work).
	PasswordHash string
	// AuthorizedKeys are OpenSSH public key lines that may log in as User; with any, sshd is
	// switched on (Pi OS ships it off).
	AuthorizedKeys []string
	// Image is the board's image layers below the identity layer, topmost first (as overlay
	// lowers). It tells Pi OS (userconfig service) from other images and is where the
	// account files, /etc/skel and the shells are read; empty means Pi OS.
	Image []string
}

var (
	hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	// userRE is what Pi OS's userconf-service accepts; a name it refuses sends it back to
	// asking for a user on the console.
	userRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
)

// check rejects values that would corrupt the files they land in (a newline in a hostname
// adds a line to /etc/hosts, a colon in a hash splits userconf.txt).
func (id Identity) check() error {
	if !hostnameRE.MatchString(id.Hostname) {
		return fmt.Errorf("hostname %q: use letters, digits and '-' (at most 63)", id.Hostname)
	}
	if id.Serial == "" && id.MAC == "" {
		return fmt.Errorf("board %s: a serial or a MAC is needed to derive a stable machine-id", id.Hostname)
	}
	if id.User != "" && !userRE.MatchString(id.User) {
		return fmt.Errorf("board %s: user name %q: lower-case letters, digits and '-', starting with a letter, at most 32 (what Pi OS's userconf accepts)", id.Hostname, id.User)
	}
	if strings.ContainsAny(id.PasswordHash, ":\n\r") {
		return fmt.Errorf("board %s: password hash contains ':' or a newline", id.Hostname)
	}
	if id.PasswordHash != "" && id.User == "" {
		return fmt.Errorf("board %s: a password hash without a user", id.Hostname)
	}
	for _, k := range id.AuthorizedKeys {
		if strings.ContainsAny(k, "\n\r") || len(strings.Fields(k)) < 2 {
			return fmt.Errorf("board %s: authorized key %.30q is not one OpenSSH public key line", id.Hostname, k)
		}
	}
	if len(id.AuthorizedKeys) > 0 && id.User == "" {
		return fmt.Errorf("board %s: authorized keys without a user", id.Hostname)
	}
	return nil
}

// MachineID returns the board's /etc/machine-id: 128 bits hashed from the serial (or MAC),
// formatted as systemd wants a random one (a v4 UUID, lower-case hex), stable across resets
// and re-imports so journald and DHCP DUIDs keep recognising the board.
func (id Identity) MachineID() string {
	key := "serial:" + strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(id.Serial, "0x"), "0X"))
	if id.Serial == "" {
		key = "mac:" + strings.ToLower(strings.NewReplacer(":", "", "-", "", ".", "").Replace(id.MAC))
	}
	sum := sha256.Sum256([]byte("pifleet machine-id\x00" + key))
	b := sum[:16]
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return hex.EncodeToString(b)
}

// authorizedKeysDir keeps keys out of the user's home: Pi OS's userconf service renames the
// first user and moves its home at first boot, and a home dir shipped in a layer would be in
// its way. sshd reads this dir through a drop-in.
const authorizedKeysDir = "etc/ssh/authorized_keys"

const sshdDropIn = `# Written by pifleet: keys from fleet.yaml live outside the home dir.
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys/%u
`

// WriteIdentity writes a board's identity files into dir, a per-board overlay layer:
// /etc/hostname, /etc/hosts, /etc/machine-id, SSH host keys (generated on the first call and
// kept afterwards, so they change only when dir is wiped) and, when fleet.yaml names one, the
// first user (userconf.txt for Pi OS's userconfig service, the authorized keys and, with keys,
// the `ssh` flag file that Pi OS's sshswitch service turns into an enabled sshd).
func WriteIdentity(dir string, id Identity) error {
	if err := id.check(); err != nil {
		return err
	}
	fail := func(what string, err error) error {
		return fmt.Errorf("board %s: identity %s: %w", id.Hostname, what, err)
	}
	l := layerWriter{dir: dir}
	files := []struct {
		rel  string
		data string
	}{
		{"etc/hostname", id.Hostname + "\n"},
		{"etc/hosts", "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n\n127.0.1.1\t" + id.Hostname + "\n"},
		{"etc/machine-id", id.MachineID() + "\n"},
	}
	for _, f := range files {
		if err := l.write(f.rel, []byte(f.data), 0o644); err != nil {
			return fail(f.rel, err)
		}
	}
	if err := writeHostKeys(l, id.Hostname); err != nil {
		return fail("SSH host keys", err)
	}
	// what an earlier fleet.yaml asked for and this one does not goes away
	piOS := hasPiUserconfig(id.Image)
	if err := l.dropUserFiles(id, piOS); err != nil {
		return fail("first user", err)
	}
	if id.User == "" {
		return nil
	}
	if !piOS {
		if err := l.writeAccountUser(id); err != nil {
			return fail("first user "+id.User, err)
		}
		return nil
	}
	// userconf-service wants a non-empty password field, else it asks on the console
	hash := id.PasswordHash
	if hash == "" {
		hash = lockedPassword
	}
	if err := l.write("boot/firmware/userconf.txt", []byte(id.User+":"+hash+"\n"), 0o600); err != nil {
		return fail("userconf.txt", err)
	}
	if len(id.AuthorizedKeys) > 0 {
		if err := l.write("boot/firmware/ssh", nil, 0o644); err != nil {
			return fail("ssh flag", err)
		}
		keys := strings.Join(id.AuthorizedKeys, "\n") + "\n"
		if err := l.write(authorizedKeysDir+"/"+id.User, []byte(keys), 0o644); err != nil {
			return fail("authorized keys", err)
		}
		if err := l.write("etc/ssh/sshd_config.d/pifleet-authorized-keys.conf", []byte(sshdDropIn), 0o644); err != nil {
			return fail("sshd drop-in", err)
		}
	}
	return nil
}

// lockedPassword is a crypt(3) field no password matches. Not "!": sshd without PAM refuses
// key logins to accounts locked with "!".
const lockedPassword = "*"

// layerWriter writes root-owned files into an overlay layer dir, replacing them atomically
// so a board booting meanwhile never reads half a file.
type layerWriter struct{ dir string }

func (l layerWriter) write(rel string, data []byte, mode uint32) error {
	return l.writeAs(rel, data, mode, 0, 0)
}

// writeAs is write for a file owned by uid:gid.
func (l layerWriter) writeAs(rel string, data []byte, mode uint32, uid, gid int) error {
	dst := filepath.Join(l.dir, filepath.FromSlash(rel))
	if err := l.mkdirs(filepath.Dir(dst)); err != nil {
		return err
	}
	// The server calls WriteIdentity on every start: an unchanged file keeps its inode and
	// mtime, so clients holding it see no change.
	var st unix.Stat_t
	if unix.Lstat(dst, &st) == nil && st.Mode == typeReg|mode && int(st.Uid) == uid && int(st.Gid) == gid && st.Size == int64(len(data)) {
		if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, data) {
			return nil
		}
	}
	tmp := dst + ".pifleet-tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if uid != 0 || gid != 0 { // a new file is root's already (the server runs as root)
		if err := os.Lchown(tmp, uid, gid); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	if err := unix.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// mkdirs creates directories root-owned 0755: as the topmost lower, a layer's directories
// are the ones a board sees, and /etc, /etc/ssh, /boot/firmware are all root's 0755.
func (l layerWriter) mkdirs(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if err := l.mkdirs(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return os.Chmod(dir, 0o755)
}

// dropUserFiles removes the first-user files an earlier call wrote that id no longer wants:
// the user's files when there is none, the ssh flag and key files when it has no keys, other
// users' key files, the files of the other way (Pi OS's userconf.txt or merged account files)
// than piOS says.
func (l layerWriter) dropUserFiles(id Identity, piOS bool) error {
	var stale []string
	if id.User == "" || piOS {
		if err := l.dropAccountUser(); err != nil {
			return err
		}
	}
	if id.User == "" || !piOS {
		stale = append(stale, "boot/firmware/userconf.txt")
	}
	if len(id.AuthorizedKeys) == 0 || !piOS {
		stale = append(stale, "boot/firmware/ssh", "etc/ssh/sshd_config.d/pifleet-authorized-keys.conf")
	}
	ents, _ := os.ReadDir(filepath.Join(l.dir, authorizedKeysDir))
	for _, e := range ents {
		if e.Name() != id.User || len(id.AuthorizedKeys) == 0 || !piOS {
			stale = append(stale, authorizedKeysDir+"/"+e.Name())
		}
	}
	for _, rel := range stale {
		if err := os.Remove(filepath.Join(l.dir, filepath.FromSlash(rel))); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func (l layerWriter) exists(rel string) bool {
	_, err := os.Stat(filepath.Join(l.dir, filepath.FromSlash(rel)))
	return err == nil
}

// writeHostKeys generates the missing host keys: ed25519, ecdsa P-256 and rsa 3072, in
// OpenSSH's own private key format, as ssh-keygen -A writes them.
func writeHostKeys(l layerWriter, host string) error {
	comment := "root@" + host
	gens := []struct {
		name string
		gen  func() (crypto.Signer, error)
	}{
		{"ed25519", func() (crypto.Signer, error) {
			_, k, err := ed25519.GenerateKey(rand.Reader)
			return k, err
		}},
		{"ecdsa", func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }},
		{"rsa", func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 3072) }},
	}
	for _, g := range gens {
		rel := "etc/ssh/ssh_host_" + g.name + "_key"
		if l.exists(rel) && l.exists(rel+".pub") {
			continue
		}
		k, err := g.gen()
		if err != nil {
			return fmt.Errorf("%s: %w", g.name, err)
		}
		priv, pub, err := marshalHostKey(k, comment)
		if err != nil {
			return fmt.Errorf("%s: %w", g.name, err)
		}
		if err := l.write(rel, priv, 0o600); err != nil {
			return err
		}
		if err := l.write(rel+".pub", pub, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// marshalHostKey returns the unencrypted OpenSSH private key file and the public key line
// ("type base64 comment") of k.
func marshalHostKey(k crypto.Signer, comment string) (priv, pub []byte, err error) {
	block, err := ssh.MarshalPrivateKey(k, comment)
	if err != nil {
		return nil, nil, err
	}
	sp, err := ssh.NewPublicKey(k.Public())
	if err != nil {
		return nil, nil, err
	}
	line := bytes.TrimSuffix(ssh.MarshalAuthorizedKey(sp), []byte("\n"))
	return pem.EncodeToMemory(block), append(append(line, ' '), comment+"\n"...), nil
}
