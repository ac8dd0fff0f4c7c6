#!/usr/bin/env bash
# Installs the Debian packages pifleet's tests, benchmarks and demo image need.
# Idempotent: safe to run on every CI run and on a developer machine.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
src=/etc/apt/sources.list.d/debian.sources
# The Pi firmware (raspi-firmware) lives in non-free-firmware; the demo image's kernel and
# busybox are arm64 packages.
if [ -f "$src" ] && ! grep -q non-free-firmware "$src"; then
  sed -i 's/^Components: main$/Components: main non-free-firmware/' "$src"
fi
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  iproute2 kmod cpio xz-utils zstd gzip curl ca-certificates \
  busybox udhcpc isc-dhcp-client dnsmasq-base tftp-hpa libnfs-utils \
  qemu-system-arm u-boot-qemu u-boot-tools \
  attr acl e2fsprogs mtools dosfstools fdisk openssh-client \
  klibc-utils chromium \
  make git systemd \
  mmdebstrap qemu-user-static binfmt-support arch-test \
  >/dev/null
# TestDistroBookworm builds a Debian arm64 root with mmdebstrap: arm64 binaries run through
# qemu-user, which needs binfmt_misc (a container may not have it mounted or enabled).
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
update-binfmts --enable qemu-aarch64 || true
# rpcinfo (the portmapper tests) comes with rpcbind, mount.nfs (dracut's NFS client) with
# nfs-common: keep their package scripts from starting a system rpcbind, which would hold
# port 111, or rpc.statd.
if ! command -v rpcinfo >/dev/null || ! command -v mount.nfs >/dev/null; then
  had_policy=$([ -e /usr/sbin/policy-rc.d ] && echo y || true)
  [ -n "$had_policy" ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  apt-get install -y -qq --no-install-recommends rpcbind nfs-common >/dev/null
  [ -n "$had_policy" ] || rm -f /usr/sbin/policy-rc.d
fi
# promtool (the /metrics test) comes with the prometheus package: keep its package
# script from starting a Prometheus server.
if ! command -v promtool >/dev/null; then
  had_policy=$([ -e /usr/sbin/policy-rc.d ] && echo y || true)
  [ -n "$had_policy" ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  [ -n "$had_policy" ] || rm -f /usr/sbin/policy-rc.d
fi
# `make bench` compares against peers; they are installed only when asked for, since
# CI runs `make test`, not the benchmarks.
if [ "${1:-}" = --bench ]; then
  # Keep package scripts from starting system services (tftpd-hpa, rpcbind): the
  # benchmarks start private instances of each peer themselves.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends \
    tftpd-hpa nfs-ganesha nfs-ganesha-vfs rpcbind kea-admin util-linux >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
