package schedd

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"ferry/internal/hookapi"
)

func TestTrusted(t *testing.T) {
	nobody, err := user.LookupId("65534")
	if err != nil {
		t.Fatalf("no user 65534 to test with: %v", err)
	}
	grp, err := user.LookupGroupId("65534")
	if err != nil {
		t.Fatalf("no group 65534 to test with: %v", err)
	}
	other := &peer{uid: 65534, gid: 65534}
	for _, c := range []struct {
		p       *peer
		trusted []string
		want    bool
	}{
		{&peer{uid: 0}, nil, true},
		{&peer{uid: uint32(os.Getuid()), gid: 1}, nil, true},
		{other, []string{"root"}, os.Getuid() == 65534},
		{other, nil, os.Getuid() == 65534},
		{other, []string{"root", nobody.Username}, true},
		{other, []string{"@" + grp.Name}, true},
		{other, []string{"@no-such-group-here"}, os.Getuid() == 65534},
		{other, []string{"*"}, true},
	} {
		if got := trusted(c.p, c.trusted); got != c.want {
			t.Errorf("trusted(%+v, %q) = %v, want %v", c.p, c.trusted, got, c.want)
		}
	}
	if msg := refusal(other); !strings.Contains(msg, "'"+nobody.Username+"' (uid 65534)") || !strings.Contains(msg, "trusted-users") {
		t.Errorf("refusal: %s", msg)
	}
}

// peerClient is the other end of TestPeerRefused, run as another user:
// it asks for the status, then tries a build, and prints what it got.
func peerClient(sock string) {
	ctx := context.Background()
	st, err := GetStatus(ctx, sock)
	fmt.Printf("status: %v %v\n", st != nil, err)
	c, err := Connect(ctx, sock)
	if err != nil {
		fmt.Printf("connect: %v\n", err)
		return
	}
	defer c.Release()
	rep, err := c.Try(ctx, &hookapi.TryRequest{System: "x86_64-linux", DrvPath: "/nix/store/00000000000000000000000000000000-x.drv"})
	fmt.Printf("try: %+v %v\n", rep, err)
}

// TestPeerRefused: a user who is neither root, the scheduler's own nor in
// trusted-users may ask for the status but not for a build, even when the
// socket's mode lets them connect.
func TestPeerRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	dir, err := os.MkdirTemp("", "schedd-peer-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	d, err := Listen(Options{StateDir: dir, Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	os.Chmod(d.SocketPath(), 0o666) // as an operator opening it to everyone might
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "schedd.test")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func() string {
		t.Helper()
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = []string{"SCHEDD_PEER_CLIENT=" + d.SocketPath()}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid 65534: %v\n%s", err, out)
		}
		return string(out)
	}
	out := run()
	if !strings.Contains(out, "status: true <nil>") {
		t.Errorf("status refused to another user:\n%s", out)
	}
	if !strings.Contains(out, "may not build through this ferry scheduler") || !strings.Contains(out, "uid 65534") {
		t.Errorf("another user's try was not refused:\n%s", out)
	}
}
