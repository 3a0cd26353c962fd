// Package sshtest starts a real OpenSSH sshd on loopback for interop tests,
// and gives the ssh options a client (ssh itself, or a real Nix 2.8 client)
// needs to reach it.
//
// Each server lives in its own temporary directory with its own ed25519 host
// key, client key, authorized_keys, known_hosts and sshd_config. It listens on
// 127.0.0.1 on a free port and logs to Server.LogFile, which is printed when
// the test fails. Sessions log in as the current user (root on the test
// machines; sshd allows it with PermitRootLogin prohibit-password).
//
// sshd must be started by absolute path and, when run as root, insists on
// its privilege-separation directory /run/sshd. Start creates that directory
// (mode 0755) if it is missing: it is a system directory but an empty one, and
// creating it is what Debian's init script does too.
//
// # Session environment
//
// sshd gives each session a minimal environment (PATH is sshd's compiled-in
// default, which includes /usr/bin, so the remote `nix-store` resolves). On
// top of that every session gets, through sshd_config SetEnv, a private HOME,
// XDG_CACHE_HOME, XDG_CONFIG_HOME, XDG_DATA_HOME and NIX_CONF_DIR under
// Server.Dir/remote, with NIX_CONF_DIR/nix.conf holding nixtest.Config, and
// NIX_REMOTE=Server.RemoteStore (Server.Dir/remote/store). So a remote
// `nix-store --serve` reads the same settings as a local nixtest client,
// never the machine's user state, and a client that forgets remote-store
// lands in a temporary store rather than the machine's /nix. Options.Env adds or overrides
// variables (SetEnv values cannot contain newlines or double quotes, which is
// why NIX_CONF_DIR is used rather than NIX_CONFIG).
//
// # Forced commands
//
// With Options.ForcedCommand set, the client key is authorized as
//
//	command="<ForcedCommand>",restrict ssh-ed25519 AAAA...
//
// sshd then runs ForcedCommand with the user's login shell (`sh -c`) instead
// of whatever the client asked for, and puts the client's command line in
// SSH_ORIGINAL_COMMAND. `restrict` turns off pty allocation and all
// forwarding, which the serve protocol never needs. Give absolute paths in the
// forced command.
//
// # Real Nix 2.8 clients
//
// Nix 2.8 ssh:// store URIs have no port syntax, so the port, key and
// known_hosts travel in NIX_SSHOPTS (Server.Env); the host part is
// Server.Destination(), "root@127.0.0.1" here. NIX_SSHOPTS is split on white
// space without quoting, so Start fails if its directory holds white space.
// Run the client with
//
//	cmd.Env = append(nixtest.Env(t.TempDir()), s.Env()...)
//
// These forms were run with Nix 2.8.0 and work (the package tests TestNix*
// run each one). SRC, DST and LOCAL are t.TempDir() chroot stores, P a path
// in the source store, and remote-store sets the `--store` that the client
// appends to the remote `nix-store --serve --write` command line:
//
//	nix store ping --store 'ssh://root@127.0.0.1?remote-store=DST'
//	nix copy --no-check-sigs --from SRC --to 'ssh://root@127.0.0.1?remote-store=DST' P
//	nix copy --no-check-sigs --store SRC --to 'ssh://root@127.0.0.1?remote-store=DST' P
//	nix copy --no-check-sigs --from 'ssh://root@127.0.0.1?remote-store=SRC' --to DST P
//	NIX_REMOTE=SRC nix-copy-closure --to root@127.0.0.1 P     (lands in s.RemoteStore)
//	NIX_REMOTE=DST nix-copy-closure --from root@127.0.0.1 P   (reads s.RemoteStore)
//	nix-build --store LOCAL --max-jobs 0 --no-out-link \
//	    --builders 'ssh://root@127.0.0.1?remote-store=DST x86_64-linux KEYFILE 1 1' drv.nix
//
// (nixtest.Env drops NIX_REMOTE, so append it after nixtest.Env.) nix-copy-closure
// takes no store URI, so the remote side uses its default store,
// Server.RemoteStore. --no-check-sigs matters only for input-addressed paths
// (paths from `nix-store --add` are content-addressed and need no signature).
// In the builders line, KEYFILE is Server.KeyFile; the rest of the ssh
// options still come from NIX_SSHOPTS.
//
// With a forced command the remote command line Nix asks for is ignored, so
// for ferry's serve tests the usual shape is
//
//	s := sshtest.Start(t, &sshtest.Options{ForcedCommand: ferryBin + " --serve --write --store " + dst})
//	nix copy --no-check-sigs --from SRC --to ssh://root@127.0.0.1 P
//
// with SSH_ORIGINAL_COMMAND available to the forced command if it wants to
// check what the client asked for.
package sshtest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"ferry/internal/nixtest"
)

// Options configure a Server. A nil *Options means the zero Options.
type Options struct {
	// ForcedCommand, if non-empty, is run by sshd for every session in
	// place of the client's command (see the package doc). The zero value
	// authorizes the client key without a forced command.
	ForcedCommand string

	// Env holds extra KEY=VALUE entries for every session, set with sshd's
	// SetEnv. They override the defaults described in the package doc. The
	// zero value adds nothing.
	Env []string
}

// Server is a running sshd. Its fields are read-only after Start.
type Server struct {
	Addr       string // host:port, e.g. "127.0.0.1:40123"
	Host       string // "127.0.0.1"
	Port       int
	User       string // the login user (the current user)
	KeyFile    string // the client's private key
	KnownHosts string // a known_hosts file naming the server's host key
	HostKey    string // the host public key line, "ssh-ed25519 AAAA..."
	Dir        string // the server's private directory
	// RemoteStore is the sessions' default Nix store (NIX_REMOTE), a
	// chroot store under Dir, unless Options.Env overrides NIX_REMOTE.
	RemoteStore string
	LogFile     string // sshd's stderr (-e), VERBOSE

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// sshdPath returns the absolute path of sshd: sshd on PATH, else
// /usr/sbin/sshd, which is outside a non-root PATH on Debian.
func sshdPath(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("sshd"); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
	}
	const def = "/usr/sbin/sshd"
	if _, err := os.Stat(def); err == nil {
		return def
	}
	nixtest.Require(t, "sshd") // skips, or fails under CI
	return def
}

// Start starts sshd and waits until it greets clients. t.Cleanup stops it. A
// missing sshd, ssh or ssh-keygen skips the test (fails it under CI=true).
func Start(t testing.TB, opts *Options) *Server {
	t.Helper()
	if opts == nil {
		opts = &Options{}
	}
	sshd := sshdPath(t)
	nixtest.Require(t, "ssh", "ssh-keygen")

	u, err := user.Current()
	if err != nil {
		t.Fatalf("look up current user: %v", err)
	}
	dir := t.TempDir()
	if strings.ContainsAny(dir, " \t\n\"") {
		t.Fatalf("start sshd: temporary directory %q holds white space or quotes, which NIX_SSHOPTS cannot carry", dir)
	}
	s := &Server{
		Host:       "127.0.0.1",
		User:       u.Username,
		Dir:        dir,
		KeyFile:    filepath.Join(dir, "client_ed25519"),
		KnownHosts: filepath.Join(dir, "known_hosts"),
		LogFile:    filepath.Join(dir, "sshd.log"),
	}
	hostKey := filepath.Join(dir, "host_ed25519")
	for _, k := range []string{hostKey, s.KeyFile} {
		out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sshtest", "-f", k).CombinedOutput()
		if err != nil {
			t.Fatalf("generate key %s: %v\n%s", k, err, out)
		}
	}
	s.HostKey = readPub(t, hostKey+".pub")
	clientPub := readPub(t, s.KeyFile+".pub")

	authLine := clientPub + "\n"
	if opts.ForcedCommand != "" {
		if strings.ContainsAny(opts.ForcedCommand, "\"\n") {
			t.Fatalf("start sshd: forced command %q holds a double quote or newline", opts.ForcedCommand)
		}
		authLine = fmt.Sprintf("command=\"%s\",restrict %s\n", opts.ForcedCommand, clientPub)
	}
	authKeys := filepath.Join(dir, "authorized_keys")
	writeFile(t, authKeys, authLine, 0o600)

	env, err := sessionEnv(dir, opts.Env)
	if err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "NIX_REMOTE="); ok {
			s.RemoteStore = v
		}
	}

	if os.Geteuid() == 0 {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("create sshd privilege-separation dir: %v", err)
		}
	}

	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			if b, err := os.ReadFile(s.LogFile); err == nil {
				t.Logf("sshd log (%s):\n%s", s.LogFile, b)
			}
		}
	})

	// A free port can be taken between our probe and sshd's bind; retry.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		cfg := filepath.Join(dir, "sshd_config")
		writeFile(t, cfg, sshdConfig(s, port, hostKey, authKeys, env), 0o600)
		if lastErr = s.run(sshd, cfg, port); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("start sshd: %v", lastErr)
	}
	writeFile(t, s.KnownHosts, fmt.Sprintf("[%s]:%d %s\n", s.Host, s.Port, s.HostKey), 0o644)
	return s
}

func readPub(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read public key: %v", err)
	}
	// "type base64 comment" -> "type base64"
	f := strings.Fields(string(b))
	if len(f) < 2 {
		t.Fatalf("read public key %s: malformed", path)
	}
	return f[0] + " " + f[1]
}

func writeFile(t testing.TB, path, text string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

// sessionEnv creates the remote HOME and NIX_CONF_DIR and returns the
// session environment: the defaults overridden by extra.
func sessionEnv(dir string, extra []string) ([]string, error) {
	remote := filepath.Join(dir, "remote")
	home := filepath.Join(remote, "home")
	confDir := filepath.Join(remote, "etc-nix")
	for _, d := range []string{home, confDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create session dir: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(confDir, "nix.conf"), []byte(nixtest.Config), 0o644); err != nil {
		return nil, fmt.Errorf("write remote nix.conf: %w", err)
	}
	env := []string{
		"HOME=" + home,
		"XDG_CACHE_HOME=" + filepath.Join(home, ".cache"),
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"),
		"XDG_DATA_HOME=" + filepath.Join(home, ".local/share"),
		"NIX_CONF_DIR=" + confDir,
		"NIX_REMOTE=" + filepath.Join(remote, "store"),
	}
	for _, kv := range extra {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsAny(kv, "\"\n\\") {
			return nil, fmt.Errorf("session env entry %q is not KEY=VALUE without quotes, backslashes or newlines", kv)
		}
		env = setEnv(env, kv)
	}
	return env, nil
}

// setEnv replaces the entry for kv's key in env, or appends kv.
func setEnv(env []string, kv string) []string {
	k, _, _ := strings.Cut(kv, "=")
	for i, e := range env {
		if ek, _, _ := strings.Cut(e, "="); ek == k {
			env[i] = kv
			return env
		}
	}
	return append(env, kv)
}

func sshdConfig(s *Server, port int, hostKey, authKeys string, env []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ListenAddress %s\n", s.Host)
	fmt.Fprintf(&b, "Port %d\n", port)
	fmt.Fprintf(&b, "HostKey %s\n", hostKey)
	fmt.Fprintf(&b, "AuthorizedKeysFile %s\n", authKeys)
	fmt.Fprintf(&b, "PidFile %s\n", filepath.Join(s.Dir, "sshd.pid"))
	b.WriteString(`StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
PermitUserEnvironment no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
MaxStartups 100:30:200
MaxSessions 50
LogLevel VERBOSE
`)
	fmt.Fprintf(&b, "AllowUsers %s\n", s.User)
	// One SetEnv line with every entry, each quoted.
	b.WriteString("SetEnv")
	for _, kv := range env {
		fmt.Fprintf(&b, " \"%s\"", kv)
	}
	b.WriteString("\n")
	return b.String()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// run starts sshd on port and waits for its banner. On failure sshd is
// stopped and the error names the cause from its log.
func (s *Server) run(sshd, cfg string, port int) error {
	logf, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer logf.Close() // the child keeps its own descriptor
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", sshd, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	s.Port = port
	s.Addr = net.JoinHostPort(s.Host, strconv.Itoa(port))

	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("sshd exited (%v) before accepting connections:\n%s", cmd.ProcessState, tail(s.LogFile))
		default:
		}
		if err := greet(s.Addr); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("sshd on %s never greeted: %v\n%s", s.Addr, err, tail(s.LogFile))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// greet connects to addr and reads the SSH identification line.
func greet(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read banner: %w", err)
	}
	if !strings.HasPrefix(line, "SSH-2.0-") {
		return fmt.Errorf("read banner: unexpected %q", line)
	}
	return nil
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(bytes.TrimSpace(b))
}

// stop ends sshd and any sessions still in its process group.
func (s *Server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	pid := s.cmd.Process.Pid
	syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pid, syscall.SIGKILL)
		<-s.done
	}
}

// SSHArgs returns the ssh options that reach this server, without the
// destination: port, identity, known_hosts, batch mode, no config files.
func (s *Server) SSHArgs() []string {
	return []string{
		"-F", "none",
		"-p", strconv.Itoa(s.Port),
		"-i", s.KeyFile,
		"-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + s.KnownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes",
		"-o", "LogLevel=ERROR",
	}
}

// SSHOpts returns SSHArgs joined with spaces, the form NIX_SSHOPTS takes.
func (s *Server) SSHOpts() string { return strings.Join(s.SSHArgs(), " ") }

// Destination returns "user@127.0.0.1", the ssh destination and the host
// part Nix's ssh:// URIs and nix-copy-closure take.
func (s *Server) Destination() string { return s.User + "@" + s.Host }

// URI returns "ssh://user@127.0.0.1", a Nix 2.8 legacy-ssh store URI for
// this server. The port is not in it (2.8 has no port syntax); it travels
// in NIX_SSHOPTS from Env. Append "?remote-store=DIR" to pick the remote
// side's store.
func (s *Server) URI() string { return "ssh://" + s.Destination() }

// Env returns the environment entries a Nix client process needs on top
// of its own: NIX_SSHOPTS=SSHOpts().
func (s *Server) Env() []string { return []string{"NIX_SSHOPTS=" + s.SSHOpts()} }

// Command returns an ssh command that runs args on the server (subject to a
// forced command, which replaces them).
func (s *Server) Command(args ...string) *exec.Cmd {
	argv := append(s.SSHArgs(), s.Destination())
	if len(args) > 0 {
		argv = append(argv, "--")
		argv = append(argv, args...)
	}
	return exec.Command("ssh", argv...)
}

// Log returns sshd's log so far, for assertions and failure messages.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.LogFile)
	return string(b)
}

// Machine is a line of Nix's machines format for a builder store behind s:
// remote-program=program, remote-store=store, the given system and s's
// client key, then rest (max jobs, speed factor, supported and mandatory
// features). The builder's store declares the machine's supported
// features as its own (system-features= on the remote store's URI), as a
// builder's nix.conf would.
func (s *Server) Machine(program, store, system, rest string) string {
	remote := store
	if f := strings.Fields(rest); len(f) > 2 {
		remote += "%3Fsystem-features%3D" + strings.ReplaceAll(f[2], ",", "%20")
	}
	return s.URI() + "?remote-program=" + program + "&remote-store=" + remote + " " + system + " " + s.KeyFile + " " + rest
}
