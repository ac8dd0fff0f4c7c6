package images

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// piUserconfigFiles are what Pi OS's userconf-pi package ships; an image with any of them
// creates the first user itself from userconf.txt.
var piUserconfigFiles = []string{
	"usr/lib/userconf-pi/userconf",
	"lib/systemd/system/userconfig.service",
	"usr/lib/systemd/system/userconfig.service",
}

// hasPiUserconfig reports whether the image (its layers, topmost first) has Pi OS's
// userconfig service. Without layers it is taken to be Pi OS, as before images were inspected.
func hasPiUserconfig(image []string) bool {
	if len(image) == 0 {
		return true
	}
	v := layerView(image)
	for _, f := range piUserconfigFiles {
		if v.exists(f) {
			return true
		}
	}
	return false
}

// accountFiles are the files the first user is merged into, with Debian's modes; the
// shadow ones belong to group shadow.
var accountFiles = []struct {
	rel    string
	mode   uint32
	shadow bool
}{
	{"etc/passwd", 0o644, false},
	{"etc/group", 0o644, false},
	{"etc/shadow", 0o640, true},
	{"etc/gshadow", 0o640, true},
}

// firstUserGroups are the groups Pi OS and Debian's installer give the first user; those
// the image has are used.
var firstUserGroups = []string{"adm", "dialout", "cdrom", "sudo", "audio", "video", "plugdev",
	"games", "users", "input", "render", "netdev", "spi", "i2c", "gpio", "bluetooth", "lpadmin"}

// The uid range adduser gives to normal users (FIRST_UID, LAST_UID).
const (
	firstUID = 1000
	lastUID  = 59999
)

// accountDB is one colon-separated account file: its lines, each split into fields.
type accountDB [][]string

func parseAccounts(b []byte) accountDB {
	var db accountDB
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if line == "" {
			continue
		}
		db = append(db, strings.Split(line, ":"))
	}
	return db
}

// find returns the line for name, nil when there is none.
func (db accountDB) find(name string) []string {
	for _, f := range db {
		if f[0] == name {
			return f
		}
	}
	return nil
}

// ids returns the numbers in field i (uids or gids).
func (db accountDB) ids(i int) map[int]bool {
	m := map[int]bool{}
	for _, f := range db {
		if len(f) > i {
			if n, err := strconv.Atoi(f[i]); err == nil {
				m[n] = true
			}
		}
	}
	return m
}

// addMember adds user to the comma-separated member list in field i of group g's line.
func (db accountDB) addMember(g string, i int, user string) {
	f := db.find(g)
	if f == nil || len(f) <= i {
		return
	}
	var members []string
	if f[i] != "" {
		members = strings.Split(f[i], ",")
	}
	if !slices.Contains(members, user) {
		f[i] = strings.Join(append(members, user), ",")
	}
}

func (db accountDB) bytes() []byte {
	var b strings.Builder
	for _, f := range db {
		b.WriteString(strings.Join(f, ":"))
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// writeAccountUser creates id.User in the identity layer for an image without Pi OS's
// userconfig service: merged copies of the image's passwd, group, shadow and gshadow with
// the user (see addAccount), a home dir from the image's /etc/skel and the authorized keys
// in ~/.ssh.
func (l layerWriter) writeAccountUser(id Identity) error {
	img := layerView(id.Image)
	db := map[string]accountDB{}
	for _, f := range accountFiles {
		b, _, err := img.readFile(f.rel)
		if errors.Is(err, os.ErrNotExist) && f.rel == "etc/gshadow" {
			continue // optional, as for shadow's tools
		}
		if err != nil {
			return fmt.Errorf("image /%s: %w", f.rel, err)
		}
		db[f.rel] = parseAccounts(b)
	}
	hash := id.PasswordHash
	if hash == "" {
		hash = lockedPassword
	}
	shell := "/bin/sh"
	if img.exists("usr/bin/bash") || img.exists("bin/bash") {
		shell = "/bin/bash"
	}
	a, err := addAccount(db, id.User, hash, shell)
	if err != nil {
		return err
	}
	for _, f := range accountFiles {
		out, ok := db[f.rel]
		if !ok {
			continue
		}
		g := 0
		if f.shadow {
			g = a.shadowGID
		}
		if err := l.writeAs(f.rel, out.bytes(), f.mode, 0, g); err != nil {
			return fmt.Errorf("/%s: %w", f.rel, err)
		}
	}
	home := strings.TrimPrefix(a.home, "/")
	newHome := !a.existing || !img.exists(home)
	return l.writeHome(id, img, home, newHome, a.uid, a.gid)
}

// account is the user addAccount added or found.
type account struct {
	uid, gid  int
	home      string // absolute, under /home
	existing  bool   // the image had the entry
	shadowGID int    // group of shadow and gshadow
}

// addAccount adds user name to db (the image's etc/passwd, etc/group, etc/shadow and
// optionally etc/gshadow) as Debian's adduser does: the first number from 1000 free as both
// uid and gid, its own group, hash in shadow; or, when the image has an entry of that name with
// a normal uid, keeps it and sets only its hash. Either way the user joins those of
// firstUserGroups the image has. Names of system users and groups are refused.
func addAccount(db map[string]accountDB, name, hash, shell string) (account, error) {
	passwd, group, shadow := db["etc/passwd"], db["etc/group"], db["etc/shadow"]
	gshadow, hasGshadow := db["etc/gshadow"]
	a := account{home: "/home/" + name}
	if pw := passwd.find(name); pw != nil {
		if len(pw) < 7 {
			return a, fmt.Errorf("image /etc/passwd: entry %q has %d fields", name, len(pw))
		}
		u, err := strconv.Atoi(pw[2])
		if err != nil || u < firstUID || u > lastUID {
			return a, fmt.Errorf("user %q is a system user of the image (uid %s); choose another name", name, pw[2])
		}
		g, err := strconv.Atoi(pw[3])
		if err != nil || g < 0 {
			return a, fmt.Errorf("image /etc/passwd: entry %q: gid %q", name, pw[3])
		}
		a.uid, a.gid, a.home, a.existing = u, g, pw[5], true
		if d, ok := strings.CutPrefix(a.home, "/home/"); !ok || d == "" || strings.Contains(d, "/") || d == "." || d == ".." {
			return a, fmt.Errorf("image's user %q has its home %q outside /home", name, a.home)
		}
	} else {
		if g := group.find(name); g != nil {
			if len(g) < 4 {
				return a, fmt.Errorf("image /etc/group: entry %q has %d fields", name, len(g))
			}
			if n, err := strconv.Atoi(g[2]); err != nil || n < firstUID || n > lastUID {
				return a, fmt.Errorf("%q is a system group of the image; choose another user name", name)
			}
		}
		uids, gids := passwd.ids(2), group.ids(2)
		for a.uid = firstUID; a.uid <= lastUID && (uids[a.uid] || gids[a.uid]); a.uid++ {
		}
		if a.uid > lastUID {
			return a, errors.New("image has no free uid for the user")
		}
		a.gid = a.uid
		if g := group.find(name); g != nil {
			a.gid, _ = strconv.Atoi(g[2]) // checked above: 1000..59999
		} else {
			group = append(group, []string{name, "x", strconv.Itoa(a.gid), ""})
			if hasGshadow && gshadow.find(name) == nil {
				gshadow = append(gshadow, []string{name, "!", "", ""})
			}
		}
		passwd = append(passwd, []string{name, "x", strconv.Itoa(a.uid), strconv.Itoa(a.gid), ",,,", a.home, shell})
	}
	if sp := shadow.find(name); sp != nil {
		if len(sp) < 2 {
			return a, fmt.Errorf("image /etc/shadow: entry %q has no password field", name)
		}
		sp[1] = hash
	} else {
		// no last-change day: a fixed file, and no password ageing (0 would force a change)
		shadow = append(shadow, []string{name, hash, "", "0", "99999", "7", "", "", ""})
	}
	for _, g := range firstUserGroups {
		group.addMember(g, 3, name)
		if hasGshadow {
			gshadow.addMember(g, 3, name)
		}
	}
	if g := group.find("shadow"); g != nil && len(g) > 2 {
		if n, err := strconv.Atoi(g[2]); err == nil && n >= 0 {
			a.shadowGID = n
		}
	}
	db["etc/passwd"], db["etc/group"], db["etc/shadow"] = passwd, group, shadow
	if hasGshadow {
		db["etc/gshadow"] = gshadow
	}
	return a, nil
}

// writeHome writes the user's home dir into the layer: /etc/skel's files for a new one, the
// authorized keys, and removes what an earlier call wrote there that is no longer wanted.
func (l layerWriter) writeHome(id Identity, img layerView, home string, newHome bool, uid, gid int) error {
	want := map[string]bool{home: true}
	mode := uint32(0o700)
	if !newHome {
		if _, st, _, err := img.find(home); err == nil {
			mode = st.Mode & 0o7777
		}
	}
	if err := l.mkdirs(filepath.Join(l.dir, "home")); err != nil {
		return err
	}
	if err := l.dirAs(home, mode, uid, gid); err != nil {
		return fmt.Errorf("home: %w", err)
	}
	if newHome && img.exists("etc/skel") {
		if err := l.copySkel(img, "etc/skel", home, uid, gid, want); err != nil {
			return fmt.Errorf("home from /etc/skel: %w", err)
		}
	}
	if len(id.AuthorizedKeys) > 0 {
		want[home+"/.ssh"], want[home+"/.ssh/authorized_keys"] = true, true
		if err := l.dirAs(home+"/.ssh", 0o700, uid, gid); err != nil {
			return fmt.Errorf("~/.ssh: %w", err)
		}
		keys := strings.Join(id.AuthorizedKeys, "\n") + "\n"
		if err := l.writeAs(home+"/.ssh/authorized_keys", []byte(keys), 0o600, uid, gid); err != nil {
			return fmt.Errorf("authorized keys: %w", err)
		}
	}
	// other homes (an earlier user name) and files no longer wanted go
	ents, _ := os.ReadDir(filepath.Join(l.dir, "home"))
	for _, e := range ents {
		if "home/"+e.Name() != home {
			if err := os.RemoveAll(filepath.Join(l.dir, "home", e.Name())); err != nil {
				return err
			}
		}
	}
	return l.prune(home, want)
}

// prune removes what is under rel in the layer and not in want.
func (l layerWriter) prune(rel string, want map[string]bool) error {
	ents, err := os.ReadDir(filepath.Join(l.dir, rel))
	if err != nil {
		return err
	}
	for _, e := range ents {
		r := rel + "/" + e.Name()
		if !want[r] {
			if err := os.RemoveAll(filepath.Join(l.dir, r)); err != nil {
				return err
			}
			continue
		}
		if e.IsDir() {
			if err := l.prune(r, want); err != nil {
				return err
			}
		}
	}
	return nil
}

// copySkel copies the image's dir src (dirs, regular files, symlinks) to dst in the layer,
// owned by uid:gid.
func (l layerWriter) copySkel(img layerView, src, dst string, uid, gid int, want map[string]bool) error {
	names, err := img.readDir(src)
	if err != nil {
		return err
	}
	for _, n := range names {
		s, d := src+"/"+n, dst+"/"+n
		real, st, _, err := img.find(s)
		if err != nil {
			return err
		}
		switch st.Mode & typeMask {
		case typeDir:
			want[d] = true
			if err := l.dirAs(d, st.Mode&0o777, uid, gid); err != nil {
				return err
			}
			if err := l.copySkel(img, s, d, uid, gid, want); err != nil {
				return err
			}
		case typeReg:
			want[d] = true
			b, _, err := img.readFile(s)
			if err != nil {
				return err
			}
			if err := l.writeAs(d, b, st.Mode&0o777, uid, gid); err != nil {
				return err
			}
		case typeLnk:
			want[d] = true
			target, err := os.Readlink(real)
			if err != nil {
				return err
			}
			if err := l.symlinkAs(d, target, uid, gid); err != nil {
				return err
			}
		}
	}
	return nil
}

// dirAs makes the dir rel in the layer with mode and owner (its parent must exist).
func (l layerWriter) dirAs(rel string, mode uint32, uid, gid int) error {
	p := filepath.Join(l.dir, filepath.FromSlash(rel))
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil || st.Mode&typeMask != typeDir {
		os.RemoveAll(p)
		if err := os.Mkdir(p, 0o700); err != nil {
			return err
		}
		st = unix.Stat_t{}
		unix.Lstat(p, &st)
	}
	if int(st.Uid) != uid || int(st.Gid) != gid {
		if err := unix.Lchown(p, uid, gid); err != nil {
			return err
		}
	}
	if st.Mode&0o7777 != mode {
		return unix.Chmod(p, mode)
	}
	return nil
}

// symlinkAs makes the symlink rel -> target in the layer, owned by uid:gid.
func (l layerWriter) symlinkAs(rel, target string, uid, gid int) error {
	p := filepath.Join(l.dir, filepath.FromSlash(rel))
	var st unix.Stat_t
	if unix.Lstat(p, &st) == nil && st.Mode&typeMask == typeLnk && int(st.Uid) == uid && int(st.Gid) == gid {
		if t, err := os.Readlink(p); err == nil && t == target {
			return nil
		}
	}
	os.RemoveAll(p)
	if err := os.Symlink(target, p); err != nil {
		return err
	}
	return unix.Lchown(p, uid, gid)
}

// dropAccountUser removes the account files and homes writeAccountUser wrote.
func (l layerWriter) dropAccountUser() error {
	for _, f := range accountFiles {
		if err := os.Remove(filepath.Join(l.dir, f.rel)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return os.RemoveAll(filepath.Join(l.dir, "home"))
}
