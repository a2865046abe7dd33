#!/usr/bin/env bash
# Installs what the node tests (integration/node) need besides the Go-built binaries of
# integration/tools and integration/tools-kube:
#   * mmdebstrap and systemd-nspawn (package systemd-container) from Debian's apt;
#   * the node's root filesystem: Debian bookworm (minbase) with systemd as PID 1, dbus, iproute2
#     and runc, built once with mmdebstrap and cached under
#     .tools/node/rootfs-<key>, where <key> is a hash of this script: editing the package list
#     (or anything else here) builds a new one, and older ones are removed.
# The node tests copy that tree for every node they boot; nothing here is ever booted.
#
# A cold rootfs build takes ~1.5 min (measured 86 s on a loaded 2-core machine; ~230 MB);
# a cached one is checked in milliseconds.
#
# Env: PULLGUARD_NODE_CACHE   where rootfs trees go (default <repo>/.tools/node)
#      PULLGUARD_SKIP_APT=1   do not touch apt (report what is missing instead)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${PULLGUARD_NODE_CACHE:-$repo/.tools/node}

log() { printf 'tools-node/install.sh: %s\n' "$*" >&2; }
# shellcheck source=../tools/apt.sh
. "$here/../tools/apt.sh"

# mmdebstrap is pinned to bookworm's version. systemd-container is not: it must be the same
# version as the host's systemd package, which follows bookworm's security updates.
mmdebstrap_version=1.3.5-7
suite=bookworm
# The node's packages. systemd-sysv: systemd as /sbin/init; dbus: systemctl talks to PID 1
# through it; iproute2: `ip` for debugging; runc: containerd's runtime (the same Debian runc
# integration/tools installs on the host); mount: kubelet mounts pod volumes with it. No CNI
# plugins: the node runs host-network pods only (see integration/node/README.md).
packages=systemd,systemd-sysv,dbus,iproute2,runc,mount

install_apt() {
	local missing=()
	if [ "$(dpkg-query -W -f='${Version}' mmdebstrap 2>/dev/null || true)" != "$mmdebstrap_version" ]; then
		missing+=("mmdebstrap=$mmdebstrap_version")
	fi
	command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
	apt_install_missing "mmdebstrap $mmdebstrap_version, systemd-container" "${missing[@]}"
}

build_rootfs() {
	local key dir tmp
	key=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
	dir=$cache/rootfs-$key
	if [ -f "$dir/.pullguard-rootfs" ]; then
		log "node rootfs up to date: $dir"
		return
	fi
	if [ "$(id -u)" != 0 ]; then
		log "building the node rootfs needs root (mmdebstrap's root mode keeps file ownership)"
		return 1
	fi
	mkdir -p "$cache"
	tmp=$cache/.building-$key-$$
	rm -rf "$tmp"
	log "building the node rootfs ($suite, minbase + $packages) into $dir (~1.5 min)"
	local start=$SECONDS
	# No mirror argument: mmdebstrap takes Debian's default archive for the suite (with its
	# updates and security suites), the archive apt installs from on this machine.
	mmdebstrap --quiet --variant=minbase --include="$packages" "$suite" "$tmp"
	# A node's basic identity files; the tests write the rest (hostname, units, configs) into
	# their own copy. mmdebstrap leaves /etc/hosts out, and containerd copies it into every
	# host-network pod.
	printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$tmp/etc/hosts"
	: >"$tmp/etc/machine-id"
	echo "$key" >"$tmp/.pullguard-rootfs"
	mv "$tmp" "$dir"
	# Older trees (another version of this script) are of no use any more.
	local old
	for old in "$cache"/rootfs-*; do
		[ "$old" = "$dir" ] || rm -rf "$old"
	done
	log "built in $((SECONDS - start))s ($(du -sh "$dir" | cut -f1))"
}

install_apt
build_rootfs
# The path the tests use (PULLGUARD_NODE_ROOTFS overrides it).
echo "$cache/rootfs-$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)" >"$cache/current"
