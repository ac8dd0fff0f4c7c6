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
  busybox udhcpc isc-dhcp-client tftp-hpa libnfs-utils \
  qemu-system-arm u-boot-qemu u-boot-tools \
  attr e2fsprogs mtools dosfstools fdisk \
  >/dev/null
