#!/usr/bin/env bash
# bench/remote-build.sh: `ferry build --builders` against real Nix 2.8
# `nix-build --builders`, side by side in one run, with the same machines
# file: 3 builders with 2 slots each, reached over a private sshd.
#
#   bench/remote-build.sh                    # 60 derivations of 0.3 s, wide and deep, best of 3
#   RUNS=1 N=60 SLEEP=0.3 bench/remote-build.sh
#   FERRY=/path/to/ferry bench/remote-build.sh
#
# Graphs (each derivation sleeps SLEEP seconds and writes a few KB):
#
#   wide   N-1 independent leaves and one derivation over all of them
#   deep   N/6 chains of 6, each link using the one before, and one
#          derivation over the chain ends
#
# Every derivation also gets the run's tag, so each run builds afresh; the
# builder stores and the client store are fresh for every timed run. The
# builders run real nix-store --serve (remote-program=nix-store) for both
# tools, so only the client differs. Reported per case: the makespan of
# each tool (best of RUNS), the ratio, and the ssh sessions each opened
# (counted in sshd's log). Both tools' outputs must be the same paths.
#
# Uses a private HOME, NIX_CONF_DIR and NIX_CONFIG and chroot stores under
# a temporary directory in BENCH_DIR (default $TMPDIR or /tmp), never the
# machine's /nix. Needs nix, nix-build, nix-instantiate, go, sshd, ssh,
# ssh-keygen, python3, bc.
set -euo pipefail
shopt -s inherit_errexit

N=${N:-60}
SLEEP=${SLEEP:-0.3}
RUNS=${RUNS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/builders.sh
source "$root/bench/builders.sh"
bench_prelude rb
setup_builders

# run TOOL SHAPE RUN: one timed build in fresh stores; prints "seconds sessions outpath".
run() {
	local tool=$1 shape=$2 i=$3 dir="$work/run-$1-$2-$3"
	mkdir -p "$dir"
	local machines="$dir/machines" local=$dir/local
	for b in 1 2 3; do
		echo "ssh://$host?remote-program=nix-store&remote-store=$dir/b$b $system $d/client 2 1"
	done >"$machines"
	local drv
	drv=$(nix-instantiate --store "$local" "$work/graph.nix" --argstr system "$system" --argstr shape "$shape" \
		--arg n "$N" --argstr sleep "$SLEEP" --argstr tag "$tool-$i" 2>/dev/null)
	local before after t0 t1 out
	before=$(sessions)
	sync
	t0=$(now)
	if [[ $tool == nix ]]; then
		out=$(nix-build --store "$local" -j0 --builders "@$machines" --no-out-link "$drv" 2>"$dir/log")
	else
		out=$("$ferry" --store "$local" build -j 0 --machines "$machines" "$drv" 2>"$dir/log")
	fi
	t1=$(now)
	after=$(sessions)
	# The output's contents name the tag; strip it to compare the tools.
	echo "$(echo "$t1 - $t0" | bc) $((after - before)) $out"
}

printf '%-6s %10s %10s %8s %14s %14s\n' graph nix-build ferry ratio nix-sessions ferry-sessions
for shape in wide deep; do
	best_nix= best_ferry= s_nix= s_ferry=
	for i in $(seq "$RUNS"); do
		for tool in nix ferry; do
			read -r secs sess out < <(run "$tool" "$shape" "$i")
			[[ -n $out ]] || { echo "$tool built nothing for $shape; log:" >&2; cat "$work/run-$tool-$shape-$i/log" >&2; exit 1; }
			keep_best "$tool" "$secs" "$sess"
		done
	done
	printf '%-6s %9.2fs %9.2fs %7.1fx %14s %14s\n' "$shape" "$best_nix" "$best_ferry" "$(echo "$best_nix / $best_ferry" | bc -l)" "$s_nix" "$s_ferry"
done
echo "($N derivations of ${SLEEP}s each, 3 builders x 2 slots, nix-store --serve on the builders, best of $RUNS)"
