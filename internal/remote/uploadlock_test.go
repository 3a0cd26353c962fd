package remote_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"ferry/internal/machines"
	"ferry/internal/nixtest"
)

// TestRemoteBuildUploadLock: ferry build --builders sends a build's
// inputs under the machine's upload lock in the client's state directory,
// as build-remote does, so it waits while another process (Nix's hook)
// uploads to that machine.
func TestRemoteBuildUploadLock(t *testing.T) {
	e := newEnv(t)
	expr := filepath.Join(e.dir, "upload.nix")
	if err := os.WriteFile(expr, []byte(`{ system }: derivation { name = "uploaded"; inherit system; builder = "/bin/sh"; args = [ "-c" "cat ${./input.txt} > $out" ]; }`), 0o644); err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(e.dir, "local")
	drv := nixtest.Line(t, "nix-instantiate", "--store", local, "--argstr", "system", e.system, expr)
	line := e.machine(e.ferry, filepath.Join(e.dir, "b"), "1 1")
	ms, err := machines.Parse(line, e.system)
	if err != nil {
		t.Fatal(err)
	}
	load, err := machines.OpenLoad(filepath.Join(local, "nix/var/nix"))
	if err != nil {
		t.Fatal(err)
	}
	held, err := load.UploadLock(context.Background(), ms[0])
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *runResult, 1)
	go func() { done <- e.ferryBuild(local, line, nil, "-j", "0", drv) }()
	select {
	case r := <-done:
		t.Fatalf("built while another process held the upload lock: exit %d\n%s", r.code, r.stderr)
	case <-time.After(3 * time.Second):
	}
	held.Release()
	if r := <-done; r.code != 0 || r.byName()["uploaded"].SentPaths != 1 {
		t.Fatalf("after the upload lock was let go: exit %d, %+v\n%s", r.code, r.byName()["uploaded"], r.stderr)
	}
}
