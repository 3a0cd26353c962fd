package sshstore

// Tests of the connection set-up: the argv Command builds from a URI, and
// what Open does with peers that do not speak the protocol (a login banner,
// nologin, a chatty shell, a wrong magic or version, silence, a missing
// program), over ssh://localhost (no ssh) and over a real sshd, and the
// happy paths: ferry and nix-store as the remote, a pinned host key, the
// remote's stderr in the log.

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"ferry/internal/nixtest"
	"ferry/internal/sshtest"
	"ferry/nix/storepath"
	"ferry/store"
)

func TestMain(m *testing.M) {
	code := m.Run()
	nixtest.RemoveFerryBin()
	os.Exit(code)
}

func mustParse(t *testing.T, raw string) *store.URI {
	t.Helper()
	u, err := store.ParseURI(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestCommand(t *testing.T) {
	t.Setenv("NIX_SSHOPTS", "  -o ServerAliveInterval=5\t-v ")
	key := base64.StdEncoding.EncodeToString([]byte("ssh-ed25519 AAAAC3Nza"))
	for _, tc := range []struct {
		uri  string
		want []string
	}{
		{"ssh://localhost", []string{"sh", "-c", "nix-store --serve --write"}},
		{"ssh://localhost?remote-program=/opt/ferry&remote-store=/tmp/s", []string{"sh", "-c", "/opt/ferry --serve --write --store '/tmp/s'"}},
		// As Nix's fakeSSH: only the bare name "localhost" skips ssh.
		{"ssh://bob@localhost", []string{"ssh", "bob@localhost", "-x", "-a", "-o", "ServerAliveInterval=5", "-v", "nix-store --serve --write"}},
		{"ssh://localhost:22", []string{"ssh", "localhost", "-x", "-a", "-p", "22", "-o", "ServerAliveInterval=5", "-v", "nix-store --serve --write"}},
		{"ssh://host", []string{"ssh", "host", "-x", "-a", "-o", "ServerAliveInterval=5", "-v", "nix-store --serve --write"}},
		{
			"ssh://user@host:2222?remote-program=ferry&remote-store=/s&ssh-key=/k/id&base64-ssh-public-host-key=" + url.QueryEscape(key) + "&compress=true",
			[]string{"ssh", "user@host", "-x", "-a", "-p", "2222", "-o", "ServerAliveInterval=5", "-v", "-i", "/k/id", "-oUserKnownHostsFile=/tmp/F", "-C", `ferry --serve --write --store '/s'`},
		},
		{"ssh://host?remote-store=/tmp/it's%20here", []string{"ssh", "host", "-x", "-a", "-o", "ServerAliveInterval=5", "-v", `nix-store --serve --write --store '/tmp/it'\''s here'`}},
		{"ssh://host?compress=false", []string{"ssh", "host", "-x", "-a", "-o", "ServerAliveInterval=5", "-v", "nix-store --serve --write"}},
		{"ssh://host?remote-program=", []string{"ssh", "host", "-x", "-a", "-o", "ServerAliveInterval=5", "-v", "nix-store --serve --write"}},
		{"ssh://[::1]:2222", []string{"ssh", "::1", "-x", "-a", "-p", "2222", "-o", "ServerAliveInterval=5", "-v", "nix-store --serve --write"}},
		{"ssh://u@[::1]:2222", []string{"ssh", "u@::1", "-x", "-a", "-p", "2222", "-o", "ServerAliveInterval=5", "-v", "nix-store --serve --write"}},
		{"ssh://[::1]", []string{"ssh", "[::1]", "-x", "-a", "-o", "ServerAliveInterval=5", "-v", "nix-store --serve --write"}},
		{"ssh://::1", []string{"ssh", "::1", "-x", "-a", "-o", "ServerAliveInterval=5", "-v", "nix-store --serve --write"}},
	} {
		u := mustParse(t, tc.uri)
		p, unknown, err := parseParams(u)
		if err != nil {
			t.Errorf("%s: parseParams: %v", tc.uri, err)
			continue
		}
		if len(unknown) != 0 {
			t.Errorf("%s: unknown parameters %q", tc.uri, unknown)
		}
		got, err := Command(u, p, "/tmp/F")
		if err != nil {
			t.Errorf("%s: Command: %v", tc.uri, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("Command(%s) (-want +got):\n%s", tc.uri, diff)
		}
	}

	t.Setenv("NIX_SSHOPTS", "")
	u := mustParse(t, "ssh://host")
	p, _, _ := parseParams(u)
	got, _ := Command(u, p, "")
	if diff := cmp.Diff([]string{"ssh", "host", "-x", "-a", "nix-store --serve --write"}, got); diff != "" {
		t.Errorf("Command(ssh://host), empty NIX_SSHOPTS (-want +got):\n%s", diff)
	}
	if _, err := Command(mustParse(t, "ssh://?remote-program=x"), p, ""); err == nil || !strings.Contains(err.Error(), "names no host") {
		t.Errorf("Command(ssh://) = %v, want an error saying it names no host", err)
	}
}

func TestParseParams(t *testing.T) {
	u := mustParse(t, "ssh://h?zeta=1&compress=1&alpha=2&priority=30&want-mass-query=true&connect-timeout=2.5&ssh-key=/k")
	p, unknown, err := parseParams(u)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"alpha", "zeta"}, unknown); diff != "" {
		t.Errorf("unknown parameters (-want +got):\n%s", diff)
	}
	want := &Params{RemoteProgram: "nix-store", SSHKey: "/k", Compress: true, ConnectTimeout: 2500 * time.Millisecond, Dir: storepath.DefaultDir}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("params (-want +got):\n%s", diff)
	}
	// store= is the logical store directory of the session's paths, as
	// for Nix's LegacySSHStore; a local store's parameters get Nix's
	// warning.
	p, unknown, err = parseParams(mustParse(t, "ssh://h?store=/l/store/&state=/s&root=/r"))
	if err != nil || p.Dir != "/l/store" || !slices.Equal(unknown, []string{"root", "state"}) {
		t.Errorf("store=: %+v, %q, %v", p, unknown, err)
	}
	if _, _, err := parseParams(mustParse(t, "ssh://h?store=rel")); err == nil || !strings.Contains(err.Error(), "not an absolute path: 'rel'") {
		t.Errorf("store=rel: %v", err)
	}
	for _, v := range []string{"false", "0", "no", ""} {
		p, _, err := parseParams(mustParse(t, "ssh://h?compress="+v))
		if err != nil || p.Compress {
			t.Errorf("compress=%s: Compress %v, %v; want false", v, p != nil && p.Compress, err)
		}
	}
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH"
	p, _, err = parseParams(mustParse(t, "ssh://h?base64-ssh-public-host-key="+url.QueryEscape(base64.StdEncoding.EncodeToString([]byte(key+"\n")))))
	if err != nil || string(p.HostKey) != key {
		t.Errorf("base64-ssh-public-host-key: %q, %v; want %q", p.HostKey, err, key)
	}
	// Nix's base64Decode takes the key unpadded, broken by newlines, or
	// with text after the padding.
	enc := base64.StdEncoding.EncodeToString([]byte(key))
	for _, v := range []string{strings.TrimRight(enc, "="), enc[:10] + "\n" + enc[10:], enc + "=junk"} {
		p, _, err = parseParams(mustParse(t, "ssh://h?base64-ssh-public-host-key="+url.QueryEscape(v)))
		if err != nil || string(p.HostKey) != key {
			t.Errorf("base64-ssh-public-host-key=%q: %q, %v; want %q", v, p.HostKey, err, key)
		}
	}
	for _, tc := range []struct{ query, want string }{
		{"connect-timeout=abc", `connect-timeout "abc" is not a positive number of seconds`},
		{"connect-timeout=0", `connect-timeout "0" is not a positive number of seconds`},
		{"connect-timeout=-1", `connect-timeout "-1" is not a positive number of seconds`},
		{"connect-timeout=", `connect-timeout "" is not a positive number of seconds`},
		{"compress=maybe", `compress: "maybe" is not a Boolean`},
		{"base64-ssh-public-host-key=%25%25", "base64-ssh-public-host-key is not base64"},
	} {
		raw := "ssh://localhost?" + tc.query
		_, _, err := parseParams(mustParse(t, raw))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), raw) {
			t.Errorf("%s: parseParams error %v, want one naming the URI and saying %s", raw, err, tc.want)
		}
		// Open refuses it before starting anything.
		start := time.Now()
		st, err := store.Open(context.Background(), raw, nil)
		if err == nil {
			st.Close()
			t.Errorf("%s: Open succeeded", raw)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Open error %v, want one saying %s", raw, err, tc.want)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: Open took %v", raw, d)
		}
	}
}

func TestKnownHostsLine(t *testing.T) {
	key := []byte("ssh-ed25519 AAAA")
	for host, want := range map[string]string{
		"host":             "host ssh-ed25519 AAAA\n",
		"u@host":           "host ssh-ed25519 AAAA\n",
		"u@127.0.0.1:2222": "[127.0.0.1]:2222 ssh-ed25519 AAAA\n",
		"host:22":          "host ssh-ed25519 AAAA\n",
		"u@[::1]:2222":     "[::1]:2222 ssh-ed25519 AAAA\n",
		"[::1]":            "::1 ssh-ed25519 AAAA\n",
	} {
		if got := knownHostsLine(host, key); got != want {
			t.Errorf("knownHostsLine(%q) = %q, want %q", host, got, want)
		}
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"Welcome\n":         `Welcome\n`,
		"\xeb\x9d\x0c9\x00": `\xeb\x9d\x0c9\x00`,
		"tab\tbell\a\x7f":   `tab\x09bell\x07\x7f`,
		"héllo ✓":           "héllo ✓",
		"\xff\xfe":          `\xff\xfe`,
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
	if got := printable(strings.Repeat("x", 2000)); len(got) != 515 || !strings.HasSuffix(got, "...") {
		t.Errorf("printable of 2000 bytes: %d bytes, want 512 and ...", len(got))
	}
}

// peer writes a shell script that first appends its pid to a file, then
// runs body, where $PIDFILE names that file (for the pids of children it
// starts). It returns the script's path and the pid file's.
func peer(t *testing.T, body string) (prog, pidFile string) {
	t.Helper()
	dir := t.TempDir()
	prog = filepath.Join(dir, "peer")
	pidFile = filepath.Join(dir, "pids")
	script := fmt.Sprintf("#!/bin/sh\nPIDFILE='%s'\necho $$ >>\"$PIDFILE\"\n%s\n", pidFile, body)
	if err := nixtest.WriteExecutable(prog, []byte(script)); err != nil {
		t.Fatal(err)
	}
	return prog, pidFile
}

// alive reports whether pid names a process that has not exited (a zombie
// waiting for a reaper counts as gone).
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// checkGone fails the test if a pid in pidFile is still running a moment
// after Open or Close returned; it kills what it finds.
func checkGone(t *testing.T, pidFile string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return
	} else if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("pid file %s: %q", pidFile, b)
		}
		deadline := time.Now().Add(2 * time.Second)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("process %d of the peer is still running", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Octal escapes of the wire words for printf.
const (
	wireMagic1 = `\353\235\014\071\000\000\000\000` // the client's magic 0x390c9deb
	wireMagic2 = `\313\356\122\124\000\000\000\000` // the server's magic 0x5452eecb
)

// badPeer is a remote program that does not speak the protocol and what
// Open must say about it.
type badPeer struct {
	name  string
	body  string // the script; "" for remote-program=/nonexistent/ferry
	query string // more URI parameters
	opts  *store.OpenOptions
	want  []string // in the error, besides the URI and the host
	// min and max bound the time Open takes; max defaults to 2 s.
	min, max time.Duration
	errIs    error
}

var badPeers = []badPeer{
	{
		name: "banner",
		body: `printf 'Welcome to host\n'; exit 0`,
		want: []string{"'nix-store --serve' protocol mismatch from 'localhost', got 'Welcome to host' (the remote program ended: exit status 0)"},
	},
	{
		name: "banner in two writes",
		body: `printf 'Welcome to host\n'; sleep 0.3; printf 'Last login: never\n'`,
		want: []string{"got 'Welcome to host\\nLast login: never' (the remote program ended: exit status 0)"},
	},
	{
		name: "nologin",
		body: `echo "This account is currently not available."; exit 1`,
		want: []string{"protocol mismatch from 'localhost', got 'This account is currently not available.' (the remote program ended: exit status 1)"},
	},
	{
		name: "real nologin",
		body: `exec /usr/sbin/nologin`,
		want: []string{"protocol mismatch from 'localhost', got 'This account is currently not available.' (the remote program ended: exit status 1)"},
	},
	{
		// A .bashrc that echoes, then a shell that reads commands: it
		// reads the client's magic as a command line and waits for more.
		name: "chatty shell waiting on stdin",
		body: "echo 'Hello from .bashrc'\nexec 3<&0\ncat <&3 >/dev/null &\necho $! >>\"$PIDFILE\"\nwait",
		want: []string{"protocol mismatch from 'localhost', got 'Hello from .bashrc' (the remote program ended: exit status 0)"},
	},
	{
		// It prints a banner and neither reads nor exits: Open gives it
		// 2 s after the mismatch, then kills it.
		name: "banner then stuck",
		body: "echo Welcome to host\nsleep 60 &\necho $! >>\"$PIDFILE\"\nwait",
		want: []string{"protocol mismatch from 'localhost', got 'Welcome to host' (the remote program ended: signal: killed)"},
		min:  1900 * time.Millisecond,
		max:  4 * time.Second,
	},
	{
		// Less than a word, then waiting: only the timeout ends it.
		name:  "short greeting then waiting",
		body:  "printf 'hi\\n'\nexec 3<&0\ncat <&3 >/dev/null &\necho $! >>\"$PIDFILE\"\nwait",
		query: "&connect-timeout=1",
		want:  []string{"'localhost' did not answer the 'nix-store --serve' handshake within 1s (connect-timeout); it said 'hi'"},
		min:   900 * time.Millisecond,
		max:   3 * time.Second,
	},
	{
		name: "wrong magic",
		body: `printf '\001\002\003\004\005\006\007\010` + `\007\002\000\000\000\000\000\000'; exec cat >/dev/null`,
		want: []string{`protocol mismatch from 'localhost', got '\x01\x02\x03\x04\x05\x06\x07\x08\x07\x02\x00\x00\x00\x00\x00\x00' (the remote program ended: exit status 0)`},
	},
	{
		// An echo: the client's own magic comes back.
		name: "echo",
		body: `exec cat`,
		// With a lazy handshake the echo goes on with the first request.
		want: []string{`protocol mismatch from 'localhost', got '\xeb\x9d\x0c9\x00\x00\x00\x00\x07\x02\x00\x00\x00\x00\x00\x00`, `(the remote program ended: exit status 0)`},
	},
	{
		name: "client magic",
		body: `printf '` + wireMagic1 + `\007\002\000\000\000\000\000\000'; exit 0`,
		want: []string{`protocol mismatch from 'localhost', got '\xeb\x9d\x0c9\x00\x00\x00\x00\x07\x02\x00\x00\x00\x00\x00\x00' (the remote program ended: exit status 0)`},
	},
	{
		name: "version 1.0",
		body: `printf '` + wireMagic2 + `\000\001\000\000\000\000\000\000'; exec cat >/dev/null`,
		want: []string{"unsupported 'nix-store --serve' protocol version on 'localhost': it speaks 1.0 (0x100), ferry speaks 2.x (the remote program ended: exit status 0)"},
	},
	{
		name: "version 3.0",
		body: `printf '` + wireMagic2 + `\000\003\000\000\000\000\000\000'; exit 0`,
		want: []string{"unsupported 'nix-store --serve' protocol version on 'localhost': it speaks 3.0 (0x300), ferry speaks 2.x"},
	},
	{
		name: "version 3.7 then stderr",
		body: `printf '` + wireMagic2 + `\007\003\000\000\000\000\000\000'; echo 'server: too new' >&2; exit 3`,
		want: []string{"it speaks 3.7 (0x307), ferry speaks 2.x (the remote program ended: exit status 3); the remote said: server: too new"},
	},
	{
		name: "magic then exit",
		body: `printf '` + wireMagic2 + `'; exit 0`,
		want: []string{"protocol mismatch from 'localhost', got the 'nix-store --serve' magic (the remote program ended: exit status 0)"},
	},
	{
		name: "magic and version then text",
		body: `printf '` + wireMagic2 + `\000\001\000\000\000\000\000\000oops\n'; exit 0`,
		want: []string{"it speaks 1.0 (0x100)"},
	},
	{
		name: "silent exit 0",
		body: `exit 0`,
		want: []string{"cannot connect to 'localhost': it said nothing (the remote program ended: exit status 0)"},
	},
	{
		name: "silent exit 1",
		body: `exit 1`,
		want: []string{"cannot connect to 'localhost': it said nothing (the remote program ended: exit status 1)"},
	},
	{
		name: "stderr only",
		body: `echo 'bash: line 1: nix-store: command not found' >&2; exit 127`,
		want: []string{"it said nothing (the remote program ended: exit status 127); the remote said: bash: line 1: nix-store: command not found"},
	},
	{
		name: "stderr without newline",
		body: `printf 'error: no such store' >&2; exit 1`,
		want: []string{"it said nothing (the remote program ended: exit status 1); the remote said: error: no such store"},
	},
	{
		name:  "no answer, connect-timeout",
		body:  "echo 'waiting for the network' >&2\nsleep 60 &\necho $! >>\"$PIDFILE\"\nwait",
		query: "&connect-timeout=1",
		want:  []string{"'localhost' did not answer the 'nix-store --serve' handshake within 1s (connect-timeout); the remote said: waiting for the network"},
		min:   900 * time.Millisecond,
		max:   3 * time.Second,
	},
	{
		name: "no answer, OpenOptions.ConnectTimeout",
		body: "sleep 60 &\necho $! >>\"$PIDFILE\"\nwait",
		opts: &store.OpenOptions{ConnectTimeout: 700 * time.Millisecond},
		want: []string{"'localhost' did not answer the 'nix-store --serve' handshake within 700ms (connect-timeout)"},
		min:  600 * time.Millisecond,
		max:  3 * time.Second,
	},
	{
		name:  "no answer, the URI overrides OpenOptions",
		body:  "sleep 60 &\necho $! >>\"$PIDFILE\"\nwait",
		query: "&connect-timeout=0.5",
		opts:  &store.OpenOptions{ConnectTimeout: time.Minute},
		want:  []string{"did not answer the 'nix-store --serve' handshake within 500ms"},
		min:   400 * time.Millisecond,
		max:   3 * time.Second,
	},
	{
		name: "no answer, exec sleep",
		body: "exec sleep 60",
		opts: &store.OpenOptions{ConnectTimeout: 500 * time.Millisecond},
		want: []string{"did not answer the 'nix-store --serve' handshake within 500ms"},
		min:  400 * time.Millisecond,
		max:  3 * time.Second,
	},
	{
		name: "nonexistent remote program",
		want: []string{"cannot connect to 'localhost': it said nothing (the remote program ended: exit status 127); the remote said: ", "/nonexistent/ferry: not found"},
	},
}

func TestOpenBadPeers(t *testing.T) {
	nixtest.Require(t, "sh", "printf", "cat", "sleep")
	for _, lazy := range []bool{false, true} {
		for _, tc := range badPeers {
			testBadPeer(t, tc, lazy)
		}
	}
}

// testBadPeer opens the store tc describes; with a lazy handshake Open
// returns at once and the first call must fail with the error Open would
// have given.
func testBadPeer(t *testing.T, tc badPeer, lazy bool) {
	name := tc.name
	if lazy {
		name += "/lazy"
	}
	{
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			prog, pidFile := "/nonexistent/ferry", ""
			if tc.body != "" {
				prog, pidFile = peer(t, tc.body)
			}
			uri := "ssh://localhost?remote-program=" + url.QueryEscape(prog) + tc.query
			if !strings.Contains(tc.query, "connect-timeout") && tc.opts == nil {
				uri += "&connect-timeout=10"
			}
			opts := tc.opts
			if opts == nil {
				opts = &store.OpenOptions{}
			}
			log := &nixtest.SyncBuffer{}
			o := *opts
			o.Log = log
			o.LazyHandshake = lazy
			start := time.Now()
			st, err := store.Open(context.Background(), uri, &o)
			if err == nil && lazy {
				_, err = st.QueryValidPaths(context.Background(), []storepath.Path{"/nix/store/00000000000000000000000000000000-x"})
				st.Close()
			}
			took := time.Since(start)
			if err == nil {
				st.Close()
				t.Fatalf("Open(%s) succeeded", uri)
			}
			msg := err.Error()
			t.Logf("Open took %v: %v", took, msg)
			for _, w := range append([]string{"open " + uri + ": ", "'localhost'"}, tc.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q\ndoes not contain %q", msg, w)
				}
			}
			max := tc.max
			if max == 0 {
				max = 2 * time.Second
			}
			if took < tc.min || took > max {
				t.Errorf("Open took %v, want %v to %v", took, tc.min, max)
			}
			if pidFile != "" {
				checkGone(t, pidFile)
			}
		})
	}
}

// TestOpenCancel: cancelling the context ends a handshake that would wait
// for the connect timeout, with the context's error.
func TestOpenCancel(t *testing.T) {
	prog, pidFile := peer(t, "sleep 60 &\necho $! >>\"$PIDFILE\"\nwait")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	uri := "ssh://localhost?remote-program=" + prog
	start := time.Now()
	st, err := store.Open(ctx, uri, nil)
	if err == nil {
		st.Close()
		t.Fatal("Open succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), uri) {
		t.Errorf("Open error %v, want context.DeadlineExceeded naming %s", err, uri)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Open took %v", took)
	}
	checkGone(t, pidFile)
}

// TestOpenUnknownSetting: Nix warns about a parameter it does not know
// and goes on; so does Open, in the log.
func TestOpenUnknownSetting(t *testing.T) {
	prog, _ := peer(t, "exit 0")
	log := &nixtest.SyncBuffer{}
	uri := "ssh://localhost?remote-program=" + prog + "&zzz=1&frobnicate=yes&priority=10"
	st, err := store.Open(context.Background(), uri, &store.OpenOptions{Log: log})
	if err == nil {
		st.Close()
		t.Fatal("Open succeeded")
	}
	want := "warning: unknown setting 'frobnicate'\nwarning: unknown setting 'zzz'\n"
	if got := log.String(); !strings.HasPrefix(got, want) {
		t.Errorf("log %q, want it to start with %q", got, want)
	}
}

// addPath adds a file to a chroot store with nix-store --add, creating
// the store, and returns the path.
func addPath(t *testing.T, dir string) storepath.Path {
	t.Helper()
	f := filepath.Join(t.TempDir(), "hello.txt")
	if err := os.WriteFile(f, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := storepath.Parse(nixtest.Line(t, "nix-store", "--store", dir, "--add", f))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// missingPath is a well-formed path that no store holds.
const missingPath = storepath.Path("/nix/store/00000000000000000000000000000000-missing")

// checkSession opens uri, checks that QueryValidPaths tells valid from
// missing, and closes the store.
func checkSession(t *testing.T, uri string, opts *store.OpenOptions, valid storepath.Path) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, uri, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", uri, err)
	}
	got, err := st.(*Store).QueryValidPaths(ctx, []storepath.Path{missingPath, valid})
	if err != nil {
		t.Errorf("QueryValidPaths: %v", err)
	} else if diff := cmp.Diff([]storepath.Path{valid}, got); diff != "" {
		t.Errorf("QueryValidPaths (-want +got):\n%s", diff)
	}
	if err := st.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// TestRemoteStderr: what the remote program says on stderr before and
// during the session reaches OpenOptions.Log, line by line, with the host
// in front; after Close nothing of it is left running.
func TestRemoteStderr(t *testing.T) {
	nixtest.RequireNix(t)
	ferry := nixtest.FerryBin(t)
	dir := filepath.Join(t.TempDir(), "store")
	p := addPath(t, dir)
	prog, pidFile := peer(t, fmt.Sprintf("echo 'first line' >&2\nprintf 'second line\\n\\n third\\n' >&2\nexec '%s' serve --write --store '%s'", ferry, dir))
	log := &nixtest.SyncBuffer{}
	checkSession(t, "ssh://localhost?remote-program="+url.QueryEscape(prog), &store.OpenOptions{Log: log}, p)
	want := "localhost> first line\nlocalhost> second line\nlocalhost> \nlocalhost>  third\n"
	if got := log.String(); got != want {
		t.Errorf("log:\n%s\nwant:\n%s", got, want)
	}
	checkGone(t, pidFile)
}

// TestOpenLocalFerry: ssh://localhost with remote-program=ferry and
// remote-store, as ferry demo uses it.
func TestOpenLocalFerry(t *testing.T) {
	nixtest.RequireNix(t)
	ferry := nixtest.FerryBin(t)
	dir := filepath.Join(t.TempDir(), "store")
	p := addPath(t, dir)
	checkSession(t, "ssh://localhost?remote-program="+url.QueryEscape(ferry)+"&remote-store="+url.QueryEscape(dir), nil, p)
}

// sshOptsWithout returns s.SSHArgs() without the options named, as
// NIX_SSHOPTS.
func sshOptsWithout(s *sshtest.Server, names ...string) string {
	args := s.SSHArgs()
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == "-o" && i+1 < len(args) {
			drop := false
			for _, n := range names {
				if strings.HasPrefix(args[i+1], n+"=") {
					drop = true
				}
			}
			if drop {
				i++
				continue
			}
		}
		out = append(out, args[i])
	}
	return strings.Join(out, " ")
}

// sshdURI is ssh://USER@127.0.0.1:PORT for s, with the query.
func sshdURI(s *sshtest.Server, query string) string {
	uri := "ssh://" + s.Destination() + ":" + strconv.Itoa(s.Port)
	if query != "" {
		uri += "?" + query
	}
	return uri
}

// TestOpenBadPeersSSHD: the same failures behind a real sshd, where the
// forced command is the peer.
func TestOpenBadPeersSSHD(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"banner", `printf 'Welcome to host\n'; exit 0`, []string{"got 'Welcome to host' (ssh ended: exit status 0)"}},
		{"nologin", `echo "This account is currently not available."; exit 1`, []string{"got 'This account is currently not available.' (ssh ended: exit status 1)"}},
		{"stderr only", `echo 'sh: 1: nix-store: not found' >&2; exit 127`, []string{"it said nothing (ssh ended: exit status 127); the remote said: sh: 1: nix-store: not found"}},
		{"version 3.0", `printf '` + wireMagic2 + `\000\003\000\000\000\000\000\000'; exec cat >/dev/null`, []string{"unsupported 'nix-store --serve' protocol version on '", "it speaks 3.0 (0x300)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prog, pidFile := peer(t, tc.body)
			s := sshtest.Start(t, &sshtest.Options{ForcedCommand: prog})
			t.Setenv("NIX_SSHOPTS", s.SSHOpts())
			uri := sshdURI(s, "connect-timeout=10")
			start := time.Now()
			st, err := store.Open(context.Background(), uri, nil)
			took := time.Since(start)
			if err == nil {
				st.Close()
				t.Fatal("Open succeeded")
			}
			msg := err.Error()
			t.Logf("Open took %v: %v", took, msg)
			host := s.Destination() + ":" + strconv.Itoa(s.Port)
			for _, w := range append([]string{"open " + uri + ": ", "'" + host + "'"}, tc.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q\ndoes not contain %q", msg, w)
				}
			}
			if took > 5*time.Second {
				t.Errorf("Open took %v", took)
			}
			checkGone(t, pidFile)
		})
	}
}

// TestOpenSSHD: sessions through a real sshd, with ferry as the forced
// command and with nix-store as the remote program the client names.
func TestOpenSSHD(t *testing.T) {
	nixtest.RequireNix(t)
	ferry := nixtest.FerryBin(t)
	dir := filepath.Join(t.TempDir(), "store")
	p := addPath(t, dir)

	t.Run("forced ferry", func(t *testing.T) {
		s := sshtest.Start(t, &sshtest.Options{ForcedCommand: ferry + " serve --write --store " + dir})
		t.Setenv("NIX_SSHOPTS", s.SSHOpts())
		checkSession(t, sshdURI(s, ""), nil, p)
	})
	t.Run("nix-store", func(t *testing.T) {
		s := sshtest.Start(t, nil)
		t.Setenv("NIX_SSHOPTS", s.SSHOpts())
		checkSession(t, sshdURI(s, "remote-program=nix-store&remote-store="+url.QueryEscape(dir)), nil, p)
	})
	t.Run("remote-program ferry", func(t *testing.T) {
		s := sshtest.Start(t, nil)
		t.Setenv("NIX_SSHOPTS", s.SSHOpts())
		checkSession(t, sshdURI(s, "remote-program="+url.QueryEscape(ferry)+"&remote-store="+url.QueryEscape(dir)), nil, p)
	})
	t.Run("pinned host key", func(t *testing.T) {
		s := sshtest.Start(t, &sshtest.Options{ForcedCommand: ferry + " serve --write --store " + dir})
		// No known_hosts file names the server: StrictHostKeyChecking
		// refuses it unless the URI pins its key.
		t.Setenv("NIX_SSHOPTS", sshOptsWithout(s, "UserKnownHostsFile"))
		host := s.Destination() + ":" + strconv.Itoa(s.Port)

		st, err := store.Open(context.Background(), sshdURI(s, ""), nil)
		if err == nil {
			st.Close()
			t.Fatal("Open without a pinned key or known_hosts succeeded")
		}
		if msg := err.Error(); !strings.Contains(msg, "Host key verification failed") || !strings.Contains(msg, "'"+host+"'") {
			t.Errorf("Open without a pinned key: %v, want ssh's host key complaint", err)
		}

		pin := base64.StdEncoding.EncodeToString([]byte(s.HostKey))
		checkSession(t, sshdURI(s, "base64-ssh-public-host-key="+url.QueryEscape(pin)), nil, p)

		// The client's key is a real ed25519 key, but not the host's.
		wrongKey, err := os.ReadFile(s.KeyFile + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		wrong := base64.StdEncoding.EncodeToString(wrongKey)
		start := time.Now()
		st, err = store.Open(context.Background(), sshdURI(s, "base64-ssh-public-host-key="+url.QueryEscape(wrong)), nil)
		if err == nil {
			st.Close()
			t.Fatal("Open with a wrong pinned key succeeded")
		}
		msg := err.Error()
		t.Logf("wrong pinned key: %v", msg)
		for _, w := range []string{"cannot connect to '" + host + "': it said nothing (ssh ended: exit status 255); the remote said: ", "Host key verification failed."} {
			if !strings.Contains(msg, w) {
				t.Errorf("error %q\ndoes not contain %q", msg, w)
			}
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("Open took %v", took)
		}
		// The pinned key's file is gone once Open has returned.
		if m, _ := filepath.Glob(filepath.Join(os.TempDir(), "ferry-host-key-*")); len(m) > 0 {
			for _, f := range m {
				if b, _ := os.ReadFile(f); bytes.Contains(b, []byte(strings.Fields(string(wrongKey))[1])) {
					t.Errorf("pinned key file %s left behind", f)
				}
			}
		}
	})
}

// TestOpenSSHUnreachable: ssh's own complaint for a host it cannot reach
// is quoted.
func TestOpenSSHUnreachable(t *testing.T) {
	nixtest.Require(t, "ssh")
	t.Setenv("NIX_SSHOPTS", "-F none -o BatchMode=yes -o ConnectTimeout=5")
	// Port 1: nothing listens there.
	uri := "ssh://nobody@127.0.0.1:1?connect-timeout=10"
	start := time.Now()
	st, err := store.Open(context.Background(), uri, nil)
	if err == nil {
		st.Close()
		t.Fatal("Open succeeded")
	}
	msg := err.Error()
	for _, w := range []string{"cannot connect to 'nobody@127.0.0.1:1': it said nothing (ssh ended: exit status 255); the remote said: ", "Connection refused"} {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q\ndoes not contain %q", msg, w)
		}
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Open took %v", took)
	}
}
