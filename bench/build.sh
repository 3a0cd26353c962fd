#!/usr/bin/env bash
# bench/build.sh: builder overhead side by side. Builds the same graph of
# N trivial derivations (plus one root depending on all of them) with
# `ferry build -j J` and `nix-build -j J`, each in a fresh chroot store,
# and prints both wall times and their ratio.
#
#   bench/build.sh                 # N=200, J=2
#   N=500 J=4 bench/build.sh
#   FERRY=/path/to/ferry bench/build.sh   # skip building
#
# Needs nix-instantiate, nix-build, go and /bin/busybox (the sandbox's
# /bin/sh). Uses a private HOME and NIX_CONFIG, never the machine's /nix.
# The same measurement runs in Go as
#   go test -run XXX -bench Build200 -benchtime 1x ./internal/build/
set -euo pipefail

N=${N:-200}
J=${J:-2}

root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-build.XXXXXX")
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

if [[ -n ${FERRY:-} ]]; then
	cp "$FERRY" "$tmp/ferry"
else
	echo "building ferry..." >&2
	(cd "$root" && go build -o "$tmp/ferry" ./cmd/ferry)
fi

# After building: a private HOME would move Go's module cache.
export HOME="$tmp/home" NIX_CONF_DIR="$tmp/etc"
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox-paths = /bin/sh=/bin/busybox\nbuild-users-group =\nsubstituters =\nrequire-sigs = false'
mkdir -p "$HOME" "$NIX_CONF_DIR"

system=$(nix-instantiate --eval -E builtins.currentSystem | tr -d '"')
salt=$(date +%s%N) # fresh derivations every run
cat >"$tmp/bench.nix" <<NIX
let mk = name: script: derivation { inherit name; system = "$system"; builder = "/bin/sh"; args = [ "-c" script ]; };
  leaves = builtins.genList (i: mk "leaf-\${toString i}" "echo $salt \${toString i} > \$out") $N;
in mk "root" "echo \${toString leaves} > \$out"
NIX

drv=$(nix-instantiate --store "$tmp/ferry-store" "$tmp/bench.nix" 2>/dev/null)
nix-instantiate --store "$tmp/nix-store" "$tmp/bench.nix" >/dev/null 2>&1

now() { date +%s.%N; }

echo "building $N+1 derivations with -j $J..." >&2
t0=$(now)
"$tmp/ferry" --store "$tmp/ferry-store" build -j "$J" "$drv" >/dev/null 2>"$tmp/ferry.log"
t1=$(now)
nix-build --store "$tmp/nix-store" --no-out-link -j "$J" --quiet "$tmp/bench.nix" >/dev/null 2>"$tmp/nix.log"
t2=$(now)

awk -v f="$(echo "$t1 - $t0" | bc)" -v n="$(echo "$t2 - $t1" | bc)" -v N="$N" -v J="$J" 'BEGIN {
	printf "%-28s %8s\n", "builder (" N "+1 drvs, -j " J ")", "seconds"
	printf "%-28s %8.2f\n", "ferry build", f
	printf "%-28s %8.2f\n", "nix-build", n
	printf "ratio ferry/nix: %.2f\n", f / n
}'
