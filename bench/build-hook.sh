#!/usr/bin/env bash
# bench/build-hook.sh: real Nix 2.8 `nix-build --builders -j0` with Nix's
# own build hook (build-remote) against the same with ferry's
# (`--option build-hook .../ferry-build-hook`) and a `ferry scheduler`
# running on the client store, side by side in one run, with the same
# machines file: 3 builders with 2 slots each, reached over a private sshd.
#
#   bench/build-hook.sh                    # 60 derivations of 0.3 s, wide and deep, best of 3
#   RUNS=1 N=60 SLEEP=0.3 bench/build-hook.sh
#   FERRY=/path/to/ferry bench/build-hook.sh
#
# Graphs are those of bench/remote-build.sh (each derivation sleeps SLEEP
# seconds and writes a few KB):
#
#   wide   N-1 independent leaves and one derivation over all of them
#   deep   N/6 chains of 6, each link using the one before, and one
#          derivation over the chain ends
#
# Every derivation also gets the run's tag, so each run builds afresh; the
# builder stores and the client store are fresh for every timed run. The
# builders run real nix-store --serve (remote-program=nix-store) for both
# hooks, and the client is real nix-build for both: only the hook differs.
# For ferry's, `ferry scheduler --state-dir LOCAL/nix/var/nix` is started
# before the timed build (it is a long-lived daemon: its start is not
# timed) and killed after it; the hook runs with FERRY_SCHEDULER=on.
# Reported per case: the makespan with each hook (best of RUNS), the
# ratio, and the ssh sessions each opened (counted in sshd's log).
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
bench_prelude bh
hook="$work/ferry-build-hook"
ln -s "$ferry" "$hook"

setup_builders

# start_scheduler STATEDIR LOG: ferry scheduler on the client store's
# state directory, as the hook finds it; sets sched_pid.
start_scheduler() {
	local state=$1 log=$2
	mkdir -p "$state"
	"$ferry" scheduler --state-dir "$state" 2>"$log" &
	sched_pid=$!
	for _ in $(seq 200); do
		"$ferry" status --state-dir "$state" >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	echo "ferry scheduler did not start:" >&2
	cat "$log" >&2
	return 1
}

stop_scheduler() {
	kill "$sched_pid"
	wait "$sched_pid" || true
	sched_pid=
}

# run HOOK SHAPE RUN: one timed build in fresh stores; prints "seconds sessions outpath".
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
	local args=(--store "$local" -j0 --builders "@$machines" --no-out-link)
	if [[ $tool == ferry ]]; then
		start_scheduler "$local/nix/var/nix" "$dir/scheduler.log"
		args+=(--option build-hook "$hook")
	fi
	local before after t0 t1 out
	before=$(sessions)
	sync
	t0=$(now)
	out=$(FERRY_SCHEDULER=on nix-build "${args[@]}" "$drv" 2>"$dir/log") || true
	t1=$(now)
	if [[ $tool == ferry ]]; then
		stop_scheduler
	fi
	after=$(sessions)
	echo "$(echo "$t1 - $t0" | bc) $((after - before)) $out"
}

printf '%-6s %14s %14s %8s %14s %16s\n' graph nix-build-hook ferry-hook ratio nix-sessions ferry-sessions
for shape in wide deep; do
	best_nix= best_ferry= s_nix= s_ferry=
	for i in $(seq "$RUNS"); do
		for tool in nix ferry; do
			read -r secs sess out < <(run "$tool" "$shape" "$i")
			[[ -n $out ]] || {
				echo "$tool's hook built nothing for $shape; log:" >&2
				cat "$work/run-$tool-$shape-$i/log" >&2
				cat "$work/run-$tool-$shape-$i/scheduler.log" >&2 2>/dev/null || true
				exit 1
			}
			keep_best "$tool" "$secs" "$sess"
		done
	done
	printf '%-6s %13.2fs %13.2fs %7.1fx %14s %16s\n' "$shape" "$best_nix" "$best_ferry" "$(echo "$best_nix / $best_ferry" | bc -l)" "$s_nix" "$s_ferry"
done
echo "($N derivations of ${SLEEP}s each, 3 builders x 2 slots, nix-store --serve on the builders, real nix-build -j0 with each hook, best of $RUNS)"
