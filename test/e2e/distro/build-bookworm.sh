#!/bin/sh
# build-bookworm.sh CACHEDIR: print the path of a Raspberry-Pi-style Debian bookworm arm64 disk
# image (.img.xz) in CACHEDIR, building it first when CACHEDIR has none for the current inputs.
#
# The image is what a user would get by laying out Debian's own Pi packages the way Debian's
# raspi image-specs do: a FAT partition (label RASPIFIRM) with the kernel, initramfs,
# config.txt and cmdline.txt that raspi-firmware's hooks write, and an ext4 root (label
# RASPIROOT, made with mkfs.ext4 -d, POSIX ACLs kept) with systemd, initramfs-tools and
# linux-image-arm64. As in Debian's raspi images, root has an empty password (console login
# without one; sysconf.txt or the admin sets one). Nothing in it knows about pifleet.
#
# Inputs, and so the cache key: this script, mmdebstrap's version and the arm64 candidate
# versions of the packages below as the host's apt sees them. Building takes about 20
# minutes on 2 cores (mmdebstrap under qemu-user, one mkinitramfs); the cache makes later
# runs instant. Needs root, mmdebstrap, qemu-user-static with binfmt_misc, arch-test,
# dosfstools, mtools, e2fsprogs, fdisk (sfdisk) and xz-utils. The log of a build goes to
# stderr.
set -eu

PACKAGES="systemd systemd-sysv udev dbus libpam-systemd initramfs-tools linux-image-arm64 raspi-firmware sudo login passwd kmod iproute2 procps acl"

cache=${1:?usage: build-bookworm.sh CACHEDIR}
script=$(readlink -f "$0")

key=$({
	sha256sum <"$script"
	mmdebstrap --version
	# One apt-cache run: each start reads the whole package cache.
	apt-cache policy $(printf '%s:arm64 ' $PACKAGES) | grep -E '^[^ ]|Candidate:'
} | sha256sum | cut -c1-16)
out="$cache/debian-bookworm-arm64-$key.img.xz"
if [ -s "$out" ]; then
	echo "$out"
	exit 0
fi

mkdir -p "$cache"
# One build at a time per cache; a second caller waits and then finds the image.
exec 9>"$cache/.build-bookworm.lock"
flock 9
if [ -s "$out" ]; then
	echo "$out"
	exit 0
fi

if ! grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
	[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	update-binfmts --enable qemu-aarch64 >&2
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/build-bookworm.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
start=$(date +%s)

# update-initramfs is diverted to true while packages install (the kernel, initramfs-tools and
# raspi-firmware would each run it; under qemu-user one run takes ~10 minutes) and run once at
# the end, which also fires raspi-firmware's hook that fills /boot/firmware.
echo "build-bookworm: mmdebstrap into $root" >&2
mmdebstrap --mode=root --arch=arm64 --variant=apt \
	--include="$(echo $PACKAGES | tr ' ' ',')" \
	--aptopt='Acquire::Languages "none"' \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
	--essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true "$1/usr/sbin/update-initramfs"' \
	--customize-hook='rm "$1/usr/sbin/update-initramfs" && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs' \
	--customize-hook='printf "ROOTPART=LABEL=RASPIROOT\nCONSOLES=\"ttyS1,115200\"\n" >>"$1/etc/default/raspi-firmware"' \
	--customize-hook='printf "LABEL=RASPIROOT / ext4 rw 0 1\nLABEL=RASPIFIRM /boot/firmware vfat rw 0 2\n" >"$1/etc/fstab"' \
	--customize-hook='echo bookworm-pi >"$1/etc/hostname"' \
	--customize-hook='chroot "$1" passwd --delete root' \
	--customize-hook='chroot "$1" update-initramfs -c -k all' \
	bookworm "$root" /etc/apt/sources.list.d/debian.sources >&2

echo "build-bookworm: root built in $(($(date +%s) - start)) s" >&2
test -s "$root/boot/firmware/config.txt"
test -s "$root/boot/firmware/cmdline.txt"
sed -n 's/^\(kernel=\|initramfs \)/  config.txt: &/p' "$root/boot/firmware/config.txt" >&2

# The FAT partition gets /boot/firmware; the root keeps the empty mount point.
mkdir "$work/firm"
mv "$root"/boot/firmware/* "$work/firm/"
boot_mib=$(($(du -sm "$work/firm" | cut -f1) + 64))
root_mib=$(($(du -sm "$root" | cut -f1) * 13 / 10 + 256))
mkfs.vfat -C -F 32 -n RASPIFIRM "$work/firm.img" $((boot_mib * 1024)) >&2
mcopy -s -i "$work/firm.img" "$work"/firm/* ::/
mkfs.ext4 -q -L RASPIROOT -d "$root" "$work/root.img" "${root_mib}M" >&2

# MBR like a Pi SD card: FAT32 (LBA) from 4 MiB, then the ext4 root.
s=2048 # sectors per MiB
truncate -s $(((4 + boot_mib + root_mib) * 1024 * 1024)) "$work/disk.img"
printf 'label: dos\nstart=%d, size=%d, type=c, bootable\nstart=%d, size=%d, type=83\n' \
	$((4 * s)) $((boot_mib * s)) $(((4 + boot_mib) * s)) $((root_mib * s)) | sfdisk -q "$work/disk.img" >&2
dd if="$work/firm.img" of="$work/disk.img" bs=1M seek=4 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$work/disk.img" bs=1M seek=$((4 + boot_mib)) conv=notrunc,sparse status=none
xz -T0 -3 -c "$work/disk.img" >"$out.tmp"
mv "$out.tmp" "$out"
echo "build-bookworm: $out built in $(($(date +%s) - start)) s" >&2
echo "$out"
