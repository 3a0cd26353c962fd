package build

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"ferry/internal/nixtest"
)

// caExpr is the Nix expression of the CA interop tests: floating
// content-addressed derivations, recursive and flat, one referring to
// itself and to a source, one with two outputs that refer to each other
// one way, one depending on an input-addressed derivation and one on two
// other CA derivations (both resolved before they are built).
func caExpr() string {
	return fmt.Sprintf(`
let
  mk = name: script: attrs: builtins.derivation ({
    inherit name; system = "%s"; builder = "/bin/sh"; args = [ "-c" script ];
    __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";
  } // attrs);
  src = builtins.toFile "ca-src.txt" "source\n";
  ia = builtins.derivation { name = "ia-in"; system = "%s"; builder = "/bin/sh"; args = [ "-c" "echo ia > $out" ]; };
in rec {
  plain = mk "ca-plain" "echo hello > $out" {};
  self = mk "ca-self" "mkdir $out; echo $out > $out/me; cat ${src} > $out/src; echo ${src} > $out/srcref" {};
  flat = mk "ca-flat" "echo flat $out > $out" { outputHashMode = "flat"; };
  multi = mk "ca-multi" "mkdir $out $dev; echo $dev > $out/devref; echo $out > $out/self; echo dev > $dev/file" { outputs = [ "out" "dev" ]; };
  withIA = mk "ca-with-ia" "cat ${ia} > $out; echo ${ia} >> $out" {};
  onCA = mk "ca-on-ca" "cat ${self}/me > $out; echo ${multi.dev} >> $out" {};
}
`, system, system)
}

// caEnv is nixtest.Env with nixtest.CAConfig.
func caEnv(dir string) []string {
	var env []string
	for _, kv := range nixtest.Env(dir) {
		if !strings.HasPrefix(kv, "NIX_CONFIG=") {
			env = append(env, kv)
		}
	}
	return append(env, "NIX_CONFIG="+nixtest.CAConfig)
}

// run runs a command with env and returns its standard output.
func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	return string(nixtest.RunEnv(t, env, name, args...))
}

// caRows is what both stores must agree on, as sqlite3 prints it: the
// realisations with their output paths, the realisation references, and
// every valid path's NAR hash, size, deriver and ca, and references, and
// the derivation outputs (without row ids and registration times).
const caRows = `select 'R', r.drvPath, r.outputName, v.path, r.signatures from Realisations r join ValidPaths v on v.id = r.outputPath order by 2, 3;
select 'RR', a.drvPath || '!' || a.outputName, b.drvPath || '!' || b.outputName from RealisationsRefs x join Realisations a on a.id = x.referrer join Realisations b on b.id = x.realisationReference order by 2, 3;
select 'V', path, hash, deriver, narSize, ultimate, ca from ValidPaths order by path;
select 'F', v.path, w.path from Refs join ValidPaths v on v.id = referrer join ValidPaths w on w.id = reference order by 2, 3;
select 'D', v.path, d.id, d.path from DerivationOutputs d join ValidPaths v on v.id = d.drv order by 2, 3;`

func dumpRows(t *testing.T, store string) string {
	t.Helper()
	return run(t, os.Environ(), "sqlite3", filepath.Join(store, "nix/var/nix/db/db.sqlite"), caRows)
}

// TestCANix builds the floating CA derivations of caExpr with nix-build
// in one store and with `ferry build` in another (holding the .drv files
// nix-instantiate wrote there), both with ca-derivations on, and requires
// the same output paths and the same database: realisations and their
// references, NAR hashes, ca fields, references, derivers, the resolved
// .drv files and the ca-schema tables.
func TestCANix(t *testing.T) {
	nixtest.RequireNix(t)
	nixtest.Require(t, "sqlite3")
	requireSandbox(t)
	ferry := nixtest.FerryBin(t)
	dir := t.TempDir()
	expr := filepath.Join(dir, "ca.nix")
	must(t, os.WriteFile(expr, []byte(caExpr()), 0o644))
	nixStore, ferryStore := filepath.Join(dir, "nix"), filepath.Join(dir, "ferry")
	env := caEnv(dir)

	nixOuts := strings.Fields(run(t, env, "nix-build", "--store", nixStore, "--no-out-link", expr))
	drvs := strings.Fields(run(t, env, "nix-instantiate", "--store", ferryStore, expr))
	if len(drvs) != 6 {
		t.Fatalf("instantiated %v", drvs)
	}
	ferryOuts := strings.Fields(run(t, env, ferry, "build", "--store", ferryStore, "--sandbox=true", "--cores", "1", drvs[0], drvs[1], drvs[2], drvs[3], drvs[4], drvs[5]))
	sort.Strings(nixOuts)
	sort.Strings(ferryOuts)
	// nix-build prints the out outputs; ferry build every output.
	for _, p := range nixOuts {
		if i := sort.SearchStrings(ferryOuts, p); i == len(ferryOuts) || ferryOuts[i] != p {
			t.Errorf("nix-build output %s not built by ferry (%v)", p, ferryOuts)
		}
	}
	want, got := dumpRows(t, nixStore), dumpRows(t, ferryStore)
	if want != got {
		t.Errorf("databases differ:\nnix:\n%s\nferry:\n%s", want, got)
	}
	// The cases the test is about are really there.
	for _, s := range []string{
		"|fixed:sha256:",   // flat
		"-ca-self|sha256:", // self reference (checked below)
		"-ca-multi-dev|",
		"RR|",
	} {
		if !strings.Contains(got, s) {
			t.Errorf("no %q in\n%s", s, got)
		}
	}
	infos := nixtest.PathInfos(t, ferryStore, ferryOuts...)
	selfRef, cross := false, false
	for p, info := range infos {
		for _, r := range info.References {
			selfRef = selfRef || (r == p && strings.HasSuffix(p, "-ca-self"))
			cross = cross || (strings.HasSuffix(p, "-ca-multi") && strings.HasSuffix(r, "-ca-multi-dev"))
		}
		if !strings.HasPrefix(info.CA, "fixed:") && !strings.HasSuffix(p, "-ia-in") {
			t.Errorf("%s: ca %q", p, info.CA)
		}
	}
	if !selfRef || !cross {
		t.Errorf("self reference %v, cross reference %v: %+v", selfRef, cross, infos)
	}
	for _, f := range []string{"ca-schema", "schema"} {
		a, _ := os.ReadFile(filepath.Join(nixStore, "nix/var/nix/db", f))
		b, _ := os.ReadFile(filepath.Join(ferryStore, "nix/var/nix/db", f))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s: nix %q, ferry %q", f, a, b)
		}
	}
	schema := func(s string) string {
		return run(t, os.Environ(), "sqlite3", filepath.Join(s, "nix/var/nix/db/db.sqlite"), ".schema")
	}
	if a, b := schema(nixStore), schema(ferryStore); a != b {
		t.Errorf("schemas differ:\nnix:\n%s\nferry:\n%s", a, b)
	}

	// A second build is a no-op: every output has its realisation.
	again := strings.Fields(run(t, env, ferry, "build", "--store", ferryStore, drvs[0], drvs[1], drvs[2], drvs[3], drvs[4], drvs[5]))
	sort.Strings(again)
	if strings.Join(again, " ") != strings.Join(ferryOuts, " ") {
		t.Errorf("rebuild printed %v, want %v", again, ferryOuts)
	}
	if after := dumpRows(t, ferryStore); after != got {
		t.Errorf("rebuild changed the database:\n%s", after)
	}
}

// TestCANixFeatureGate: without ca-derivations both Nix and ferry refuse
// a floating CA derivation with the same message.
func TestCANixFeatureGate(t *testing.T) {
	nixtest.RequireNix(t)
	requireSandbox(t)
	ferry := nixtest.FerryBin(t)
	dir := t.TempDir()
	expr := filepath.Join(dir, "ca.nix")
	must(t, os.WriteFile(expr, []byte(caExpr()), 0o644))
	st := filepath.Join(dir, "store")
	drv := strings.TrimSpace(run(t, caEnv(dir), "nix-instantiate", "--store", st, expr, "-A", "plain"))
	_, nixErr, err := nixtest.Try(t, nil, "nix-store", "--store", st, "--realise", drv)
	if err == nil {
		t.Fatal("nix-store --realise built a CA derivation without ca-derivations")
	}
	cmd := exec.Command(ferry, "build", "--store", st, drv)
	cmd.Env = nixtest.Env(dir)
	ferryErr, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("ferry build built a CA derivation without ca-derivations")
	}
	const msg = "experimental Nix feature 'ca-derivations' is disabled; use '--extra-experimental-features ca-derivations' to override"
	if !strings.Contains(string(nixErr), msg) || !strings.Contains(string(ferryErr), msg) {
		t.Fatalf("nix: %s\nferry: %s", nixErr, ferryErr)
	}
}

// TestCANixInputBuiltBefore: an input-addressed input built before
// ca-derivations was turned on has no realisation; a content-addressed
// derivation on it, built once the feature is on, still builds, as in
// Nix (whose input goal registers the valid input's realisation, as
// checkPathValidity does), and the databases agree.
func TestCANixInputBuiltBefore(t *testing.T) {
	nixtest.RequireNix(t)
	nixtest.Require(t, "sqlite3")
	requireSandbox(t)
	ferry := nixtest.FerryBin(t)
	dir := t.TempDir()
	expr := filepath.Join(dir, "before.nix")
	must(t, os.WriteFile(expr, []byte(fmt.Sprintf(`
rec {
  ia = builtins.derivation { name = "ia-before"; system = "%s"; builder = "/bin/sh"; args = [ "-c" "echo ia > $out" ]; };
  ca = builtins.derivation { name = "ca-after"; system = "%s"; builder = "/bin/sh"; args = [ "-c" "cat ${ia} > $out; echo ${ia} >> $out" ];
    __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
}
`, system, system)), 0o644))
	plain, ca := nixtest.Env(dir), caEnv(dir)
	nixStore, ferryStore := filepath.Join(dir, "nix"), filepath.Join(dir, "ferry")
	run(t, plain, "nix-build", "--store", nixStore, "--no-out-link", expr, "-A", "ia")
	nixOut := strings.TrimSpace(run(t, ca, "nix-build", "--store", nixStore, "--no-out-link", expr, "-A", "ca"))

	iaDrv := strings.TrimSpace(run(t, plain, "nix-instantiate", "--store", ferryStore, expr, "-A", "ia"))
	run(t, plain, ferry, "build", "--store", ferryStore, iaDrv)
	caDrv := strings.TrimSpace(run(t, ca, "nix-instantiate", "--store", ferryStore, expr, "-A", "ca"))
	if out := strings.TrimSpace(run(t, ca, ferry, "build", "--store", ferryStore, caDrv)); out != nixOut {
		t.Errorf("ferry built %q, nix-build %q", out, nixOut)
	}
	if want, got := dumpRows(t, nixStore), dumpRows(t, ferryStore); want != got {
		t.Errorf("databases differ:\nnix:\n%s\nferry:\n%s", want, got)
	}
}
