package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"ferry/internal/nixtest"
)

// TestBuildSignsLikeNix: with secret-key-files, ferry build signs what it
// builds as nix-build does (LocalStore::signPathInfo): ed25519 signatures
// are deterministic, so both stores hold the same signature.
func TestBuildSignsLikeNix(t *testing.T) {
	nixtest.RequireNix(t)
	requireBusybox(t)
	base := t.TempDir()
	sk, pk := filepath.Join(base, "sk"), filepath.Join(base, "pk")
	nixtest.Line(t, "nix-store", "--generate-binary-cache-key", "test-1", sk, pk)
	copyConfig(t, nixtest.Config+"secret-key-files = "+sk+"\n")
	expr := filepath.Join(base, "signed.nix")
	if err := os.WriteFile(expr, []byte(`derivation { name = "signed"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo signed > $out" ]; }`), 0o644); err != nil {
		t.Fatal(err)
	}
	env := os.Environ()
	nixStore, ferryStore := filepath.Join(base, "nix"), filepath.Join(base, "ferry")
	nixOut := strings.TrimSpace(string(nixtest.RunEnv(t, env, "nix-build", "--store", nixStore, "--no-out-link", expr)))
	drv := strings.TrimSpace(string(nixtest.RunEnv(t, env, "nix-instantiate", "--store", ferryStore, expr)))
	if out := strings.TrimSpace(mustFerry(t, nil, "--store", ferryStore, "build", drv)); out != nixOut {
		t.Fatalf("ferry built %s, nix-build %s", out, nixOut)
	}
	sigs := func(st string) []string {
		t.Helper()
		var infos []struct {
			Signatures []string `json:"signatures"`
		}
		out := nixtest.RunEnv(t, env, "nix", "path-info", "--json", "--sigs", "--store", st, nixOut)
		if err := json.Unmarshal(out, &infos); err != nil || len(infos) != 1 {
			t.Fatalf("nix path-info --json --sigs: %v\n%s", err, out)
		}
		return infos[0].Signatures
	}
	want := sigs(nixStore)
	if len(want) != 1 || !strings.HasPrefix(want[0], "test-1:") {
		t.Fatalf("nix-build's signatures: %q", want)
	}
	if diff := cmp.Diff(want, sigs(ferryStore)); diff != "" {
		t.Errorf("signatures (-nix-build +ferry build):\n%s", diff)
	}
	nixtest.Verify(t, ferryStore)

	// With ca-derivations, the realisations of local builds are signed
	// too (LocalDerivationGoal::signRealisation).
	nixtest.Require(t, "sqlite3")
	copyConfig(t, nixtest.CAConfig+"secret-key-files = "+sk+"\n")
	env = os.Environ()
	if err := os.WriteFile(filepath.Join(base, "input.txt"), []byte("an input source\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	caExpr := filepath.Join(base, "ca.nix")
	if err := os.WriteFile(caExpr, []byte(nixtest.CAGraphNix), 0o644); err != nil {
		t.Fatal(err)
	}
	system := strings.Trim(nixtest.Line(t, "nix-instantiate", "--eval", "--expr", "builtins.currentSystem"), `"`)
	nixCA, ferryCA := filepath.Join(base, "nix-ca"), filepath.Join(base, "ferry-ca")
	nixtest.RunEnv(t, env, "nix-build", "--store", nixCA, "--no-out-link", "--argstr", "system", system, caExpr)
	caDrv := strings.TrimSpace(string(nixtest.RunEnv(t, env, "nix-instantiate", "--store", ferryCA, "--argstr", "system", system, caExpr)))
	mustFerry(t, nil, "--store", ferryCA, "build", caDrv)
	wantReal := nixtest.Realisations(t, nixCA)
	if !strings.Contains(wantReal, "|test-1:") {
		t.Fatalf("nix-build's realisations are not signed:\n%s", wantReal)
	}
	if got := nixtest.Realisations(t, ferryCA); got != wantReal {
		t.Errorf("realisations:\n%s\nwant (nix-build):\n%s", got, wantReal)
	}
}
