#!/usr/bin/env bash
# Runs every fuzz target in the module for a while each: `make fuzz FUZZTIME=5m`.
# Targets are found by name, so new ones are picked up without editing this.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-20s}
status=0
while IFS=: read -r file name; do
	pkg=./$(dirname "$file")
	echo "== $pkg $name ($fuzztime)"
	# Seeds are large reports for some targets: a short minimisation keeps a
	# crash report from looking like a hang.
	if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" -fuzzminimizetime 5s "$pkg"; then
		status=1
	fi
done < <(grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+' --exclude-dir=.tools . | sed 's|^\./||; s|:func |:|' | sort)
exit $status
