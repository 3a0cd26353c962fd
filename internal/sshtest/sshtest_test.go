package sshtest

import (
	"os"
	"strings"
	"testing"
)

func run(t *testing.T, s *Server, args ...string) string {
	t.Helper()
	cmd := s.Command(args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ssh %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestCommand(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	if got := run(t, s, "echo", "hi"); got != "hi" {
		t.Errorf("ssh echo hi = %q, want %q", got, "hi")
	}
	// The session sees the private HOME and NIX_CONF_DIR.
	got := run(t, s, "echo", "$HOME", "$NIX_CONF_DIR", "$SSH_ORIGINAL_COMMAND")
	want := s.Dir + "/remote/home " + s.Dir + "/remote/etc-nix"
	if got != want {
		t.Errorf("session env = %q, want %q", got, want)
	}
}

func TestForcedCommand(t *testing.T) {
	t.Parallel()
	s := Start(t, &Options{ForcedCommand: "echo forced $SSH_ORIGINAL_COMMAND"})
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"true"}, "forced true"},
		{[]string{"nix-store", "--serve", "--write"}, "forced nix-store --serve --write"},
		{nil, "forced"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, "_"), func(t *testing.T) {
			if got := run(t, s, tt.args...); got != tt.want {
				t.Errorf("ssh %q = %q, want %q", tt.args, got, tt.want)
			}
		})
	}
}

func TestEnv(t *testing.T) {
	t.Parallel()
	s := Start(t, &Options{Env: []string{"FERRY_TEST=a b", "HOME=/nonexistent-home"}})
	if got := run(t, s, "echo", "$FERRY_TEST", "$HOME"); got != "a b /nonexistent-home" {
		t.Errorf("session env = %q", got)
	}
}

func TestTwoServers(t *testing.T) {
	t.Parallel()
	a, b := Start(t, nil), Start(t, nil)
	if a.Port == b.Port {
		t.Fatalf("two servers share port %d", a.Port)
	}
	// a's key is not authorized on b.
	cmd := b.Command("true")
	for i, arg := range cmd.Args {
		if arg == b.KeyFile {
			cmd.Args[i] = a.KeyFile
		}
	}
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("foreign key accepted: %s", out)
	}
	if _, err := os.Stat(a.LogFile); err != nil {
		t.Errorf("log file: %v", err)
	}
}
