# bench/builders.sh: sourced by the remote-build benchmarks
# (bench/remote-build.sh, bench/build-hook.sh) once they have set root.
#
#   bench_prelude NAME
#
# makes the run's temporary directory (work, in BENCH_DIR, default $TMPDIR
# or /tmp), removes it at exit after killing sshd_pid and sched_pid if
# set, and builds ferry into it ($FERRY if set), setting ferry.
#
#   setup_builders
#
# gives the run a private HOME, NIX_CONF_DIR and NIX_CONFIG (also the
# builders' nix.conf), starts a private sshd (bench/sshd.sh) with
# NIX_SSHOPTS for it, and sets host, system and d (the sshd's directory).
# It writes $work/graph.nix, the benchmark graph:
#
#   { system, shape, n, sleep, tag }: n derivations that each sleep
#   `sleep` seconds and write a few KB; shape "wide" is n-1 leaves and one
#   derivation over them, "deep" n/6 chains of 6 and one over their ends.
#
# sessions counts the ssh sessions sshd accepted so far; now prints the
# time in seconds. keep_best TOOL SECS SESS keeps TOOL's (nix or ferry)
# best time in best_nix/best_ferry and its last session count in
# s_nix/s_ferry.
bench_prelude() {
	work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/ferry-bench-$1.XXXXXX")
	sshd_pid= sched_pid=
	trap bench_cleanup EXIT
	echo "building ferry..." >&2
	if [[ -n ${FERRY:-} ]]; then
		cp "$FERRY" "$work/ferry"
	else
		(cd "$root" && go build -o "$work/ferry" ./cmd/ferry)
	fi
	ferry="$work/ferry"
}

bench_cleanup() {
	[[ -n ${sched_pid:-} ]] && kill "$sched_pid" 2>/dev/null
	[[ -n ${sshd_pid:-} ]] && kill "$sshd_pid" 2>/dev/null
	wait 2>/dev/null
	chmod -R u+w "$work" 2>/dev/null
	rm -rf "$work"
}

setup_builders() {
	export HOME="$work/home" NIX_CONF_DIR="$work/etc"
	local busybox
	busybox=$(command -v busybox)
	export NIX_CONFIG="experimental-features = nix-command
build-users-group =
substituters =
require-sigs = false
sandbox-paths = /bin/sh=$busybox"
	mkdir -p "$HOME" "$NIX_CONF_DIR"
	printf '%s\n' "$NIX_CONFIG" >"$NIX_CONF_DIR/nix.conf" # read by the builders too

	# shellcheck source=bench/sshd.sh
	source "$root/bench/sshd.sh"
	d="$work/ssh"
	start_sshd "$d"
	echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$d/host.pub")" >"$d/known_hosts"
	export NIX_SSHOPTS="-F none -p $port -i $d/client -o IdentitiesOnly=yes -o UserKnownHostsFile=$d/known_hosts -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR"
	host="$user@127.0.0.1"
	# shellcheck disable=SC2086
	ssh $NIX_SSHOPTS "$host" true
	system=$(nix-instantiate --eval --expr builtins.currentSystem | tr -d '"')

	cat >"$work/graph.nix" <<'NIX'
{ system, shape, n, sleep, tag }:
let
  mk = name: deps: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" "sleep ${sleep}; i=0; while [ $i -lt 64 ]; do echo ${name} ${tag} line $i of a few kilobytes of output; i=$((i+1)); done > $out; cat ${toString deps} /dev/null >> $out" ];
  };
  wide = mk "top" (builtins.genList (i: mk "leaf-${toString i}" []) (n - 1));
  chain = c: builtins.foldl' (prev: k: mk "c${toString c}-${toString k}" (if prev == null then [] else [ prev ])) null (builtins.genList (k: k) 6);
  deep = mk "top" (builtins.genList chain (n / 6));
in if shape == "wide" then wide else deep
NIX
}

now() { date +%s.%N; }
sessions() { grep -c 'Accepted publickey' "$d/log" || true; }

keep_best() {
	local best="best_$1" sess="s_$1"
	if [[ -z ${!best} ]] || (($(echo "$2 < ${!best}" | bc))); then printf -v "$best" '%s' "$2"; fi
	printf -v "$sess" '%s' "$3"
}
