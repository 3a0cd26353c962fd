package build

import (
	"context"
	"os"
	"runtime"
	"sort"
	"testing"

	"ferry/internal/localstore"
	"ferry/internal/nixtest"
	"ferry/internal/sandbox"
	"ferry/internal/settings"
	"ferry/nix/derivation"
	"ferry/nix/storepath"
)

func TestMain(m *testing.M) {
	sandbox.Init()
	os.Exit(m.Run())
}

// requireSandbox skips (or fails under CI) where namespaces or busybox
// are missing: every store in these tests is a chroot store.
func requireSandbox(t testing.TB) {
	t.Helper()
	_, err := os.Stat("/bin/busybox")
	nixtest.Need(t, err)
	nixtest.Need(t, sandbox.Available())
}

func openStore(t testing.TB) *localstore.Store {
	t.Helper()
	st, err := localstore.Open(t.TempDir(), &localstore.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func testSettings() *settings.Settings {
	s := settings.Default()
	s.SandboxPaths = []string{"/bin/sh=/bin/busybox"}
	s.Cores = 1
	return s
}

// system is the platform the tests' derivations are for.
var system = map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[runtime.GOARCH] + "-linux"

// drvSpec describes a test derivation built with /bin/sh -c script.
type drvSpec struct {
	name    string
	script  string
	outputs []string          // default ["out"]
	env     map[string]string // extra env
	inputs  map[storepath.Path][]string
	srcs    []storepath.Path
	fixed   *derivation.Output // for a fixed-output derivation
}

// makeDrv fills in a derivation the way derivation {} does.
func makeDrv(t testing.TB, st *localstore.Store, s drvSpec) *derivation.Derivation {
	t.Helper()
	outs := s.outputs
	if len(outs) == 0 {
		outs = []string{"out"}
	}
	d := &derivation.Derivation{
		Name:      s.name,
		Outputs:   map[string]derivation.Output{},
		InputDrvs: map[storepath.Path][]string{},
		InputSrcs: s.srcs,
		Platform:  system,
		Builder:   "/bin/sh",
		Args:      []string{"-c", s.script},
		Env:       map[string]string{"name": s.name, "builder": "/bin/sh", "system": system},
	}
	for k, v := range s.env {
		d.Env[k] = v
	}
	for p, o := range s.inputs {
		d.InputDrvs[p] = o
	}
	if s.fixed != nil {
		d.Outputs["out"] = *s.fixed
	} else {
		for _, o := range outs {
			d.Outputs[o] = derivation.Output{}
			d.Env[o] = ""
		}
	}
	if len(outs) > 1 {
		sorted := append([]string(nil), outs...)
		sort.Strings(sorted)
		d.Env["outputs"] = joinSpace(outs)
	}
	ctx := context.Background()
	resolve := func(p storepath.Path) (*derivation.Derivation, error) { return st.ReadDerivation(ctx, p) }
	if err := d.FillOutputPaths(st.Dir(), resolve, nil); err != nil {
		t.Fatal(err)
	}
	return d
}

func joinSpace(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out
}

// addDrv writes d into the store and returns its path.
func addDrv(t testing.TB, st *localstore.Store, d *derivation.Derivation) storepath.Path {
	t.Helper()
	p, err := st.AddDerivation(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func drvPathOf(t testing.TB, st *localstore.Store, d *derivation.Derivation) storepath.Path {
	t.Helper()
	p, err := d.Path(st.Dir())
	if err != nil {
		t.Fatal(err)
	}
	return p
}
