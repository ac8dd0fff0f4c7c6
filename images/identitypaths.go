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

// LayerExcludes is what a new layer leaves out, both `pifleet board commit`'s and `pifleet
// image shell`'s (fleet.yaml's server.commit.exclude adds more to both): the identity
// paths, what a board makes for itself that must differ between boards, and what is
// volatile. Patterns are overlay.ParseExcludes': absolute, with * ? [..] per component. A
// pattern without a trailing slash leaves out the path and all below it; "DIR/" leaves out
// the files below DIR but keeps its directories with their owner, mode and xattrs (a
// package's /var/log/NAME must exist for its service to start). A left-out path is not
// deleted by the layer either: it shows the base image's version.
func LayerExcludes() []string {
	return append(IdentityPaths(),
		// per board, made by the board itself
		"/var/lib/dbus/machine-id",
		"/var/lib/systemd/random-seed",       // seeds the board's RNG at boot: never share it
		"/var/lib/systemd/credential.secret", // the host key of systemd-creds
		"/var/lib/systemd/timesync",
		"/var/lib/NetworkManager", // leases, secret_key (stable IPv6 addresses, MAC randomisation)
		"/var/lib/dhcp",
		"/var/lib/dhcpcd",
		"/etc/dhcpcd.duid",
		"/etc/dhcpcd.secret",
		"/var/lib/bluetooth", // pairings, kept under the board's own adapter address
		"/root/.bash_history",
		"/root/.ash_history",
		"/root/.lesshst",
		"/home/*/.bash_history",
		"/var/swap", // Pi OS's dphys-swapfile
		"/swapfile",
		// volatile: the files go, the dirs stay
		"/var/log/",
		"/var/cache/apt/archives/",
		"/var/cache/apt/*.bin",
		"/var/lib/apt/lists/", // tens of MB after apt-get update, stale when a board reads them
		"/var/lib/systemd/coredump/",
		"/var/crash/",
		"/root/.cache/",
		"/home/*/.cache/",
		"/tmp/",
		"/var/tmp/",
		"/run/",
	)
}
