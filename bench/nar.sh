#!/usr/bin/env bash
# bench/nar.sh: time ferry against Nix 2.8 on NAR serialisation and path
# hashing, side by side.
#
#   bench/nar.sh            # 1 GiB file + 10,000-file tree
#   SIZE_MIB=256 FILES=2000 bench/nar.sh
#   FERRY=/path/to/ferry bench/nar.sh   # skip building
#
# Runs from the repository root (or anywhere inside it). Needs nix,
# nix-store and go; uses a private HOME so the machine's Nix config and
# store are not touched (nix-store --dump and nix hash path only read the
# given path).
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-1024}
FILES=${FILES:-10000}
RUNS=${RUNS:-3}

root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-nar.XXXXXX")
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

export HOME="$tmp/home" NIX_CONFIG="experimental-features = nix-command"
mkdir -p "$HOME"

if [[ -n ${FERRY:-} ]]; then
	cp "$FERRY" "$tmp/ferry" # a prebuilt binary
else
	echo "building ferry..." >&2
	(cd "$root" && go build -o "$tmp/ferry" ./cmd/ferry)
fi

echo "creating a ${SIZE_MIB} MiB file and a ${FILES}-file tree in $tmp..." >&2
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$tmp/big"
mkdir "$tmp/tree"
for ((d = 0; d < (FILES + 99) / 100; d++)); do
	dir=$(printf '%s/tree/dir%03d' "$tmp" "$d")
	mkdir "$dir"
	for ((i = 0; i < 100 && d * 100 + i < FILES; i++)); do
		head -c "$(((d * 100 + i) * 37 % 4000))" /dev/urandom >"$(printf '%s/file%03d' "$dir" "$i")"
	done
done
sync

now() { date +%s.%N; }

# best_of CMD...: run CMD RUNS times (after one warm-up run) and print the
# fastest wall time in seconds.
best_of() {
	"$@" >/dev/null
	local best="" t0 t1 dt
	for ((r = 0; r < RUNS; r++)); do
		t0=$(now)
		"$@" >/dev/null
		t1=$(now)
		dt=$(echo "$t1 - $t0" | bc -l)
		if [[ -z $best ]] || (($(echo "$dt < $best" | bc -l))); then best=$dt; fi
	done
	printf '%.3f' "$best"
}

# compare LABEL 'FERRY CMD' 'NIX CMD': print both times and the ratio.
compare() {
	local label=$1 f n
	f=$(best_of bash -c "$2")
	n=$(best_of bash -c "$3")
	printf '%-28s %10s %10s %8s\n' "$label" "$f" "$n" "$(printf '%.2fx' "$(echo "$n / $f" | bc -l)")"
}

# The outputs must agree before timing means anything.
for p in big tree; do
	a=$("$tmp/ferry" hash path "$tmp/$p")
	b=$(nix hash path "$tmp/$p")
	if [[ $a != "$b" ]]; then
		echo "hash mismatch for $p: ferry $a, nix $b" >&2
		exit 1
	fi
	cmp <("$tmp/ferry" nar dump "$tmp/$p") <(nix-store --dump "$tmp/$p") ||
		{ echo "NAR mismatch for $p" >&2; exit 1; }
done

printf '%-28s %10s %10s %8s\n' "benchmark (best of $RUNS, s)" ferry nix "speedup"
compare "hash path ${SIZE_MIB}MiB file" "'$tmp/ferry' hash path '$tmp/big'" "nix hash path '$tmp/big'"
compare "nar dump ${SIZE_MIB}MiB file" "'$tmp/ferry' nar dump '$tmp/big' >/dev/null" "nix-store --dump '$tmp/big' >/dev/null"
compare "hash path ${FILES} files" "'$tmp/ferry' hash path '$tmp/tree'" "nix hash path '$tmp/tree'"
compare "nar dump ${FILES} files" "'$tmp/ferry' nar dump '$tmp/tree' >/dev/null" "nix-store --dump '$tmp/tree' >/dev/null"
