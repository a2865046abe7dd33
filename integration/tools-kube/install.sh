#!/usr/bin/env bash
# Builds a real Kubernetes v1.34.4 (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet) and etcd v3.6.4 from Go modules pinned by this directory's go.mod: the API server and
# etcd for the tests in integration/kube that run pullguard's CRDs and policy-sync agent against a
# real API server; all of them for the node tests in integration/node, which run a real kubelet on
# a systemd node and let the real controllers roll out pullguard's DaemonSet. No downloads besides
# Go modules; no container images.
# Idempotent: skipped when the stamp (go.mod + go.sum + Go version) matches and every binary exists.
#
# A cold build of kube-apiserver and etcd takes ~9 min on 2 idle cores (~1.8 GB peak memory;
# 54 min measured on a 2-core machine shared with other builds, load average 20-58); kubelet,
# kube-controller-manager and kube-scheduler share most of its packages and add ~2-3 min each
# on a loaded 2-core machine. CI should cache .tools/bin keyed on this directory's go.sum.
#
# Env: PULLGUARD_TOOLS_BIN  where binaries go (default <repo>/.tools/bin)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${PULLGUARD_TOOLS_BIN:-$repo/.tools/bin}
stamp=$bin/.stamp-kube

log() { printf 'tools-kube/install.sh: %s\n' "$*" >&2; }

tools=(
	k8s.io/kubernetes/cmd/kube-apiserver
	go.etcd.io/etcd/server/v3
	k8s.io/kubernetes/cmd/kube-controller-manager
	k8s.io/kubernetes/cmd/kube-scheduler
	k8s.io/kubernetes/cmd/kubelet
)
names=(kube-apiserver etcd kube-controller-manager kube-scheduler kubelet)

want=$(cat "$here/go.mod" "$here/go.sum" 2>/dev/null | sha256sum | cut -d' ' -f1)-$(go env GOVERSION)
have=""
[ -f "$stamp" ] && have=$(cat "$stamp")
all=1
for n in "${names[@]}"; do [ -x "$bin/$n" ] || all=0; done
if [ "$have" = "$want" ] && [ $all = 1 ]; then
	log "${names[*]} up to date in $bin (stamp $want)"
	exit 0
fi

mkdir -p "$bin"
rm -f "$stamp"
log "building ${names[*]} into $bin (cold: ~15 min on 2 cores)"
start=$SECONDS
# Each tool is built on its own so the binary gets a fixed name (the etcd package path ends in v3).
# -mod=mod: k8s.io/kubernetes is not meant to be a dependency; its go.sum entries are completed here.
export GOFLAGS="-mod=mod -buildvcs=false" GOWORK=off CGO_ENABLED=0
# Kubernetes' own build stamps its version into the binaries; without it they report
# v0.0.0-master (kubelet registers its node with that version). Taken from go.mod.
kube_version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")
kube_minor=${kube_version#v1.}
kube_minor=${kube_minor%%.*}
kv=k8s.io/component-base/version
ldflags="-s -w -X $kv.gitVersion=$kube_version -X $kv.gitMajor=1 -X $kv.gitMinor=$kube_minor -X $kv.gitTreeState=clean"
for i in "${!tools[@]}"; do
	t0=$SECONDS
	go -C "$here" build -trimpath -ldflags "$ldflags" -o "$bin/${names[$i]}" "${tools[$i]}"
	log "${names[$i]}: $((SECONDS - t0))s"
done
want=$(cat "$here/go.mod" "$here/go.sum" 2>/dev/null | sha256sum | cut -d' ' -f1)-$(go env GOVERSION)
echo "$want" >"$stamp"
log "built in $((SECONDS - start))s"
