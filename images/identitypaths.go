package images

// IdentityPaths are the paths WriteIdentity writes per board, as exclude patterns (absolute,
// path.Match wildcards per component, a match covers what is below): `pifleet board
// commit` leaves them out of a committed layer, so one board's identity never lands in an
// image. Not listed: the account files (/etc/passwd, group, shadow, gshadow) and the home
// dir a non-Pi OS image gets its first user in, because packages a board installs change
// them too (system users) and the identity layer merges the first user in again on top.
func IdentityPaths() []string {
	return []string{
		"/etc/hostname",
		"/etc/hosts",
		"/etc/machine-id",
		"/etc/ssh/ssh_host_*",
		"/" + authorizedKeysDir,
		"/etc/ssh/sshd_config.d/pifleet-authorized-keys.conf",
		"/boot/firmware/userconf.txt",
		"/boot/firmware/ssh",
		"/home/*/.ssh/authorized_keys",
	}
}
