package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/nixtest"
)

const testExpr = `
let
  sh = "/bin/sh";
  simple = derivation { name = "simple"; system = "x86_64-linux"; builder = sh; args = ["-c" "echo hello > $out"]; };
  multi = derivation { name = "multi"; system = "x86_64-linux"; builder = sh; outputs = ["out" "dev"];
    args = ["-c" "echo $out > $dev; echo x > $out"]; };
  fod = derivation { name = "fod.txt"; system = "x86_64-linux"; builder = sh; args = ["-c" "echo hello > $out"];
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"; };
in derivation {
  name = "top"; system = "x86_64-linux"; builder = sh;
  args = ["-c" "echo ${simple} ${multi.dev} ${fod} > $out"];
  weird = "quote\" backslash\\ nl\n tab\t cr\r dollar$ unicode é";
  src = builtins.toFile "src.txt" "source";
}
`

func TestDerivationCommandsMatchNix(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	expr := filepath.Join(dir, "top.nix")
	os.WriteFile(expr, []byte(testExpr), 0o644)
	storeDir := filepath.Join(dir, "store")
	drv := nixtest.Line(t, "nix-instantiate", "--store", storeDir, expr)

	want := string(nixtest.Nix(t, nil, "nix", "show-derivation", "--store", storeDir, drv))
	if got := mustFerry(t, nil, "--store", storeDir, "derivation", "show", drv); got != want {
		t.Errorf("derivation show:\n%s\nnix show-derivation:\n%s", got, want)
	}

	// derivation path on the JSON form with the output paths removed must
	// compute the .drv path and output paths Nix computed.
	var shown map[string]map[string]any
	if err := json.Unmarshal([]byte(want), &shown); err != nil {
		t.Fatal(err)
	}
	obj := shown[drv]
	for _, o := range obj["outputs"].(map[string]any) {
		delete(o.(map[string]any), "path")
	}
	obj["env"].(map[string]any)["out"] = ""
	data, _ := json.Marshal(obj)
	jsonFile := filepath.Join(dir, "top.json")
	os.WriteFile(jsonFile, data, 0o644)
	out := mustFerry(t, nil, "--store", storeDir, "derivation", "path", jsonFile)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if lines[0] != drv {
		t.Errorf("derivation path: drv %q, want %q", lines[0], drv)
	}
	wantOut := nixtest.Line(t, "nix-store", "--store", storeDir, "--query", "--outputs", drv)
	if len(lines) != 2 || lines[1] != "out\t"+wantOut {
		t.Errorf("derivation path outputs: %q, want out\\t%s", lines[1:], wantOut)
	}

	// The .drv file itself, by file name, gives the same.
	drvFile := filepath.Join(storeDir, drv)
	if got := mustFerry(t, nil, "--store", storeDir, "derivation", "path", drvFile); got != out {
		t.Errorf("derivation path of the .drv file: %q, want %q", got, out)
	}
}

func TestDerivationBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.drv")
	os.WriteFile(bad, []byte(`Derive([("out","/nix/store/x","","")]`), 0o644)
	_, errs, code := ferry(t, nil, "derivation", "path", bad)
	if code != 1 || !strings.Contains(errs, bad) {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
}
