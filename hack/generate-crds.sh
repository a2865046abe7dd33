#!/usr/bin/env bash
# Generates daemonset/crds from the Go types of pullguard's custom resources
# (daemonset/api/v1beta1, whose spec is plugin/policy/v1beta1) with the controller-gen pinned by
# integration/tools/go.mod. `make generate` writes the CRDs in place; the test in
# daemonset/api/v1beta1 writes them to a temporary directory and compares.
#
# Usage: hack/generate-crds.sh [OUTDIR]        (default: daemonset/crds)
# Env:   PULLGUARD_TOOLS_BIN  where controller-gen is (default <repo>/.tools/bin; `make tools`
#                             and `make generate` build it there)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/daemonset/crds}
gen=${PULLGUARD_TOOLS_BIN:-$repo/.tools/bin}/controller-gen

cd "$repo"
exec "$gen" crd:headerFile=hack/crd-header.txt paths=./daemonset/api/... output:crd:dir="$out"
