#!/usr/bin/env bash
# bench/serve.sh: `ferry serve --write` against real `nix-store --serve
# --write` as the remote end of a real Nix 2.8 `nix copy --to ssh://...`,
# side by side in one run: N small paths (default 1,000), one mid-sized path
# (default 256 MiB, which stays in the page cache) and one big path (default
# 1 GiB). Prints both wall times and their ratio (nix / ferry: above
# 1 means ferry is faster).
#
#   bench/serve.sh                      # 1,000 paths + 256 MiB + 1 GiB, over a real sshd
#   SIZE_MIB=2048 MID_MIB=64 N=500 bench/serve.sh
#   MID_MIB=0 bench/serve.sh            # no mid-sized case
#   TRANSPORT=local bench/serve.sh      # no ssh: Nix runs the remote program itself
#   RUNS=1 FERRY=/path/to/ferry bench/serve.sh
#
# TRANSPORT=sshd (the default) starts a private OpenSSH sshd on a free
# loopback port with its own keys, as internal/sshtest does, and copies to
# ssh://USER@127.0.0.1?remote-program=PROG&remote-store=DST (port and keys in
# NIX_SSHOPTS). TRANSPORT=local uses ssh://localhost?..., for which Nix 2.8
# skips ssh and runs `bash -c "PROG --serve --write --store DST"` itself;
# that measures the servers without ssh's encryption.
#
# Each run copies into a fresh empty store; the best of RUNS is reported.
# The two servers take turns (nix first in odd rounds, ferry first in even
# ones), and no store is deleted before the end: on ext4 without a journal
# (as on some VMs), creating files within a minute or more of deleting
# many is much slower, which would penalise whichever side runs second.
# BENCH_DIR puts everything on a chosen file system (default $TMPDIR).
# Uses a private HOME and NIX_CONFIG and chroot stores under a temporary
# directory, never the machine's /nix. Needs nix, nix-store, go, and for
# sshd: sshd, ssh, ssh-keygen.
set -euo pipefail

N=${N:-1000}
SIZE_MIB=${SIZE_MIB:-1024}
MID_MIB=${MID_MIB:-256}
RUNS=${RUNS:-3}
TRANSPORT=${TRANSPORT:-sshd}

root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/ferry-bench-serve.XXXXXX")
sshd_pid=
cleanup() {
	[[ -n $sshd_pid ]] && kill "$sshd_pid" 2>/dev/null
	chmod -R u+w "$tmp" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

if [[ -n ${FERRY:-} ]]; then
	cp "$FERRY" "$tmp/ferry"
else
	echo "building ferry..." >&2
	(cd "$root" && go build -o "$tmp/ferry" ./cmd/ferry)
fi

# After building: a private HOME would move Go's module cache.
export HOME="$tmp/home" NIX_CONF_DIR="$tmp/etc"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group =\nsubstituters =\nrequire-sigs = false'
mkdir -p "$HOME" "$NIX_CONF_DIR"
printf '%s\n' "$NIX_CONFIG" >"$NIX_CONF_DIR/nix.conf" # read by the remote side too

host=localhost
if [[ $TRANSPORT == sshd ]]; then
	# shellcheck source=bench/sshd.sh
	source "$root/bench/sshd.sh"
	d="$tmp/ssh"
	start_sshd "$d"
	echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$d/host.pub")" >"$d/known_hosts"
	export NIX_SSHOPTS="-F none -p $port -i $d/client -o IdentitiesOnly=yes -o UserKnownHostsFile=$d/known_hosts -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR"
	for _ in $(seq 100); do
		ssh $NIX_SSHOPTS "$user@127.0.0.1" true 2>/dev/null && break
		sleep 0.1
	done
	host="$user@127.0.0.1"
fi

src="$tmp/src"
echo "creating $N small paths and paths of ${MID_MIB} and ${SIZE_MIB} MiB in $src..." >&2
mkdir -p "$tmp/files"
for ((i = 0; i < N; i++)); do
	printf 'small path %d %s\n' "$i" "$(date +%N)" >"$tmp/files/s$i"
done
small=$(cd "$tmp/files" && ls | xargs -n 500 nix-store --store "$src" --add)
rm -rf "$tmp/files"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$tmp/big"
big=$(nix-store --store "$src" --add "$tmp/big")
rm -f "$tmp/big"
mid=
if ((MID_MIB > 0)); then
	head -c "$((MID_MIB << 20))" /dev/urandom >"$tmp/mid"
	mid=$(nix-store --store "$src" --add "$tmp/mid")
	rm -f "$tmp/mid"
fi

now() { date +%s.%N; }

# copy_time PROG PATHS...: copy PATHS from src into a fresh store served by
# PROG; print the wall time. The store must verify afterwards.
copy_time() {
	local prog=$1
	shift
	local dst
	dst=$(mktemp -d "$tmp/dst.XXXXXX") # a subshell: no counter survives
	local t0 t1
	sync # neither side pays for the writeback the other left behind
	t0=$(now)
	if ! nix copy --no-check-sigs --from "$src" --to "ssh://$host?remote-program=$prog&remote-store=$dst" "$@" 2>"$tmp/copy.log"; then
		echo "nix copy into $prog failed:" >&2
		tail -20 "$tmp/copy.log" >&2
		exit 1
	fi
	t1=$(now)
	local out
	if ! out=$(nix-store --store "$dst" --verify --check-contents 2>&1) || grep -qiE 'error|warning|modified|corrupt' <<<"$out"; then
		echo "store $dst does not verify: $out" >&2
		exit 1
	fi
	echo "$t1 - $t0" | bc -l
}

# pair NAME PATHS...: RUNS rounds of both servers copying PATHS, taking
# turns to go first; sets nix_NAME and ferry_NAME to the best times.
pair() {
	local name=$1 bn="" bf="" tn tf
	shift
	for ((r = 0; r < RUNS; r++)); do
		if ((r % 2 == 0)); then
			tn=$(copy_time nix-store "$@")
			tf=$(copy_time "$tmp/ferry" "$@")
		else
			tf=$(copy_time "$tmp/ferry" "$@")
			tn=$(copy_time nix-store "$@")
		fi
		if [[ -z $bn ]] || (($(echo "$tn < $bn" | bc -l))); then bn=$tn; fi
		if [[ -z $bf ]] || (($(echo "$tf < $bf" | bc -l))); then bf=$tf; fi
	done
	printf -v "nix_$name" '%s' "$bn"
	printf -v "ferry_$name" '%s' "$bf"
}

report() {
	local what=$1 nix=$2 ferry=$3
	printf '%-28s nix-store --serve %8.3f s   ferry serve %8.3f s   ratio %.2fx\n' \
		"$what" "$nix" "$ferry" "$(echo "$nix / $ferry" | bc -l)"
}

echo "copying (best of $RUNS, transport $TRANSPORT)..." >&2
# One warm-up of each server so binaries and libraries are in the cache.
copy_time nix-store $(echo "$small" | head -1) >/dev/null
copy_time "$tmp/ferry" $(echo "$small" | head -1) >/dev/null

pair small $small
[[ -n $mid ]] && pair mid "$mid"
pair big "$big"

echo "nix copy --to ssh:// ($TRANSPORT), $(nix --version), $(nproc) CPUs, load $(cut -d" " -f1-3 /proc/loadavg)"
report "$N small paths" "$nix_small" "$ferry_small"
[[ -n $mid ]] && report "one ${MID_MIB} MiB path" "$nix_mid" "$ferry_mid"
report "one ${SIZE_MIB} MiB path" "$nix_big" "$ferry_big"
