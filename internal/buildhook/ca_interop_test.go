package buildhook_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"ferry/internal/nixtest"
	"ferry/internal/sshtest"
)

// TestHookInteropCA: real nix-build 2.8 with ca-derivations sends the
// floating content-addressed derivations of nixtest.CAGraphNix (resolved
// by Nix first) through ferry build-hook, placing them itself and through
// a scheduler started on demand, to a machine listing ca-derivations
// (nix-store --serve, ferry serve). The hook registers the realisations
// of what it copies back, as build-remote does, so Nix finds the outputs:
// the client store then equals a local nix-build's (paths, NAR hashes,
// references, content addresses, realisations), no .drv reaches the
// builder, and every store verifies.
func TestHookInteropCA(t *testing.T) {
	nixtest.Require(t, "sqlite3")
	e := newHookEnvWith(t, &sshtest.Options{Env: []string{"NIX_CONFIG=extra-experimental-features = ca-derivations"}})
	e.env = append(withoutEnv(e.env, "NIX_CONFIG"), "NIX_CONFIG="+nixtest.CAConfig)
	expr := filepath.Join(e.dir, "ca.nix")
	if err := os.WriteFile(expr, []byte(nixtest.CAGraphNix), 0o644); err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join(e.dir, "ref")
	refOut := strings.TrimSpace(string(nixtest.RunEnv(t, e.env, "nix-build", "--store", ref, "--no-out-link", "--argstr", "system", e.system, expr)))
	want := nixtest.PathInfos(t, ref, "--recursive", refOut)
	wantReal := nixtest.Realisations(t, ref)
	if !strings.Contains(wantReal, "RR|") {
		t.Fatalf("the reference store has no dependent realisations:\n%s", wantReal)
	}
	for _, c := range []struct{ name, program, scheduler string }{
		{"in the hook, nix-store --serve", "nix-store", "off"},
		{"through a scheduler, ferry serve", e.ferry, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			local := filepath.Join(t.TempDir(), "local")
			b := filepath.Join(t.TempDir(), "b")
			saved := e.env
			e.env = withoutEnv(saved, "FERRY_SCHEDULER")
			if c.scheduler != "" {
				e.env = append(e.env, "FERRY_SCHEDULER="+c.scheduler)
			} else {
				stateDir := filepath.Join(local, "nix/var/nix")
				t.Cleanup(func() { stopScheduler(stateDir) })
			}
			r := e.nixBuild(local, []string{e.machine(c.program, b, "2 1 ca-derivations")}, "-j0", expr)
			e.env = saved
			if r.err != nil {
				t.Fatalf("nix-build: %v\n%s", r.err, r.stderr)
			}
			if r.out != refOut {
				t.Fatalf("nix-build through ferry's hook gave %q, a local one %q", r.out, refOut)
			}
			if diff := cmp.Diff(want, nixtest.PathInfos(t, local, "--recursive", r.out)); diff != "" {
				t.Errorf("outputs differ from a local nix-build:\n%s", diff)
			}
			if got := nixtest.Realisations(t, local); got != wantReal {
				t.Errorf("realisations:\n%s\nwant (a local nix-build):\n%s", got, wantReal)
			}
			if len(storeFiles(b, "ca-")) == 0 {
				t.Errorf("the builder built nothing:\n%s", r.stderr)
			}
			if ds := storeFiles(b, ".drv"); len(ds) > 0 {
				t.Errorf("the builder holds .drv files: %v", ds)
			}
			nixtest.Verify(t, local)
			nixtest.Verify(t, b)
		})
	}
}
