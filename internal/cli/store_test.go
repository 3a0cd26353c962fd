package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/nixtest"
)

// The store commands against real Nix on the same store: ferry writes,
// Nix reads (and the other way round), and both print the same facts.
func TestStoreCommandsMatchNix(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	st := filepath.Join(dir, "store")
	tree := sampleTree(t)
	file := filepath.Join(tree, "d", "x")
	os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello\n"), 0o644)

	added := strings.Fields(mustFerry(t, nil, "--store", st, "store", "add", tree, filepath.Join(dir, "hello.txt")))
	if want := nixtest.Line(t, "nix-store", "--store", st, "--add", tree); added[0] != want {
		t.Errorf("store add: %s, nix %s", added[0], want)
	}
	for _, algo := range []string{"md5", "sha1", "sha256", "sha512"} {
		got := strings.TrimSpace(mustFerry(t, nil, "store", "add", "--fixed", algo, file, "--store", st))
		if want := nixtest.Line(t, "nix-store", "--store", st, "--add-fixed", algo, file); got != want {
			t.Errorf("add --fixed %s: %s, nix %s", algo, got, want)
		}
		got = strings.TrimSpace(mustFerry(t, nil, "--store", st, "store", "add", "--fixed", algo, "--recursive", tree))
		if want := nixtest.Line(t, "nix-store", "--store", st, "--add-fixed", "--recursive", algo, tree); got != want {
			t.Errorf("add --fixed %s --recursive: %s, nix %s", algo, got, want)
		}
	}
	// A text object referring to both, as builtins.toFile would make it.
	txt := filepath.Join(dir, "ref.txt")
	os.WriteFile(txt, []byte("see "+added[0]+" and "+added[1]+"\n"), 0o644)
	ref := strings.TrimSpace(mustFerry(t, nil, "--store", st, "store", "add-text", "ref.txt", txt, "--ref", added[0], "--ref", added[1]))

	// A derivation whose input source is the text object.
	drvJSON := filepath.Join(dir, "d.json")
	os.WriteFile(drvJSON, []byte(`{"outputs":{"out":{}},"inputSrcs":["`+ref+`"],"inputDrvs":{},
	  "system":"x86_64-linux","builder":"/bin/sh","args":["-c","cat `+ref+` > $out"],
	  "env":{"name":"d","builder":"/bin/sh","system":"x86_64-linux","out":""}}`), 0o644)
	drv := strings.TrimSpace(mustFerry(t, nil, "--store", st, "derivation", "add", drvJSON))

	paths := append(added, ref, drv)
	for _, p := range paths {
		nixArgs := []string{"path-info", "--store", st, "--json", p}
		if strings.HasSuffix(p, ".drv") {
			nixArgs = append(nixArgs, "--derivation") // else Nix shows the outputs
		}
		want := nixtest.Line(t, "nix", nixArgs...)
		if got := strings.TrimSpace(mustFerry(t, nil, "--store", st, "path-info", "--json", p)); got != want {
			t.Errorf("path-info --json %s:\n%s\nnix:\n%s", p, got, want)
		}
	}
	for _, q := range []string{"--references", "--referrers", "--requisites", "--deriver"} {
		for _, p := range paths {
			want := nixtest.Line(t, "nix-store", "--store", st, "--query", q, p)
			if got := strings.TrimSpace(mustFerry(t, nil, "--store", st, "query", q, p)); got != want {
				t.Errorf("query %s %s:\n%s\nnix:\n%s", q, p, got, want)
			}
		}
	}
	for _, p := range paths {
		nixArgs := []string{"store", "dump-path", "--store", st, p}
		if strings.HasSuffix(p, ".drv") {
			nixArgs = append(nixArgs, "--derivation")
		}
		want := string(nixtest.Nix(t, nil, "nix", nixArgs...))
		if got := mustFerry(t, nil, "--store", st, "store", "dump", p); got != want {
			t.Errorf("store dump %s differs from nix-store --dump", p)
		}
	}
	nixtest.Nix(t, nil, "nix-store", "--store", st, "--verify", "--check-contents")
	mustFerry(t, nil, "--store", st, "store", "verify", "--check-contents")

	// ferry's export imports into a Nix store, and Nix's into ferry's.
	exp := mustFerry(t, nil, "--store", st, "store", "export", added[0], added[1], ref, drv)
	st2 := filepath.Join(dir, "store2")
	got := strings.Fields(string(nixtest.Nix(t, []byte(exp), "nix-store", "--store", st2, "--import")))
	if len(got) != 4 {
		t.Fatalf("nix-store --import of ferry's export gave %q", got)
	}
	nixExp := nixtest.Nix(t, nil, "nix-store", "--store", st, "--export", added[0], added[1], ref, drv)
	st3 := filepath.Join(dir, "store3")
	imported := strings.Fields(mustFerry(t, nixExp, "--store", st3, "store", "import"))
	if strings.Join(imported, " ") != strings.Join(got, " ") {
		t.Errorf("ferry import printed %q, nix import %q", imported, got)
	}
	nixtest.Nix(t, nil, "nix-store", "--store", st3, "--verify", "--check-contents")

	// A truncated stream registers nothing.
	st4 := filepath.Join(dir, "store4")
	if _, errs, code := ferry(t, nixExp[:len(nixExp)-100], "--store", st4, "store", "import"); code == 0 {
		t.Errorf("truncated import succeeded")
	} else if !strings.Contains(errs, "error: ") {
		t.Errorf("truncated import: %q", errs)
	}
	if out := strings.TrimSpace(mustFerry(t, nil, "--store", st4, "path-info", "--json", ref)); !strings.Contains(out, `"valid":false`) {
		t.Errorf("after a truncated import: %s", out)
	}
}
