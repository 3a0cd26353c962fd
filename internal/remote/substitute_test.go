package remote_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/nixtest"
)

// TestBuildersUseSubstitutes: with builders-use-substitutes, a real
// nix-store --serve builder is asked to substitute the inputs it lacks
// (QueryValidPaths with substitute=1, as build-remote's copyPaths asks):
// it fetches the input source from its binary cache and ferry sends
// nothing. Without the setting, ferry sends it.
func TestBuildersUseSubstitutes(t *testing.T) {
	e := newEnv(t)
	src := filepath.Join(e.dir, "subst.txt")
	if err := os.WriteFile(src, []byte("an input the builder's cache has\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	expr := filepath.Join(e.dir, "subst.nix")
	if err := os.WriteFile(expr, []byte(`{ system }: derivation { name = "uses-subst"; inherit system; builder = "/bin/sh"; args = [ "-c" "cat ${./subst.txt} > $out" ]; }`), 0o644); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(e.dir, "seed")
	p := nixtest.Line(t, "nix-store", "--store", seed, "--add", src)
	cache := "file://" + filepath.Join(e.dir, "cache")
	nixtest.Line(t, "nix", "copy", "--from", seed, "--to", cache, p)

	build := func(name string, substitute bool) result {
		t.Helper()
		local, builder := filepath.Join(e.dir, name+"-local"), filepath.Join(e.dir, name+"-builder")
		drv := nixtest.Line(t, "nix-instantiate", "--store", local, "--argstr", "system", e.system, expr)
		mf := filepath.Join(e.dir, name+"-machines")
		// ssh://localhost: the builder runs with this process's
		// environment, so NIX_CONFIG gives it the cache.
		m := "ssh://localhost?remote-program=nix-store&remote-store=" + builder + " " + e.system + " - 1 1"
		if err := os.WriteFile(mf, []byte(m+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(e.ferry, "--store", local, "build", "--json", "--machines", mf, "-j", "0", drv)
		conf := nixtest.Config + "substituters = " + cache + "\nrequire-sigs = false\n"
		if substitute {
			conf += "builders-use-substitutes = true\n"
		}
		cmd.Env = append(e.clEnv, "NIX_CONFIG="+conf, "FERRY_SCHEDULER=off")
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("ferry build (builders-use-substitutes %v): %v\n%s", substitute, err, stderr.String())
		}
		var rs []result
		if err := json.Unmarshal(out.Bytes(), &rs); err != nil || len(rs) != 1 {
			t.Fatalf("--json: %v %s", err, out.String())
		}
		if _, stderr, err := nixtest.Try(t, nil, "nix-store", "--store", builder, "--check-validity", p); err != nil {
			t.Errorf("the builder lacks %s: %s", p, stderr)
		}
		nixtest.Verify(t, local)
		nixtest.Verify(t, builder)
		return rs[0]
	}
	if r := build("subst", true); r.SentPaths != 0 || !strings.HasPrefix(r.Status, "Built") {
		t.Errorf("with builders-use-substitutes: %+v, want nothing sent", r)
	}
	if r := build("plain", false); r.SentPaths != 1 {
		t.Errorf("without builders-use-substitutes: %+v, want the input sent", r)
	}
}
