package nfsroot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// POSIX ACLs as Linux keeps them: the system.posix_acl_access and system.posix_acl_default
// xattrs in the kernel's xattr format (version 2), which is what an imported image carries
// and what the overlay stores. The rules here are the kernel's (fs/posix_acl.c): validity,
// the access check, mode equivalence and inheritance at create.

// ACL entry tags (e_tag) and the id the kernel stores for entries that name nobody.
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20

	aclUndefinedID = 0xffffffff
	// maxACLEntries bounds an ACL from the wire or the disk, as NFS_ACL_MAX_ENTRIES does.
	maxACLEntries = 1024

	xattrACLAccess  = "system.posix_acl_access"
	xattrACLDefault = "system.posix_acl_default"
	aclXattrVersion = 2
)

// aclEntry is one entry; id matters only for aclUser and aclGroup.
type aclEntry struct {
	tag  uint32
	perm uint32
	id   uint32
}

// posixACL is a valid ACL in canonical order (aclValid); nil means "none".
type posixACL []aclEntry

var errBadACL = errors.New("invalid ACL")

// parseACLXattr decodes a posix_acl xattr value and checks it as the kernel would.
func parseACLXattr(b []byte) (posixACL, error) {
	if len(b) < 4 || binary.LittleEndian.Uint32(b) != aclXattrVersion {
		return nil, fmt.Errorf("acl xattr: not version %d: %w", aclXattrVersion, errBadACL)
	}
	b = b[4:]
	if len(b)%8 != 0 || len(b)/8 > maxACLEntries {
		return nil, fmt.Errorf("acl xattr: %d bytes of entries: %w", len(b), errBadACL)
	}
	acl := make(posixACL, len(b)/8)
	for i := range acl {
		e := b[i*8:]
		acl[i] = aclEntry{
			tag:  uint32(binary.LittleEndian.Uint16(e)),
			perm: uint32(binary.LittleEndian.Uint16(e[2:])),
			id:   binary.LittleEndian.Uint32(e[4:]),
		}
		if acl[i].tag != aclUser && acl[i].tag != aclGroup {
			acl[i].id = aclUndefinedID
		}
	}
	if err := acl.valid(); err != nil {
		return nil, fmt.Errorf("acl xattr: %w", err)
	}
	return acl, nil
}

// xattr encodes the ACL in the kernel's xattr format.
func (acl posixACL) xattr() []byte {
	b := make([]byte, 4, 4+8*len(acl))
	binary.LittleEndian.PutUint32(b, aclXattrVersion)
	for _, e := range acl {
		id := uint32(aclUndefinedID)
		if e.tag == aclUser || e.tag == aclGroup {
			id = e.id
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(e.tag))
		b = binary.LittleEndian.AppendUint16(b, uint16(e.perm))
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	return b
}

// valid checks the canonical form: one owner entry, named users in ascending id order,
// one owning-group entry, named groups ascending, a mask (required when anything is
// named), one other entry; permissions within rwx. Like posix_acl_valid, plus: no id twice.
func (acl posixACL) valid() error {
	if len(acl) > maxACLEntries {
		return errBadACL
	}
	state := uint32(aclUserObj)
	needsMask := false
	var last uint32
	first := true
	for _, e := range acl {
		if e.perm&^7 != 0 {
			return errBadACL
		}
		switch e.tag {
		case aclUserObj:
			if state != aclUserObj {
				return errBadACL
			}
			state, first = aclUser, true
		case aclUser, aclGroup:
			if state != e.tag || e.id == aclUndefinedID || (!first && e.id <= last) {
				return errBadACL
			}
			last, first, needsMask = e.id, false, true
		case aclGroupObj:
			if state != aclUser {
				return errBadACL
			}
			state, first = aclGroup, true
		case aclMask:
			if state != aclGroup {
				return errBadACL
			}
			state = aclOther
		case aclOther:
			if state != aclOther && (state != aclGroup || needsMask) {
				return errBadACL
			}
			state = 0
		default:
			return errBadACL
		}
	}
	if state != 0 {
		return errBadACL
	}
	return nil
}

// sortACL puts entries in canonical order (tag, then id), as posix_acl_from_nfsacl does
// before validating what a client sent.
func sortACL(acl posixACL) {
	slices.SortStableFunc(acl, func(a, b aclEntry) int {
		if a.tag != b.tag {
			return int(a.tag) - int(b.tag)
		}
		switch {
		case a.id < b.id:
			return -1
		case a.id > b.id:
			return 1
		}
		return 0
	})
}

// aclFromMode is the minimal ACL a file without one has: owner, group, other from mode.
func aclFromMode(mode uint32) posixACL {
	return posixACL{
		{tag: aclUserObj, perm: mode >> 6 & 7, id: aclUndefinedID},
		{tag: aclGroupObj, perm: mode >> 3 & 7, id: aclUndefinedID},
		{tag: aclOther, perm: mode & 7, id: aclUndefinedID},
	}
}

// equivMode is posix_acl_equiv_mode: the mode the ACL implies (the group bits are the mask
// when there is one; bits outside 0777 are kept from mode), and whether the mode says all
// the ACL says (no named entries and no mask), in which case no ACL is stored.
func (acl posixACL) equivMode(mode uint32) (uint32, bool) {
	var m uint32
	equiv := true
	for _, e := range acl {
		switch e.tag {
		case aclUserObj:
			m |= e.perm << 6
		case aclGroupObj:
			m |= e.perm << 3
		case aclOther:
			m |= e.perm
		case aclMask:
			m = m&^0o070 | e.perm<<3
			equiv = false
		case aclUser, aclGroup:
			equiv = false
		}
	}
	return mode&^0o777 | m, equiv
}

// createMasq is posix_acl_create_masq: a new object's access ACL is its parent's default
// ACL limited by the mode the creator asked for, and the mode is limited by the ACL. It
// returns a new ACL, the new mode, and whether the ACL is equivalent to the mode.
func (acl posixACL) createMasq(mode uint32) (posixACL, uint32, bool) {
	out := slices.Clone(acl)
	equiv := true
	group, mask := -1, -1
	for i := range out {
		e := &out[i]
		switch e.tag {
		case aclUserObj:
			e.perm &= mode >> 6 & 7
			mode &= e.perm<<6 | ^uint32(0o700)
		case aclUser, aclGroup:
			equiv = false
		case aclGroupObj:
			group = i
		case aclOther:
			e.perm &= mode & 7
			mode &= e.perm | ^uint32(0o007)
		case aclMask:
			mask = i
			equiv = false
		}
	}
	if mask < 0 {
		mask = group
	}
	if mask >= 0 {
		out[mask].perm &= mode >> 3 & 7
		mode &= out[mask].perm<<3 | ^uint32(0o070)
	}
	return out, mode, equiv
}

// permits is the kernel's posix_acl_permission for a caller who is not the owner (the
// owner and root are decided by the mode before an ACL is read): named user entries and
// group entries are limited by the mask; a caller matching a group entry that lacks the
// permission, and no other group entry that has it, is refused without looking at other.
func (acl posixACL) permits(c *cred, gid uint32, want uint32) bool {
	found := false
	for i, e := range acl {
		switch e.tag {
		case aclUser:
			if e.id == c.uid {
				return acl.masked(i, want)
			}
		case aclGroupObj, aclGroup:
			g := gid
			if e.tag == aclGroup {
				g = e.id
			}
			if c.inGroup(g) {
				found = true
				if e.perm&want == want {
					return acl.masked(i, want)
				}
			}
		case aclOther:
			return !found && e.perm&want == want
		}
	}
	return false
}

// masked checks entry i's permission against the mask, if the ACL has one.
func (acl posixACL) masked(i int, want uint32) bool {
	perm := acl[i].perm
	for _, e := range acl[i+1:] {
		if e.tag == aclMask {
			perm &= e.perm
			break
		}
	}
	return perm&want == want
}

// aclCache remembers each file's access ACL (or its absence) so that permission checks of
// callers other than the owner and root cost no xattr read per call. An entry is keyed by
// FileID and valid only for the ctime it was read at: every change to an ACL or a mode
// changes the ctime. Changes through NFS also drop the entry at once (forget), which covers
// two changes within one ctime tick; an entry lives aclTTL at most, so a change behind
// the server's back is seen soon too.
type aclCache struct {
	mu sync.Mutex
	m  map[uint64]aclCached
}

type aclCached struct {
	ctime time.Time
	acl   posixACL
	at    time.Time
}

const (
	maxCachedACLs = 4096 // per export; a full cache starts over
	aclTTL        = 2 * time.Second
)

func (c *aclCache) get(id uint64, ctime time.Time) (posixACL, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || !e.ctime.Equal(ctime) || time.Since(e.at) > aclTTL {
		return nil, false
	}
	return e.acl, true
}

func (c *aclCache) put(id uint64, ctime time.Time, acl posixACL) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedACLs {
		c.m = make(map[uint64]aclCached)
	}
	c.m[id] = aclCached{ctime: ctime, acl: acl, at: time.Now()}
}

func (c *aclCache) forget(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}

// expire forgets entries past their TTL, so an idle board holds none.
func (c *aclCache) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, e := range c.m {
		if time.Since(e.at) > aclTTL {
			delete(c.m, id)
		}
	}
}
