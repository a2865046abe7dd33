#!/usr/bin/env bash
# Installs the pinned real components the integration tests and the demo run against,
# staticcheck for `make lint`, and controller-gen for `make generate` and the unit test that
# checks daemonset/crds against it: Go tools built from this directory's module (versions
# pinned by its go.mod `tool` lines, so no `go install pkg@version` and no version-list
# lookups), plus runc and busybox-static from apt.
# Idempotent: the Go build is skipped when the stamp (go.mod + go.sum + Go version) matches.
#
# Env: PULLGUARD_TOOLS_BIN  where binaries go (default <repo>/.tools/bin)
#      PULLGUARD_SKIP_APT=1 do not touch apt (report what is missing instead)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${PULLGUARD_TOOLS_BIN:-$repo/.tools/bin}

log() { printf 'install.sh: %s\n' "$*" >&2; }
# shellcheck source=apt.sh
. "$here/apt.sh"

# The tool packages; binaries are named after the last path element.
tools=(
	github.com/containerd/containerd/v2/cmd/containerd
	github.com/containerd/containerd/v2/cmd/ctr
	github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
	github.com/distribution/distribution/v3/cmd/registry
	sigs.k8s.io/cri-tools/cmd/crictl
	github.com/notaryproject/notation/cmd/notation
	oras.land/oras/cmd/oras
	github.com/google/go-containerregistry/cmd/crane
	honnef.co/go/tools/cmd/staticcheck
	sigs.k8s.io/controller-tools/cmd/controller-gen
)

install_apt() {
	local missing=()
	command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
	# The static busybox is copied into test images, so the dynamic one is not enough.
	if [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null || true)" != "install ok installed" ]; then
		missing+=(busybox-static)
	fi
	apt_install_missing "runc, busybox-static" "${missing[@]}"
}

build_tools() {
	local want have=""
	want=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -d' ' -f1)-$(go env GOVERSION)
	[ -f "$bin/.stamp" ] && have=$(cat "$bin/.stamp")
	local all=1 t
	for t in "${tools[@]}"; do [ -x "$bin/${t##*/}" ] || all=0; done
	if [ "$have" = "$want" ] && [ $all = 1 ]; then
		log "tools up to date in $bin (stamp $want)"
		return
	fi
	mkdir -p "$bin"
	rm -f "$bin/.stamp"
	log "building ${#tools[@]} tools into $bin (a cold build takes minutes)"
	local start=$SECONDS
	# -C keeps the build inside the tools module whatever the caller's directory.
	GOFLAGS=-buildvcs=false GOWORK=off go -C "$here" build -trimpath -o "$bin/" "${tools[@]}"
	echo "$want" >"$bin/.stamp"
	log "built in $((SECONDS - start))s: $(cd "$bin" && ls | tr '\n' ' ')"
}

install_apt
build_tools
