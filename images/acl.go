package images

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// POSIX ACLs reach the import in three spellings and leave it in one. setxattr takes only the
// kernel's xattr format (posix_acl_xattr_header version 2, every entry 8 bytes, little
// endian); ext4 stores its own (ext4_acl_header version 1, 4-byte entries for
// USER_OBJ/GROUP_OBJ/MASK/OTHER and 8-byte ones for USER/GROUP); tar's PAX headers carry
// either the raw xattr (SCHILY.xattr.system.posix_acl_*) or the text form
// (SCHILY.acl.access/default, "user:name:rw-[:id]" entries). Every ACL is parsed, checked as
// the kernel checks it and written back in the canonical xattr form, so the manifest digest
// is what getxattr on the imported tree returns.

// The two xattrs that hold POSIX ACLs.
const (
	xattrACLAccess  = "system.posix_acl_access"
	xattrACLDefault = "system.posix_acl_default"
)

// ACL entry tags (linux/posix_acl.h).
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
)

const (
	aclXattrVersion = 2
	ext4ACLVersion  = 1
	// aclUndefinedID is what the kernel writes as the id of entries without a qualifier.
	aclUndefinedID = 0xFFFFFFFF
	// maxACLEntries bounds one ACL: the kernel's own limit for a 64 KiB xattr value is
	// (65536-4)/8 entries.
	maxACLEntries = (64<<10 - 4) / 8
)

// aclEntry is one entry of a POSIX ACL; ID is meaningful for aclUser and aclGroup only.
type aclEntry struct {
	Tag  uint16
	Perm uint16
	ID   uint32
}

func isACLXattr(name string) bool { return name == xattrACLAccess || name == xattrACLDefault }

// parseExt4ACL reads ext4's on-disk ACL format (fs/ext4/acl.h).
func parseExt4ACL(b []byte) ([]aclEntry, error) {
	le := binary.LittleEndian
	if len(b) < 4 {
		return nil, fmt.Errorf("ext4 ACL of %d bytes has no header", len(b))
	}
	if v := le.Uint32(b); v != ext4ACLVersion {
		return nil, fmt.Errorf("ext4 ACL version %d, want %d", v, ext4ACLVersion)
	}
	var acl []aclEntry
	for p := b[4:]; len(p) > 0; {
		if len(p) < 4 || len(acl) >= maxACLEntries {
			return nil, fmt.Errorf("ext4 ACL entry %d is cut short", len(acl))
		}
		e := aclEntry{Tag: le.Uint16(p), Perm: le.Uint16(p[2:]), ID: aclUndefinedID}
		switch e.Tag {
		case aclUserObj, aclGroupObj, aclMask, aclOther:
			p = p[4:]
		case aclUser, aclGroup:
			if len(p) < 8 {
				return nil, fmt.Errorf("ext4 ACL entry %d is cut short", len(acl))
			}
			e.ID = le.Uint32(p[4:])
			p = p[8:]
		default:
			return nil, fmt.Errorf("ext4 ACL entry %d has unknown tag %#x", len(acl), e.Tag)
		}
		acl = append(acl, e)
	}
	return acl, nil
}

// parseXattrACL reads the kernel's xattr format (include/uapi/linux/posix_acl_xattr.h).
func parseXattrACL(b []byte) ([]aclEntry, error) {
	le := binary.LittleEndian
	if len(b) < 4 {
		return nil, fmt.Errorf("ACL of %d bytes has no header", len(b))
	}
	if v := le.Uint32(b); v != aclXattrVersion {
		return nil, fmt.Errorf("ACL version %d, want %d", v, aclXattrVersion)
	}
	if (len(b)-4)%8 != 0 || (len(b)-4)/8 > maxACLEntries {
		return nil, fmt.Errorf("ACL of %d bytes is not a whole number of entries", len(b))
	}
	acl := make([]aclEntry, 0, (len(b)-4)/8)
	for p := b[4:]; len(p) > 0; p = p[8:] {
		e := aclEntry{Tag: le.Uint16(p), Perm: le.Uint16(p[2:]), ID: le.Uint32(p[4:])}
		if e.Tag != aclUser && e.Tag != aclGroup {
			e.ID = aclUndefinedID
		}
		acl = append(acl, e)
	}
	return acl, nil
}

// encodeXattrACL writes the kernel's xattr format exactly as getxattr returns it.
func encodeXattrACL(acl []aclEntry) []byte {
	b := make([]byte, 4, 4+8*len(acl))
	binary.LittleEndian.PutUint32(b, aclXattrVersion)
	for _, e := range acl {
		id := e.ID
		if e.Tag != aclUser && e.Tag != aclGroup {
			id = aclUndefinedID
		}
		b = binary.LittleEndian.AppendUint16(b, e.Tag)
		b = binary.LittleEndian.AppendUint16(b, e.Perm)
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	return b
}

// checkACL applies the kernel's rules (posix_acl_valid): one USER_OBJ first, then USER
// entries, one GROUP_OBJ, GROUP entries, a MASK (required when there are USER or GROUP
// entries), one OTHER last; permissions rwx only. setxattr refuses anything else with
// EINVAL, which would say nothing about why.
func checkACL(acl []aclEntry) error {
	const (
		wantUserObj = iota
		inUsers
		inGroups
		wantOther
		done
	)
	state, needMask := wantUserObj, false
	for i, e := range acl {
		if e.Perm&^7 != 0 {
			return fmt.Errorf("ACL entry %d has permission bits %#o beyond rwx", i, e.Perm)
		}
		ok := false
		switch e.Tag {
		case aclUserObj:
			ok, state = state == wantUserObj, inUsers
		case aclUser:
			ok, needMask = state == inUsers, true
		case aclGroupObj:
			ok, state = state == inUsers, inGroups
		case aclGroup:
			ok, needMask = state == inGroups, true
		case aclMask:
			ok, state = state == inGroups, wantOther
		case aclOther:
			ok = state == wantOther || (state == inGroups && !needMask)
			state = done
		}
		if (e.Tag == aclUser || e.Tag == aclGroup) && e.ID == aclUndefinedID {
			return fmt.Errorf("ACL entry %d names id %d, which no user or group can have", i, e.ID)
		}
		if !ok {
			return fmt.Errorf("ACL entry %d (tag %#x) is out of order or repeated", i, e.Tag)
		}
	}
	if len(acl) > 0 && state != done {
		return errors.New("ACL lacks the user::, group:: or other:: entry (or the mask:: that named entries need)")
	}
	return nil
}

// aclMode returns the permission bits an access ACL gives the owner, the group class (the
// mask when there is one) and others, as the kernel sets them on the inode; equiv is true when
// the ACL says nothing beyond those bits (then the kernel keeps no xattr at all).
func aclMode(acl []aclEntry) (perm uint32, equiv bool) {
	var user, group, mask, other uint32
	hasMask, equiv := false, true
	for _, e := range acl {
		p := uint32(e.Perm)
		switch e.Tag {
		case aclUserObj:
			user = p
		case aclGroupObj:
			group = p
		case aclMask:
			mask, hasMask = p, true
		case aclOther:
			other = p
		default:
			equiv = false
		}
	}
	if hasMask {
		group = mask
		equiv = false
	}
	return user<<6 | group<<3 | other, equiv
}

// canonicalACLs checks the ACL xattrs of e (already in the xattr format) and writes them back
// canonically; it drops what setxattr would not store (an empty ACL, an access ACL that only
// repeats the mode) and gives e.Mode the permission bits setting the access ACL leaves.
func canonicalACLs(e *entry) error {
	for _, name := range []string{xattrACLAccess, xattrACLDefault} {
		v, ok := e.Xattrs[name]
		if !ok {
			continue
		}
		t := e.Mode & typeMask
		switch {
		case t == typeLnk:
			return fmt.Errorf("%s on a symlink (Linux keeps no ACLs on symlinks)", name)
		case name == xattrACLDefault && t != typeDir:
			return fmt.Errorf("%s on a non-directory (only directories have default ACLs)", name)
		}
		acl, err := parseXattrACL(v)
		if err == nil {
			err = checkACL(acl)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if len(acl) == 0 {
			delete(e.Xattrs, name)
			continue
		}
		if name == xattrACLAccess {
			perm, equiv := aclMode(acl)
			e.Mode = e.Mode&^0o777 | perm
			if equiv {
				delete(e.Xattrs, name)
				continue
			}
		}
		e.Xattrs[name] = encodeXattrACL(acl)
	}
	if len(e.Xattrs) == 0 {
		e.Xattrs = nil
	}
	return nil
}

// ext4ACLsToXattr converts the ACL xattrs read from an ext4 inode to the xattr format.
func ext4ACLsToXattr(x map[string][]byte) error {
	for _, name := range []string{xattrACLAccess, xattrACLDefault} {
		v, ok := x[name]
		if !ok {
			continue
		}
		acl, err := parseExt4ACL(v)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		x[name] = encodeXattrACL(acl)
	}
	return nil
}

// maxACLText bounds a text ACL from a PAX header, as maxTarXattr does a raw one.
const maxACLText = 64 << 10

// parseTextACL reads the text form tar writes (acl(5): "user::rw-", "user:alice:r--",
// "group:4:r-x", star/bsdtar's "user:alice:r--:1000" with the id appended; entries separated
// by newlines or commas, "#" comments ignored; u/g/m/o abbreviations accepted). A name
// without an id is looked up in names; with nil names it is an error wrapping errACLName.
func parseTextACL(s string, names *nameDB) ([]aclEntry, error) {
	if len(s) > maxACLText {
		return nil, fmt.Errorf("text ACL of %d bytes", len(s))
	}
	var acl []aclEntry
	for _, line := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == ',' }) {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if len(acl) >= maxACLEntries {
			return nil, errors.New("text ACL has too many entries")
		}
		f := strings.Split(line, ":")
		if len(f) < 3 || len(f) > 4 {
			return nil, fmt.Errorf("text ACL entry %q is not tag:qualifier:perms", line)
		}
		tag, qual, perms := f[0], f[1], f[2]
		var e aclEntry
		switch tag {
		case "user", "u":
			e.Tag = aclUserObj
		case "group", "g":
			e.Tag = aclGroupObj
		case "mask", "m":
			e.Tag = aclMask
		case "other", "o":
			e.Tag = aclOther
		default:
			return nil, fmt.Errorf("text ACL entry %q has unknown tag %q", line, tag)
		}
		e.ID = aclUndefinedID
		if qual != "" {
			switch e.Tag {
			case aclUserObj:
				e.Tag = aclUser
			case aclGroupObj:
				e.Tag = aclGroup
			default:
				return nil, fmt.Errorf("text ACL entry %q: %s entries take no qualifier", line, tag)
			}
			id, err := aclQualifier(qual, f, e.Tag, names)
			if err != nil {
				return nil, fmt.Errorf("text ACL entry %q: %w", line, err)
			}
			e.ID = id
		} else if len(f) == 4 {
			return nil, fmt.Errorf("text ACL entry %q has an id but no name", line)
		}
		for _, c := range perms {
			b, ok := aclPermBit(c)
			if !ok || (b != 0 && e.Perm&b != 0) {
				return nil, fmt.Errorf("text ACL entry %q: permissions %q are not r, w, x and -", line, perms)
			}
			e.Perm |= b
		}
		acl = append(acl, e)
	}
	return acl, nil
}

func aclPermBit(c rune) (uint16, bool) {
	switch c {
	case 'r':
		return 4, true
	case 'w':
		return 2, true
	case 'x':
		return 1, true
	case '-':
		return 0, true
	}
	return 0, false
}

func aclQualifier(qual string, f []string, tag uint16, names *nameDB) (uint32, error) {
	if id, err := strconv.ParseUint(qual, 10, 32); err == nil {
		return uint32(id), nil
	}
	if len(f) == 4 { // star's name:perms:id
		id, err := strconv.ParseUint(f[3], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("id %q is not a number", f[3])
		}
		return uint32(id), nil
	}
	kind, db, ids := "user", "passwd", map[string]uint32(nil)
	if tag == aclGroup {
		kind, db = "group", "group"
	}
	if names != nil {
		ids = names.users
		if tag == aclGroup {
			ids = names.groups
		}
	}
	id, ok := ids[qual]
	if !ok {
		return 0, fmt.Errorf("%s %q: %w /etc/%s", kind, qual, errACLName, db)
	}
	return id, nil
}

// errACLName is a text ACL naming a user or group that the name database lacks.
var errACLName = errors.New("not found in the image's")

// nameDB maps the user and group names of an image to ids, read from its /etc/passwd and
// /etc/group: a tarball's text ACLs name users as the image knows them.
type nameDB struct{ users, groups map[string]uint32 }

// parseNameDB reads passwd(5)/group(5) lines: name:password:id:...
func parseNameDB(b []byte) map[string]uint32 {
	m := map[string]uint32{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 4)
		if len(f) < 3 || f[0] == "" || strings.HasPrefix(f[0], "#") {
			continue
		}
		if id, err := strconv.ParseUint(f[2], 10, 32); err == nil {
			if _, dup := m[f[0]]; !dup {
				m[f[0]] = uint32(id)
			}
		}
	}
	return m
}
