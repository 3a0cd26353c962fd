package sshtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/nixtest"
)

// nixCmd runs a Nix client tool with nixtest.Env plus the server's Env.
func nixCmd(t *testing.T, s *Server, extraEnv []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(append(nixtest.Env(t.TempDir()), s.Env()...), extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		t.Logf("%s %s:\n%s", name, strings.Join(args, " "), errb.Bytes())
	}
	return strings.TrimSpace(out.String()), err
}

func TestNixStorePing(t *testing.T) {
	t.Parallel()
	nixtest.RequireNix(t)
	s := Start(t, nil)
	dst := t.TempDir()
	if _, err := nixCmd(t, s, nil, "nix", "store", "ping", "--store", s.URI()+"?remote-store="+dst); err != nil {
		t.Fatalf("nix store ping: %v", err)
	}
}

// addText adds a small text file to a fresh local chroot store and returns
// the store and the path.
func addText(t *testing.T, name, text string) (store, path string) {
	t.Helper()
	store = t.TempDir()
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	path = nixtest.Line(t, "nix-store", "--store", store, "--add", f)
	return store, path
}

func TestNixCopyTo(t *testing.T) {
	t.Parallel()
	nixtest.RequireNix(t)
	s := Start(t, nil)
	src, p := addText(t, "hello.txt", "hello sshtest\n")
	dst := t.TempDir()
	uri := s.URI() + "?remote-store=" + dst
	if _, err := nixCmd(t, s, nil, "nix", "copy", "--no-check-sigs", "--from", src, "--to", uri, p); err != nil {
		t.Fatalf("nix copy: %v", err)
	}
	got := nixtest.Line(t, "nix-store", "--store", dst, "--query", "--hash", p)
	want := nixtest.Line(t, "nix-store", "--store", src, "--query", "--hash", p)
	if got != want {
		t.Errorf("copied hash %q, want %q", got, want)
	}
	b, err := os.ReadFile(filepath.Join(dst, p))
	if err != nil || string(b) != "hello sshtest\n" {
		t.Errorf("copied contents %q, %v", b, err)
	}
}

func TestNixCopyFrom(t *testing.T) {
	t.Parallel()
	nixtest.RequireNix(t)
	s := Start(t, nil)
	remote, p := addText(t, "from.txt", "from remote\n")
	dst := t.TempDir()
	uri := s.URI() + "?remote-store=" + remote
	if _, err := nixCmd(t, s, nil, "nix", "copy", "--no-check-sigs", "--from", uri, "--to", dst, p); err != nil {
		t.Fatalf("nix copy --from: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, p)); err != nil || string(b) != "from remote\n" {
		t.Errorf("copied contents %q, %v", b, err)
	}
}

func TestNixCopyClosure(t *testing.T) {
	t.Parallel()
	nixtest.RequireNix(t)
	// nix-copy-closure has no store URI: the remote nix-store uses its
	// default store, which is s.RemoteStore (NIX_REMOTE in the session).
	s := Start(t, nil)
	dst := s.RemoteStore
	src, p := addText(t, "ncc.txt", "nix-copy-closure\n")
	if _, err := nixCmd(t, s, []string{"NIX_REMOTE=" + src}, "nix-copy-closure", "--to", s.Destination(), p); err != nil {
		t.Fatalf("nix-copy-closure --to: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, p)); err != nil || string(b) != "nix-copy-closure\n" {
		t.Errorf("copied contents %q, %v", b, err)
	}
	back := t.TempDir()
	if _, err := nixCmd(t, s, []string{"NIX_REMOTE=" + back}, "nix-copy-closure", "--from", s.Destination(), p); err != nil {
		t.Fatalf("nix-copy-closure --from: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(back, p)); err != nil || string(b) != "nix-copy-closure\n" {
		t.Errorf("copied back contents %q, %v", b, err)
	}
}

func TestNixBuildRemote(t *testing.T) {
	t.Parallel()
	nixtest.RequireNix(t)
	s := Start(t, nil)
	local, remote := t.TempDir(), t.TempDir()
	expr := filepath.Join(t.TempDir(), "remote.nix")
	os.WriteFile(expr, []byte(`derivation {
  name = "sshtest-remote";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo built remotely > $out" ];
}
`), 0o644)
	system := strings.Trim(nixtest.Line(t, "nix-instantiate", "--eval", "--expr", "builtins.currentSystem"), `"`)
	builders := s.URI() + "?remote-store=" + remote + " " + system + " " + s.KeyFile + " 1 1"
	out, err := nixCmd(t, s, nil, "nix-build", "--store", local, "--max-jobs", "0", "--builders", builders, "--no-out-link", expr)
	if err != nil {
		t.Fatalf("nix-build --builders: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(remote, out)); err != nil || string(b) != "built remotely\n" {
		t.Errorf("remote output %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(local, out)); err != nil || string(b) != "built remotely\n" {
		t.Errorf("local output %q, %v", b, err)
	}
}

// TestNixForcedServe is the shape of ferry's serve-protocol interop tests:
// the forced command is the server, whatever remote command Nix asks for.
func TestNixForcedServe(t *testing.T) {
	t.Parallel()
	nixtest.RequireNix(t)
	nixStore, err := exec.LookPath("nix-store")
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	s := Start(t, &Options{ForcedCommand: nixStore + " --serve --write --store " + dst})
	src, p := addText(t, "forced.txt", "forced serve\n")
	// --store SRC names the source as well as --from SRC does.
	if _, err := nixCmd(t, s, nil, "nix", "copy", "--no-check-sigs", "--store", src, "--to", s.URI(), p); err != nil {
		t.Fatalf("nix copy: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, p)); err != nil || string(b) != "forced serve\n" {
		t.Errorf("copied contents %q, %v", b, err)
	}
	if log := s.Log(); !strings.Contains(log, "Accepted publickey for "+s.User) {
		t.Errorf("sshd log shows no login:\n%s", log)
	}
}
