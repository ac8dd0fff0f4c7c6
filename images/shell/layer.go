package shell

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Volatile lists what a layer made by image shell never carries, as patterns on the path
// from the root: "DIR/" means every non-directory below DIR, anything else is a
// path.Match pattern. Directories stay (a package's /var/log/NAME must exist for it to
// start) and so do whiteouts (a deletion is deliberate). It follows `board commit`'s
// exclusions: per-board identity (the identity layer writes it), logs, caches, temp dirs,
// plus apt's package lists (tens of MB per `apt-get update`, stale by the time a board
// uses them; a board runs apt-get update itself) and root's shell histories of the session.
var Volatile = []string{
	"/etc/machine-id", "/var/lib/dbus/machine-id", "/etc/hostname", "/etc/ssh/ssh_host_*",
	"/var/log/", "/var/cache/apt/archives/", "/var/cache/apt/*.bin", "/var/lib/apt/lists/",
	"/tmp/", "/var/tmp/", "/run/",
	"/root/.bash_history", "/root/.ash_history", "/root/.lesshst",
}

// overlay xattrs the kernel may write in an upper that mean nothing in a layer (copy-up
// origins, "dir has copied-up entries", link counts, the upper's uuid). Any other
// trusted.overlay.* but opaque=y is refused: a redirect or metacopy would need the
// kernel's lookup rules, which a layer does not have.
var droppedOverlayXattrs = map[string]bool{
	"trusted.overlay.origin": true, "trusted.overlay.impure": true, "trusted.overlay.nlink": true,
	"trusted.overlay.uuid": true, "trusted.overlay.upper": true,
}

const xattrOpaque = "trusted.overlay.opaque"

// Clean turns an upper the kernel's overlayfs wrote into a layer in pifleet's format:
// whiteouts are char devices 0/0 (each its own inode: the kernel hard-links them to one),
// opaque dirs carry trusted.overlay.opaque=y and nothing else of the overlay's xattrs,
// and what exclude matches (nil: Volatile) is removed. It returns the removed paths.
func Clean(upper string, exclude []string) ([]string, error) {
	if exclude == nil {
		exclude = Volatile
	}
	var dropped []string
	err := filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, upper), "/")
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		whiteout := st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
		if !isDir && !whiteout && excluded(rel, exclude) {
			if err := os.Remove(p); err != nil {
				return err
			}
			dropped = append(dropped, rel)
			return nil
		}
		if whiteout && st.Nlink > 1 {
			return freshWhiteout(p)
		}
		if err := cleanXattrs(p, rel); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return dropped, fmt.Errorf("clean upper %s: %w", upper, err)
	}
	return dropped, nil
}

// excluded reports whether rel matches one of the patterns.
func excluded(rel string, patterns []string) bool {
	for _, pat := range patterns {
		if dir, ok := strings.CutSuffix(pat, "/"); ok {
			if strings.HasPrefix(rel, dir+"/") {
				return true
			}
			continue
		}
		if ok, _ := path.Match(pat, rel); ok {
			return true
		}
	}
	return false
}

// freshWhiteout replaces a hard-linked whiteout by one of its own.
func freshWhiteout(p string) error {
	if err := os.Remove(p); err != nil {
		return err
	}
	return unix.Mknod(p, unix.S_IFCHR|0o000, 0)
}

// cleanXattrs removes the overlay bookkeeping xattrs of p and refuses the ones a layer
// cannot hold.
func cleanXattrs(p, rel string) error {
	names, err := listXattrs(p)
	if err != nil {
		return err
	}
	for _, n := range names {
		switch {
		case droppedOverlayXattrs[n], strings.HasPrefix(n, "trusted.pifleet."):
			// trusted.pifleet.* (the user-space overlay's file ids) is copied up by the
			// kernel from a layer made by board commit; it only means something in an upper.
			if err := unix.Lremovexattr(p, n); err != nil && !errors.Is(err, unix.ENODATA) {
				return err
			}
		case n == xattrOpaque:
			v, err := getXattr(p, n)
			if err != nil {
				return err
			}
			if string(v) != "y" {
				return fmt.Errorf("%s: %s=%q: only \"y\" (opaque) is a layer's", rel, n, v)
			}
		case strings.HasPrefix(n, "trusted.overlay."):
			return fmt.Errorf("%s: %s: the kernel recorded a redirect or metacopy, which a pifleet layer cannot hold", rel, n)
		}
	}
	return nil
}
