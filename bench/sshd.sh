# bench/sshd.sh: sourced by the benchmarks that need a private sshd.
#
#   start_sshd DIR
#
# starts sshd -D on a free loopback port with its own host key and a client
# key (DIR/client) authorized without a forced command, so each store URI
# names its remote program. Sessions get HOME and NIX_CONF_DIR. It sets
# port, user and sshd_pid, and returns once sshd accepts connections; the
# caller writes DIR/known_hosts for the address its clients use and kills
# sshd_pid at the end.
start_sshd() {
	local d=$1 sshd
	sshd=$(command -v sshd || echo /usr/sbin/sshd)
	mkdir -p "$d"
	ssh-keygen -q -t ed25519 -N '' -f "$d/host" -C bench
	ssh-keygen -q -t ed25519 -N '' -f "$d/client" -C bench
	cp "$d/client.pub" "$d/authorized_keys"
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	user=$(id -un)
	cat >"$d/sshd_config" <<CONFIG
ListenAddress 127.0.0.1
Port $port
HostKey $d/host
AuthorizedKeysFile $d/authorized_keys
PidFile $d/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
AllowUsers $user
SetEnv "HOME=$HOME" "NIX_CONF_DIR=$NIX_CONF_DIR"
CONFIG
	[[ $(id -u) == 0 ]] && mkdir -p /run/sshd
	"$sshd" -D -e -f "$d/sshd_config" 2>"$d/log" &
	sshd_pid=$!
	for _ in $(seq 100); do
		python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1).recv(8)" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "sshd did not start:" >&2
	cat "$d/log" >&2
	return 1
}
