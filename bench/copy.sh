#!/usr/bin/env bash
# bench/copy.sh: `ferry copy` against real Nix 2.8 `nix copy` over ssh with
# a simulated network round trip, side by side in one run.
#
#   bench/copy.sh                       # 1,000-path closure + 1 GiB, RTT 20ms, best of 3
#   RUNS=5 SIZE_MIB=256 N=500 RTT=50ms bench/copy.sh
#   BENCH_DIR=/mnt/x bench/copy.sh      # stores on another file system
#   FERRY=/path/to/ferry bench/copy.sh  # use this binary instead of building one
#
# It starts a private OpenSSH sshd on a free loopback port (own host and
# client keys, as internal/sshtest does; the client key has no forced
# command, so each URI names its remote program), and in front of it
# bench/latencyproxy, which adds RTT (default 20ms) to every round trip
# without limiting bandwidth. Both clients reach sshd through the proxy:
# NIX_SSHOPTS carries the proxy's port, key and known_hosts, and both
# `nix copy` and `ferry copy` run the system ssh with it.
#
# The source store holds a closure of N (default 1,000) small text objects
# (builtins.toFile, each referring to up to three earlier ones, so the last
# one's closure is all N; one nix-instantiate --eval writes them) and one
# SIZE_MIB (default 1,024) MiB random file. Cases, each copying a closure
# given by one path:
#
#   to        nix copy --no-check-sigs --from SRC --to 'ssh://H?remote-program=P&remote-store=DST' PATH
#             ferry copy --no-check-sigs --store SRC --to 'ssh://H?remote-program=P&remote-store=DST' PATH
#             into a fresh remote store each time, with P = nix-store for
#             nix and for ferry, and P = ferry (ferry copy into ferry serve)
#   from      nix copy --no-check-sigs --from 'ssh://H?remote-program=P&remote-store=SRC' --to LOCAL PATH
#             ferry copy --no-check-sigs --store LOCAL --from 'ssh://H?remote-program=P&remote-store=SRC' PATH
#             into a fresh local store each time, the same three pairings
#   no-op     the N-path closure --to a remote store that already holds it
#   ssh true  `ssh $NIX_SSHOPTS H true` through the proxy: the ssh set-up
#             cost, so the no-op time reads as set-up + k round trips
#
# Every timed copy is preceded by `sync`, its result must pass `nix-store
# --verify --check-contents` and hold the whole closure, the tools take turns
# going first (the order rotates each round), and the best of RUNS is
# reported. Small-path stores are kept until the end (on ext4 without a
# journal, creating files soon after deleting many is slow, which would
# penalise whichever tool runs next, see BENCHMARKS.md); big-path stores hold
# few files and are deleted once verified, to save disk space.
#
# Until `ferry copy` exists (`ferry help` lists no copy command) only the
# Nix side runs, and the script says so.
#
# Uses a private HOME, NIX_CONF_DIR and NIX_CONFIG and chroot stores under a
# temporary directory in BENCH_DIR (default $TMPDIR or /tmp), never the
# machine's /nix; everything is removed at the end. Needs nix, nix-store,
# nix-instantiate, go, sshd, ssh, ssh-keygen, python3, bc.
set -euo pipefail
shopt -s inherit_errexit

N=${N:-1000}
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
RTT=${RTT:-20ms}

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/ferry-bench-copy.XXXXXX")
case $work in *[[:space:]]*)
	echo "work directory $work holds white space, which NIX_SSHOPTS cannot carry" >&2
	exit 1
	;;
esac
sshd_pid= proxy_pid=
cleanup() {
	[[ -n $proxy_pid ]] && kill "$proxy_pid" 2>/dev/null
	[[ -n $sshd_pid ]] && kill "$sshd_pid" 2>/dev/null
	wait 2>/dev/null
	chmod -R u+w "$work" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

echo "building ferry and the latency proxy..." >&2
if [[ -n ${FERRY:-} ]]; then
	cp "$FERRY" "$work/ferry"
else
	(cd "$root" && go build -o "$work/ferry" ./cmd/ferry)
fi
(cd "$root" && go build -o "$work/latencyproxy" ./bench/latencyproxy)
ferry="$work/ferry"

have_copy=1
"$ferry" help >"$work/help.txt" 2>&1 || true # not piped: grep -q would cut it short
if ! grep -q '^  copy' "$work/help.txt"; then
	have_copy=0
	echo "ferry copy is not a command yet: measuring only the Nix side" >&2
fi

# After building: a private HOME would move Go's module cache.
export HOME="$work/home" NIX_CONF_DIR="$work/etc"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group =\nsubstituters =\nrequire-sigs = false'
mkdir -p "$HOME" "$NIX_CONF_DIR"
printf '%s\n' "$NIX_CONFIG" >"$NIX_CONF_DIR/nix.conf" # read by the remote side too

# sshd on a free loopback port, the client key without a forced command.
# shellcheck source=bench/sshd.sh
source "$root/bench/sshd.sh"
d="$work/ssh"
start_sshd "$d"

# The latency proxy in front of sshd; it prints its address when ready.
mkfifo "$work/proxy.fifo"
"$work/latencyproxy" -listen 127.0.0.1:0 -target "127.0.0.1:$port" -rtt "$RTT" >"$work/proxy.fifo" 2>"$work/proxy.log" &
proxy_pid=$!
read -r proxy_addr <"$work/proxy.fifo"
pport=${proxy_addr##*:}
echo "sshd on 127.0.0.1:$port, latency proxy ($RTT RTT) on $proxy_addr" >&2

echo "[127.0.0.1]:$pport $(cut -d' ' -f1,2 "$d/host.pub")" >"$d/known_hosts"
export NIX_SSHOPTS="-F none -p $pport -i $d/client -o IdentitiesOnly=yes -o UserKnownHostsFile=$d/known_hosts -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR"
host="$user@127.0.0.1"
# shellcheck disable=SC2086 # NIX_SSHOPTS is split on white space, as Nix does
ssh $NIX_SSHOPTS "$host" true # fails here, not mid-benchmark, if ssh is broken

# The source store: N text objects, f_i referring to f_{i-1}, f_{i/2} and
# f_{i-10}, written by one evaluation; and one big random file.
src="$work/src"
echo "creating a closure of $N small paths and one ${SIZE_MIB} MiB path in $src..." >&2
{
	echo 'let'
	for ((i = 0; i < N; i++)); do
		r=""
		((i > 0)) && r+=" \${f$((i - 1))}"
		((i >= 2)) && r+=" \${f$((i / 2))}"
		((i >= 10)) && r+=" \${f$((i - 10))}"
		printf '  f%d = builtins.toFile "s%d" "small path %d%s\\n";\n' "$i" "$i" "$i" "$r"
	done
	printf 'in f%d\n' "$((N - 1))"
} >"$work/closure.nix"
small=$(nix-instantiate --store "$src" --eval --strict --read-write-mode "$work/closure.nix" | tr -d '"')
rm -f "$work/closure.nix"
nsmall=$(nix-store --store "$src" -qR "$small" | wc -l)
[[ $nsmall == "$N" ]] || { echo "closure of $small has $nsmall paths, not $N" >&2; exit 1; }
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$work/big"
big=$(nix-store --store "$src" --add "$work/big")
rm -f "$work/big"

now() { date +%s.%N; }

# check STORE PATH: STORE verifies and holds PATH's whole closure.
check() {
	local out want got
	if ! out=$(nix-store --store "$1" --verify --check-contents 2>&1) || grep -qiE 'error|warning|modified|corrupt' <<<"$out"; then
		echo "store $1 does not verify: $out" >&2
		exit 1
	fi
	want=$(nix-store --store "$src" -qR "$2" | sort)
	got=$(nix-store --store "$1" -qR "$2" 2>/dev/null | sort) || true
	if [[ $want != "$got" ]]; then
		echo "store $1 lacks part of the closure of $2" >&2
		exit 1
	fi
}

# timed CMD...: run CMD after a sync and print its wall time; a failure
# stops the benchmark with CMD's output.
timed() {
	local t0 t1
	sync # no side pays for the writeback another left behind
	t0=$(now)
	if ! "$@" >"$work/cmd.log" 2>&1; then
		echo "failed: $*" >&2
		tail -20 "$work/cmd.log" >&2
		exit 1
	fi
	t1=$(now)
	echo "$t1 - $t0" | bc -l
}

uri() { echo "ssh://$host?remote-program=$1&remote-store=$2"; }
prog() { if [[ $1 == *-ferry ]]; then echo "$ferry"; else echo nix-store; fi; }

# copy_to TOOL PATH [DST]: copy PATH's closure from src to the remote store
# DST (default: a fresh one) with TOOL, one of nix-nix (nix copy into
# nix-store --serve), ferry-nix (ferry copy into nix-store --serve) and
# ferry-ferry (ferry copy into ferry serve). Prints the wall time.
copy_to() {
	local tool=$1 path=$2 dst=${3:-} t u
	[[ -n $dst ]] || dst=$(mktemp -d "$work/dst.XXXXXX")
	u=$(uri "$(prog "$tool")" "$dst")
	case $tool in
	nix-*) t=$(timed nix copy --no-check-sigs --from "$src" --to "$u" "$path") ;;
	*) t=$(timed "$ferry" copy --no-check-sigs --store "$src" --to "$u" "$path") ;;
	esac
	check "$dst" "$path"
	[[ $path == "$big" ]] && rm -rf "$dst"
	echo "$t"
}

# copy_from TOOL PATH: copy PATH's closure from the remote store src into a
# fresh local store with TOOL (as for copy_to, the second half naming the
# remote program). Prints the wall time.
copy_from() {
	local tool=$1 path=$2 dst t u
	dst=$(mktemp -d "$work/local.XXXXXX")
	u=$(uri "$(prog "$tool")" "$src")
	case $tool in
	nix-*) t=$(timed nix copy --no-check-sigs --from "$u" --to "$dst" "$path") ;;
	*) t=$(timed "$ferry" copy --no-check-sigs --store "$dst" --from "$u" "$path") ;;
	esac
	check "$dst" "$path"
	[[ $path == "$big" ]] && rm -rf "$dst"
	echo "$t"
}

ssh_true() {
	# shellcheck disable=SC2086
	timed ssh $NIX_SSHOPTS "$host" true
}

tools=(nix-nix)
((have_copy)) && tools+=(ferry-nix ferry-ferry)

# measure NAME CMD...: RUNS rounds of `CMD TOOL` for every tool, the order
# rotating each round; sets best_NAME_TOOL (with - as _) to the best time.
measure() {
	local name=$1 r i k tool t var
	shift
	local n=${#tools[@]}
	for ((r = 0; r < RUNS; r++)); do
		for ((i = 0; i < n; i++)); do
			k=$(((i + r) % n))
			tool=${tools[k]}
			t=$("$@" "$tool")
			var="best_${name}_${tool//-/_}"
			if [[ -z ${!var:-} ]] || (($(echo "$t < ${!var}" | bc -l))); then
				printf -v "$var" '%s' "$t"
			fi
		done
	done
}

# Argument order for measure: the tool comes last.
to_small() { copy_to "$1" "$small"; }
to_big() { copy_to "$1" "$big"; }
from_small() { copy_from "$1" "$small"; }
from_big() { copy_from "$1" "$big"; }
full=$(mktemp -d "$work/full.XXXXXX") # the remote store for the no-op case
noop_small() { copy_to "$1" "$small" "$full"; }

echo "warming up..." >&2
for tool in "${tools[@]}"; do
	copy_to "$tool" "$(nix-store --store "$src" -qR "$small" | head -1)" >/dev/null
done
nix copy --no-check-sigs --from "$src" --to "$(uri nix-store "$full")" "$small" 2>/dev/null
check "$full" "$small"

echo "copying (best of $RUNS, tools ${tools[*]})..." >&2
measure to_small to_small
measure to_big to_big
measure from_small from_small
measure from_big from_big
measure noop noop_small
best_ssh=
for ((r = 0; r < RUNS; r++)); do
	t=$(ssh_true)
	if [[ -z $best_ssh ]] || (($(echo "$t < $best_ssh" | bc -l))); then best_ssh=$t; fi
done

# The table: seconds per tool, and nix's time over each ferry pairing's.
ratio() { if [[ -n ${2:-} ]]; then printf '%.2fx' "$(echo "$1 / $2" | bc -l)"; else echo -; fi; }
secs() { if [[ -n ${1:-} ]]; then printf '%.3f' "$1"; else echo -; fi; }
row() {
	local what=$1 name=$2 nn fn ff
	nn=best_${name}_nix_nix fn=best_${name}_ferry_nix ff=best_${name}_ferry_ferry
	printf '%-26s %10s %10s %11s %10s %11s\n' "$what" "$(secs "${!nn}")" \
		"$(secs "${!fn:-}")" "$(secs "${!ff:-}")" "$(ratio "${!nn}" "${!fn:-}")" "$(ratio "${!nn}" "${!ff:-}")"
}

echo
echo "nix copy vs ferry copy over ssh through a $RTT RTT proxy; $(nix --version), $(nproc) CPUs, best of $RUNS, load $(cut -d' ' -f1-3 /proc/loadavg)"
((have_copy)) || echo "(ferry copy is not a command yet: Nix side only)"
echo "seconds; nix/f-nix = nix copy's time over ferry copy's into nix-store --serve, nix/f-ferry = over ferry copy's into ferry serve"
printf '%-26s %10s %10s %11s %10s %11s\n' case "nix>nix" "ferry>nix" "ferry>ferry" nix/f-nix nix/f-ferry
row "--to, $N paths" to_small
row "--to, ${SIZE_MIB} MiB" to_big
row "--from, $N paths" from_small
row "--from, ${SIZE_MIB} MiB" from_big
row "no-op --to, $N paths" noop
printf '%-26s %10.3f   (ssh set-up through the proxy)\n' "ssh true" "$best_ssh"
# The no-op beyond ssh's set-up, in round trips.
rtts() { if [[ -n ${1:-} ]]; then printf '%.1f' "$(echo "($1 - $best_ssh) / $rtt_s" | bc -l)"; else echo -; fi; }
rtt_s=$(python3 -c "import sys; v=sys.argv[1]; print(float(v[:-2])/1000 if v.endswith('ms') else float(v.rstrip('s')))" "$RTT")
printf '%-26s %10s %10s %11s\n' "no-op - ssh true, in RTTs" "$(rtts "$best_noop_nix_nix")" \
	"$(rtts "${best_noop_ferry_nix:-}")" "$(rtts "${best_noop_ferry_ferry:-}")"
