// Package sshstore is a store.Store on the far side of an ssh connection:
// `ssh HOST REMOTE-PROGRAM --serve --write` speaking the serve protocol, as
// Nix's legacy ssh store (2.8.0:src/libstore/legacy-ssh-store.cc) does, with
// Nix's URI and ssh argv (2.8.0:src/libstore/ssh.cc):
//
//	ssh://[user@]host[:port]?remote-program=P&remote-store=S&ssh-key=K&compress=true&base64-ssh-public-host-key=B&connect-timeout=SECONDS
//
// It runs the system ssh, so ~/.ssh/config, agents, ProxyJump and
// known_hosts work, and runs the remote program itself, without ssh, for
// ssh://localhost, as Nix does. The remote's stderr is passed on line by
// line with the host in front.
//
// Unlike Nix's, the store pipelines the bulk operations of the protocol
// (store.MultiAdder, store.MultiDumper), and it is a store.Locker: its
// QueryValidPathsLocked is QueryValidPaths with lock=1, so the far side
// temp-roots what it reports valid until the store is closed.
//
// A Store holds one connection and is safe for concurrent use; calls are
// serialised on it.
package sshstore

import (
	"golang.org/x/sys/unix"

	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"ferry/internal/serve"
	"ferry/nix/derivation"
	"ferry/nix/nixbase64"
	"ferry/nix/storepath"
	"ferry/store"
)

func init() {
	store.Register("ssh", func(ctx context.Context, u *store.URI, opts *store.OpenOptions) (store.Store, error) {
		return Open(ctx, u, opts)
	})
}

// DefaultConnectTimeout bounds the time from starting ssh to the end of
// the handshake when neither the URI nor the options set one.
const DefaultConnectTimeout = 10 * time.Second

// Params are the URI parameters the store understands.
type Params struct {
	RemoteProgram  string        // remote-program, default "nix-store"
	RemoteStore    string        // remote-store, default none (the remote's default)
	SSHKey         string        // ssh-key: passed as ssh -i
	Compress       bool          // compress: ssh -C
	HostKey        []byte        // base64-ssh-public-host-key, decoded
	ConnectTimeout time.Duration // connect-timeout, in seconds
	// Dir is the logical store directory of the remote store (store=,
	// else $NIX_STORE_DIR or /nix/store): every path the session names
	// lies in it, as for Nix's LegacySSHStore, whose storeDir is its own
	// setting and not the remote's.
	Dir storepath.Dir
}

// parseParams reads the URI parameters; unknown ones are reported (Nix
// warns "unknown setting" and goes on).
func parseParams(u *store.URI) (*Params, []string, error) {
	p := &Params{RemoteProgram: "nix-store"}
	var unknown []string
	dir, err := u.StoreDirParam()
	if err != nil {
		return nil, nil, err
	}
	p.Dir = dir
	for k, v := range u.Params {
		switch k {
		case "remote-program":
			if v != "" {
				p.RemoteProgram = v
			}
		case "remote-store":
			p.RemoteStore = v
		case "ssh-key":
			p.SSHKey = v
		case "compress":
			b, err := parseBool(v)
			if err != nil {
				return nil, nil, fmt.Errorf("store URI %q: compress: %w", u.Raw, err)
			}
			p.Compress = b
		case "base64-ssh-public-host-key":
			key, err := nixbase64.Decode(v) // as SSHMaster decodes it
			if err != nil {
				return nil, nil, fmt.Errorf("store URI %q: base64-ssh-public-host-key is not base64: %w", u.Raw, err)
			}
			p.HostKey = bytes.TrimSpace(key)
		case "connect-timeout":
			secs, err := strconv.ParseFloat(v, 64)
			if err != nil || secs <= 0 {
				return nil, nil, fmt.Errorf("store URI %q: connect-timeout %q is not a positive number of seconds", u.Raw, v)
			}
			p.ConnectTimeout = time.Duration(secs * float64(time.Second))
		case "max-connections", "path-info-cache-size", "priority", "want-mass-query", "trusted", "system-features", "log-fd", "store":
			// Settings Nix 2.8's LegacySSHStore accepts that change
			// nothing here: one connection per Store, no path-info
			// cache, the remote checks its own system features, and
			// store= is read above. Anything else, a local store's
			// state= or root= included, gets Nix's warning.
		default:
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	return p, unknown, nil
}

func parseBool(v string) (bool, error) {
	switch v {
	case "true", "1", "yes":
		return true, nil
	case "false", "0", "no", "":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a Boolean", v)
}

// Store is an open connection to a remote store.
type Store struct {
	uri    string
	host   string // what the user named: [user@]host[:port]
	client *serve.Client
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *os.File // the read end of the remote's stdout; Wait leaves it open
	// group: the remote program runs in its own process group (localhost,
	// without ssh), which kill ends as a whole.
	group  bool
	stderr *stderrLog
	dir    storepath.Dir
	waited chan struct{} // closed when cmd has exited
	// waitErr is cmd.Wait's result, set before waited is closed.
	waitErr   error
	closeOnce sync.Once
	closeErr  error
	// With a lazy handshake (store.OpenOptions.LazyHandshake), helloChecked
	// is closed once the server's half has been checked, with helloErr
	// the error Open would have returned.
	helloChecked chan struct{}
	helloErr     error
}

var (
	_ store.Store           = (*Store)(nil)
	_ store.Locker          = (*Store)(nil)
	_ store.TempRooter      = (*Store)(nil)
	_ store.PathInfoQuerier = (*Store)(nil)
	_ store.Closurer        = (*Store)(nil)
	_ store.MultiAdder      = (*Store)(nil)
	_ store.MultiDumper     = (*Store)(nil)
	_ store.Builder         = (*Store)(nil)
)

// Command returns the argv that opens a session with the store u names, as
// Nix 2.8 builds it (SSHMaster::startCommand): for localhost the remote
// program run by a shell; else ssh HOST -x -a, the words of NIX_SSHOPTS,
// -i KEY, -oUserKnownHostsFile=FILE for a pinned host key (knownHosts is
// the file to write it to), -C, and ferry's -p PORT, then the command.
func Command(u *store.URI, p *Params, knownHosts string) (argv []string, err error) {
	host := u.Authority
	if host == "" {
		return nil, fmt.Errorf("store URI %q names no host", u.Raw)
	}
	cmd := p.RemoteProgram + " --serve --write"
	if p.RemoteStore != "" {
		cmd += " --store " + shellEscape(p.RemoteStore)
	}
	if isLocal(host) {
		return []string{"sh", "-c", cmd}, nil
	}
	hostPort, port := splitPort(host)
	argv = []string{"ssh", hostPort, "-x", "-a"}
	if port != "" {
		// Before NIX_SSHOPTS: ssh takes the first -p it is given, and
		// the URI's port names this machine, NIX_SSHOPTS every one.
		argv = append(argv, "-p", port)
	}
	argv = append(argv, strings.Fields(os.Getenv("NIX_SSHOPTS"))...)
	if p.SSHKey != "" {
		argv = append(argv, "-i", p.SSHKey)
	}
	if len(p.HostKey) > 0 {
		argv = append(argv, "-oUserKnownHostsFile="+knownHosts)
	}
	if p.Compress {
		argv = append(argv, "-C")
	}
	return append(argv, cmd), nil
}

// isLocal reports whether the remote program runs without ssh: for the
// host "localhost" with neither user nor port, as Nix's fakeSSH (2.8.0:
// src/libstore/ssh.cc) compares the whole host with "localhost".
func isLocal(host string) bool { return host == "localhost" }

// knownHostsLine is the known_hosts line that pins key for host
// ([user@]host[:port]): ssh looks a host up as "[host]:port" when the port
// is not 22.
func knownHostsLine(host string, key []byte) string {
	hp, port := splitPort(host)
	name := strings.Trim(hostName(hp), "[]")
	if port != "" && port != "22" {
		name = "[" + name + "]:" + port
	}
	return fmt.Sprintf("%s %s\n", name, key)
}

// splitPort splits "user@host:port" into "user@host" and "port"
// ("[v6]:port" too).
func splitPort(host string) (string, string) {
	i := strings.LastIndexByte(host, ':')
	if i < 0 || strings.HasSuffix(host, "]") {
		return host, ""
	}
	if strings.Contains(host[:i], ":") && !strings.Contains(host[:i], "]") {
		return host, "" // a bare IPv6 address
	}
	port := host[i+1:]
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return host, ""
	}
	userHost := host[:i]
	user, name := "", userHost
	if j := strings.LastIndexByte(userHost, '@'); j >= 0 {
		user, name = userHost[:j+1], userHost[j+1:]
	}
	if strings.HasPrefix(name, "[") && strings.HasSuffix(name, "]") {
		name = name[1 : len(name)-1]
	}
	return user + name, port
}

func hostName(userHost string) string {
	if i := strings.LastIndexByte(userHost, '@'); i >= 0 {
		return userHost[i+1:]
	}
	return userHost
}

// shellEscape quotes s for a POSIX shell, as Nix's shellEscape does.
func shellEscape(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Open starts a session with the remote store u names and performs the
// handshake, within the connect timeout.
func Open(ctx context.Context, u *store.URI, opts *store.OpenOptions) (*Store, error) {
	if opts == nil {
		opts = &store.OpenOptions{}
	}
	p, unknown, err := parseParams(u)
	if err != nil {
		return nil, err
	}
	logw := opts.Log
	if logw == nil {
		logw = io.Discard
	}
	for _, k := range unknown {
		fmt.Fprintf(logw, "warning: unknown setting '%s'\n", k)
	}
	timeout := opts.ConnectTimeout
	if p.ConnectTimeout > 0 {
		timeout = p.ConnectTimeout
	}
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	var knownHosts string
	if len(p.HostKey) > 0 {
		f, err := os.CreateTemp("", "ferry-host-key-")
		if err != nil {
			return nil, err
		}
		knownHosts = f.Name()
		_, werr := f.WriteString(knownHostsLine(u.Authority, p.HostKey))
		if err := errors.Join(werr, f.Close()); err != nil {
			os.Remove(knownHosts)
			return nil, err
		}
		// ssh reads it while connecting; it is removed once the
		// handshake is over.
		defer os.Remove(knownHosts)
	}
	argv, err := Command(u, p, knownHosts)
	if err != nil {
		return nil, err
	}
	s := &Store{uri: u.Raw, host: u.Authority, dir: p.Dir, waited: make(chan struct{}), group: isLocal(u.Authority)}
	prefix := u.Authority + "> "
	if opts.BareLog {
		prefix = ""
	}
	s.stderr = newStderrLog(logw, prefix)
	// The process is not tied to ctx: the store outlives the call that
	// opened it, and Close ends the session cleanly.
	s.cmd = exec.Command(argv[0], argv[1:]...)
	s.cmd.Stderr = s.stderr
	// A child the remote program leaves behind may hold stderr open:
	// Wait does not wait for it longer than this.
	s.cmd.WaitDelay = time.Second
	if s.group {
		// The local remote program and whatever it starts (a script's
		// children) are killed together. ssh keeps the terminal's
		// process group, for its password and host-key prompts.
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	s.stdin = stdinW
	s.cmd.Stdin = stdinR
	// Not StdoutPipe: Wait closes that as soon as the process has
	// exited, losing what a peer printed before exiting (a banner), and
	// a read blocked on it would wait for every child holding it.
	stdout, stdoutW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		s.stdin.Close()
		return nil, err
	}
	s.stdout = stdout
	s.cmd.Stdout = stdoutW
	// Pipes of 1 MiB rather than 64 KiB keep ssh and ferry working at the
	// same time on a big NAR (BENCHMARKS.md, the 256 MiB copy).
	growPipe(stdinW)
	growPipe(stdout)
	if opts.Verbose {
		fmt.Fprintf(logw, "%s: running %s\n", u.Raw, strings.Join(argv, " "))
	}
	err = s.cmd.Start()
	stdoutW.Close()
	stdinR.Close()
	if err != nil {
		s.stdin.Close()
		stdout.Close()
		return nil, fmt.Errorf("open %s: %w", u.Raw, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		s.stderr.Flush()
		close(s.waited)
	}()

	said := &headRecorder{r: stdout, max: 4096}
	var trace func(string, ...any)
	if opts.Verbose {
		trace = func(format string, args ...any) {
			fmt.Fprintf(logw, "%s: %s\n", u.Authority, fmt.Sprintf(format, args...))
		}
	}
	if opts.LazyHandshake {
		// The handshake's reply comes with the first call's; it is
		// checked, with the connect timeout, as it arrives.
		c, err := serve.NewClient(ctx, said, s.stdin, s.dir, &serve.ClientOptions{Closer: closerFunc(s.kill), Trace: trace, Lazy: true})
		if err != nil {
			return nil, s.openFailed(ctx, err, said)
		}
		s.client = c
		s.helloChecked = make(chan struct{})
		go s.checkHello(timeout, said)
		return s, nil
	}
	type result struct {
		c   *serve.Client
		err error
	}
	done := make(chan result, 1)
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		c, err := serve.NewClient(hctx, said, s.stdin, s.dir, &serve.ClientOptions{Closer: closerFunc(s.kill), Trace: trace})
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, s.openFailed(ctx, r.err, said)
		}
		s.client = r.c
		said.stop()
		return s, nil
	case <-time.After(timeout):
		s.kill()
		<-done
		s.reap()
		return nil, s.timedOut(timeout, said)
	case <-ctx.Done():
		s.kill()
		<-done
		s.reap()
		return nil, fmt.Errorf("open %s: %w", u.Raw, ctx.Err())
	}
}

// reap waits for the killed session to end, briefly: its last stderr
// lines are then in s.stderr.
func (s *Store) reap() {
	select {
	case <-s.waited:
	case <-time.After(2 * time.Second):
	}
}

// exitText describes how the process ended, once s.waited is closed.
func (s *Store) exitText() string {
	select {
	case <-s.waited:
	default:
		return ""
	}
	ps := s.cmd.ProcessState
	if ps == nil {
		return ""
	}
	who := "ssh"
	if s.group {
		who = "the remote program"
	}
	return fmt.Sprintf(" (%s ended: %v)", who, ps)
}

// openFailed explains a failed handshake the way Nix does ("'nix-store
// --serve' protocol mismatch from 'HOST', got '...'"), quoting what the
// other end printed on stdout and stderr and how it ended.
// timedOut is the error of a peer that did not answer the handshake in
// time.
func (s *Store) timedOut(timeout time.Duration, said *headRecorder) error {
	got := ""
	if t := said.describe(); t != "" {
		got = fmt.Sprintf("; it said %s", t)
	}
	return fmt.Errorf("open %s: '%s' did not answer the 'nix-store --serve' handshake within %v (connect-timeout)%s%s", s.uri, s.host, timeout, got, s.stderr.Quote())
}

// checkHello checks a lazy handshake as its reply arrives, within the
// connect timeout, and keeps the error Open would have given.
func (s *Store) checkHello(timeout time.Duration, said *headRecorder) {
	defer close(s.helloChecked)
	select {
	case <-s.client.HelloDone():
		if err := s.client.HelloErr(); err != nil {
			s.helloErr = s.openFailed(context.Background(), err, said)
		} else {
			said.stop()
		}
	case <-time.After(timeout):
		s.kill()
		<-s.client.HelloDone()
		s.reap()
		s.helloErr = s.timedOut(timeout, said)
	}
}

func (s *Store) openFailed(ctx context.Context, err error, said *headRecorder) error {
	if ctx.Err() != nil {
		s.kill()
		s.reap()
		return fmt.Errorf("open %s: %w", s.uri, ctx.Err())
	}
	// Let the peer finish what it is saying (a banner, then exit), and
	// keep the rest of what it printed.
	s.stdin.Close()
	select {
	case <-s.waited:
	case <-time.After(2 * time.Second):
		s.kill()
		s.reap()
	}
	s.stdout.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	io.CopyN(io.Discard, said, 64<<10)
	s.stdout.Close()
	exit, quote := s.exitText(), s.stderr.Quote()
	if v, ok := said.version(); ok && serve.Major(v) != 0x200 {
		return fmt.Errorf("open %s: unsupported 'nix-store --serve' protocol version on '%s': it speaks %d.%d (%#x), ferry speaks 2.x%s%s", s.uri, s.host, serve.Major(v)>>8, serve.Minor(v), v, exit, quote)
	}
	if got := said.describe(); got != "" {
		return fmt.Errorf("open %s: 'nix-store --serve' protocol mismatch from '%s', got %s%s%s", s.uri, s.host, got, exit, quote)
	}
	if exit == "" {
		exit = fmt.Sprintf(" (%v)", err)
	}
	// Nix 2.8 says "cannot connect to 'HOST'" when the peer hangs up.
	return fmt.Errorf("open %s: cannot connect to '%s': it said nothing%s%s", s.uri, s.host, exit, quote)
}

// printable keeps what a peer said readable in one error line: control
// characters and bytes that are not UTF-8 escaped, at most 512 bytes.
func printable(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		if i >= 512 {
			b.WriteString("...")
			break
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == '\n':
			b.WriteString("\\n")
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case r < ' ' || r == 0x7f:
			fmt.Fprintf(&b, "\\x%02x", r)
		default:
			b.WriteRune(r)
		}
		i += n
	}
	return b.String()
}

// Close ends the session: the remote sees end of input at a command
// boundary and exits, which releases its temp roots. It waits a moment for
// that, then kills ssh.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.stdin.Close()
		select {
		case <-s.waited:
		case <-time.After(5 * time.Second):
			s.kill()
			<-s.waited
		}
		if s.stdout != nil {
			s.stdout.Close()
		}
	})
	return s.closeErr
}

// kill stops the session at once (an interrupt, a timeout): the process
// (for localhost, its whole group), and the pipes, so that no read waits
// for a child that still holds them.
func (s *Store) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		if s.group {
			syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		}
		s.cmd.Process.Kill()
	}
	s.stdin.Close()
	if s.stdout != nil {
		s.stdout.Close()
	}
}

// URI is the URI the store was opened with.
func (s *Store) URI() string { return s.uri }

// RoundTrips is how many times the client has waited for the remote (the
// handshake included): see serve.Client.Waits.
func (s *Store) RoundTrips() int { return s.client.Waits() }

// ServerVersion is the protocol version word the remote sent.
func (s *Store) ServerVersion() uint64 { return s.client.ServerVersion() }

// Dir is the remote's store directory.
func (s *Store) Dir() storepath.Dir { return s.dir }

// fail adds to err what the remote said before the session broke: Nix's
// servers report a refused command on stderr and exit.
func (s *Store) fail(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if s.helloChecked != nil {
		// A lazy handshake that failed explains the failure best.
		<-s.helloChecked
		if s.helloErr != nil {
			return s.helloErr
		}
	}
	select {
	case <-s.waited:
	case <-time.After(2 * time.Second):
	}
	return fmt.Errorf("%s: %w%s", s.host, err, s.stderr.Quote())
}

// QueryPathInfo returns the info of a valid path.
func (s *Store) QueryPathInfo(ctx context.Context, p storepath.Path) (*store.PathInfo, error) {
	infos, err := s.client.QueryPathInfos(ctx, []storepath.Path{p})
	if err != nil {
		return nil, s.fail(err)
	}
	for _, info := range infos {
		if info.Path == p {
			return info, nil
		}
	}
	return nil, fmt.Errorf("path '%s' %w on %s", p, store.ErrNotValid, s.uri)
}

// QueryPathInfos returns the infos of the valid ones among paths in one
// request.
func (s *Store) QueryPathInfos(ctx context.Context, paths []storepath.Path) ([]*store.PathInfo, error) {
	infos, err := s.client.QueryPathInfos(ctx, paths)
	return infos, s.fail(err)
}

// QueryValidPaths reports which of paths are valid, without locking them.
func (s *Store) QueryValidPaths(ctx context.Context, paths []storepath.Path) ([]storepath.Path, error) {
	valid, err := s.client.QueryValidPaths(ctx, paths, false, false)
	return store.InOrder(paths, valid), s.fail(err)
}

// QueryValidPathsLocked reports which of paths are valid and has the
// remote temp-root them for the rest of the session (lock=1).
func (s *Store) QueryValidPathsLocked(ctx context.Context, paths []storepath.Path) ([]storepath.Path, error) {
	valid, err := s.client.QueryValidPaths(ctx, paths, true, false)
	return store.InOrder(paths, valid), s.fail(err)
}

// QueryValidPathsLockedSubstitute is QueryValidPathsLocked with
// substitute=1: the remote substitutes what it lacks first, when it can
// (nix-store --serve does; ferry serve has no substituters).
func (s *Store) QueryValidPathsLockedSubstitute(ctx context.Context, paths []storepath.Path) ([]storepath.Path, error) {
	valid, err := s.client.QueryValidPaths(ctx, paths, true, true)
	return store.InOrder(paths, valid), s.fail(err)
}

// AddTempRoot has the remote temp-root p for the rest of the session.
func (s *Store) AddTempRoot(ctx context.Context, p storepath.Path) error {
	_, err := s.QueryValidPathsLocked(ctx, []storepath.Path{p})
	return err
}

// QueryClosure asks the remote for the closure of paths. An invalid path
// among them ends the session, as Nix's server fails on it.
func (s *Store) QueryClosure(ctx context.Context, paths []storepath.Path, includeOutputs bool) ([]storepath.Path, error) {
	c, err := s.client.QueryClosure(ctx, paths, includeOutputs)
	return c, s.fail(err)
}

// NarFromPath writes the NAR of a valid path to w.
func (s *Store) NarFromPath(ctx context.Context, p storepath.Path, w io.Writer) error {
	return s.fail(s.client.DumpStorePath(ctx, p, w))
}

// NarsFromPaths streams the NARs of paths, all requested at once.
func (s *Store) NarsFromPaths(ctx context.Context, paths []storepath.Path, fn func(storepath.Path, io.Reader) error) error {
	return s.fail(s.client.DumpStorePaths(ctx, paths, fn))
}

// AddToStoreNar uploads one path.
func (s *Store) AddToStoreNar(ctx context.Context, info *store.PathInfo, nar io.Reader) error {
	return s.AddToStoreNars(ctx, []*store.PathInfo{info}, store.ReaderSource(nar), nil)
}

// AddToStoreNars uploads infos pipelined: AddToStoreNar where the remote
// has it (proto >= 2.5), else one ImportPaths.
func (s *Store) AddToStoreNars(ctx context.Context, infos []*store.PathInfo, nars store.NarSource, added func(*store.PathInfo)) error {
	if len(infos) == 0 {
		return nil
	}
	if s.client.HasAddToStoreNar() {
		return s.fail(s.client.AddToStoreNars(ctx, infos, nars, added))
	}
	return s.fail(s.client.ImportPaths(ctx, infos, nars, added))
}

// headRecorder passes reads through and keeps the first max bytes, to
// quote a peer that is not speaking the protocol.
type headRecorder struct {
	r       io.Reader
	mu      sync.Mutex
	buf     []byte
	max     int
	stopped bool
}

func (h *headRecorder) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.mu.Lock()
	if !h.stopped && len(h.buf) < h.max {
		h.buf = append(h.buf, p[:min(n, h.max-len(h.buf))]...)
	}
	h.mu.Unlock()
	return n, err
}

func (h *headRecorder) stop() {
	h.mu.Lock()
	h.stopped, h.buf = true, nil
	h.mu.Unlock()
}

// magic2 is serve.Magic2 as it is on the wire.
var magic2 = binary.LittleEndian.AppendUint64(nil, serve.Magic2)

// version returns the server's version word when what was read starts
// with the server's magic and a version.
func (h *headRecorder) version() (uint64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.buf) < 16 || !bytes.HasPrefix(h.buf, magic2) {
		return 0, false
	}
	return binary.LittleEndian.Uint64(h.buf[8:16]), true
}

// describe quotes what was read for an error ("'Welcome'"), naming the
// server's magic and version rather than quoting their bytes; "" when
// nothing was.
func (h *headRecorder) describe() string {
	h.mu.Lock()
	buf := h.buf
	h.mu.Unlock()
	var what []string
	if bytes.HasPrefix(buf, magic2) {
		what = append(what, "the 'nix-store --serve' magic")
		buf = buf[8:]
		if len(buf) >= 8 {
			v := binary.LittleEndian.Uint64(buf)
			what[0] += fmt.Sprintf(" and version %d.%d (%#x)", serve.Major(v)>>8, serve.Minor(v), v)
			buf = buf[8:]
		}
	}
	if t := strings.TrimRight(string(buf), "\r\n"); t != "" {
		what = append(what, "'"+printable(t)+"'")
	}
	return strings.Join(what, ", then ")
}

// stderrLog passes the remote's stderr on line by line with a prefix and
// keeps the last lines to quote in errors.
type stderrLog struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	part   []byte
	last   []string
}

const keepLines = 20

func newStderrLog(w io.Writer, prefix string) *stderrLog {
	return &stderrLog{w: w, prefix: prefix}
}

func (l *stderrLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		l.line(string(l.part[:i]))
		l.part = l.part[i+1:]
	}
	if len(l.part) > 64<<10 { // a very long line: pass it on in pieces
		l.line(string(l.part))
		l.part = nil
	}
	return len(p), nil
}

func (l *stderrLog) line(s string) {
	s = strings.TrimRight(s, "\r")
	fmt.Fprintf(l.w, "%s%s\n", l.prefix, s)
	l.last = append(l.last, s)
	if len(l.last) > keepLines {
		l.last = l.last[1:]
	}
}

// Flush passes on a last line that has no newline.
func (l *stderrLog) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.part) > 0 {
		l.line(string(l.part))
		l.part = nil
	}
}

// Quote returns "; the remote said: ..." with the last stderr lines, or ""
// when it said nothing.
func (l *stderrLog) Quote() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var lines []string
	for _, s := range l.last {
		if strings.TrimSpace(s) != "" {
			lines = append(lines, s)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return "; the remote said: " + strings.Join(lines, " / ")
}

// growPipe raises the buffer of the pipe f to 1 MiB (the unprivileged
// maximum); a refusal leaves it as it is.
func growPipe(f *os.File) {
	unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, 1<<20)
}

// closerFunc makes a function an io.Closer.
type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

// BuildDerivation sends drv in memory (BuildDerivation) and builds it on
// the remote; its inputs must be there already. The remote's build log
// arrives on its stderr, which goes where the store's log goes; log is
// not used.
func (s *Store) BuildDerivation(ctx context.Context, drvPath storepath.Path, drv *derivation.Derivation, settings *store.BuildSettings, log io.Writer) (*store.BuildResult, error) {
	res, err := s.client.BuildDerivation(ctx, drvPath, drv, settings)
	if err != nil {
		return nil, s.fail(err)
	}
	return res.Store(), nil
}

// BuildPaths has the remote realise paths it holds (BuildPaths). The
// protocol gives one status for all of them: each result carries it.
func (s *Store) BuildPaths(ctx context.Context, paths []store.DerivedPath, settings *store.BuildSettings, log io.Writer) ([]*store.BuildResult, error) {
	rep, err := s.client.BuildPaths(ctx, paths, settings)
	if err != nil {
		return nil, s.fail(err)
	}
	results := make([]*store.BuildResult, len(paths))
	failures := failureStatuses(rep.Status)
	for i := range paths {
		if rep.Status == 0 {
			results[i] = &store.BuildResult{Status: store.Built}
		} else {
			results[i] = &store.BuildResult{Status: failures[i%len(failures)], ErrorMsg: rep.Message}
		}
	}
	return results, nil
}

// failureStatuses reads the status of a failed BuildPaths, Nix's
// Worker::exitStatus (0x60 | mask: 0x01 timed out, 0x02 hash mismatch,
// 0x04 build failure, 0x08 not deterministic; anything else a plain
// failure), back into result statuses whose masks together give it again,
// so that a relay (ferry serve --store ssh://...) replies with the far
// status.
func failureStatuses(status uint64) []store.BuildStatus {
	if status&^0x0f != 0x60 {
		return []store.BuildStatus{store.MiscFailure}
	}
	var ss []store.BuildStatus
	if status&0x01 != 0 {
		ss = append(ss, store.TimedOut)
	}
	if status&0x02 != 0 {
		ss = append(ss, store.OutputRejected)
	}
	if status&0x08 != 0 {
		ss = append(ss, store.NotDeterministic)
	}
	if status&0x04 != 0 && status&0x03 == 0 {
		ss = append(ss, store.PermanentFailure)
	}
	if len(ss) == 0 {
		ss = append(ss, store.MiscFailure)
	}
	return ss
}
