package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/nixtest"
)

// TestStoreVerifyRepair damages ferry-built outputs (a changed byte; a
// deleted output that another valid path refers to) and a path without a
// deriver, runs ferry store verify --repair, and has real Nix check the
// store afterwards.
func TestStoreVerifyRepair(t *testing.T) {
	nixtest.RequireNix(t)
	requireBuilds(t)
	t.Setenv("NIX_CONFIG", "sandbox-paths = /bin/sh=/bin/busybox")
	t.Setenv("NIX_CONF_DIR", t.TempDir())
	dir := t.TempDir()
	st := filepath.Join(dir, "store")
	system := "x86_64-linux" // as the other CLI tests' derivations
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	addDrv := func(name, script, inputDrvs string) string {
		t.Helper()
		f := filepath.Join(dir, name+".json")
		os.WriteFile(f, []byte(`{"outputs":{"out":{}},"inputSrcs":[],"inputDrvs":{`+inputDrvs+`},
		  "system":"`+system+`","builder":"/bin/sh","args":["-c",`+strings.TrimSpace(mustJSON(script))+`],
		  "env":{"name":"`+name+`","builder":"/bin/sh","system":"`+system+`","out":""}}`), 0o644)
		return strings.TrimSpace(mustFerry(t, nil, "--store", st, "derivation", "add", f))
	}
	libDrv := addDrv("lib", `mkdir $out; echo lib > $out/lib; echo $out > $out/self`, "")
	lib := strings.TrimSpace(mustFerry(t, nil, "--store", st, "build", libDrv))
	userDrv := addDrv("user", "echo "+lib+" > $out", `"`+libDrv+`":["out"]`)
	user := strings.TrimSpace(mustFerry(t, nil, "--store", st, "build", userDrv))
	real := func(p string) string { return filepath.Join(st, p) }
	libFile := filepath.Join(real(lib), "lib")

	verify := func(args ...string) (string, int) {
		t.Helper()
		_, errs, code := ferry(t, nil, append([]string{"--store", st, "store", "verify"}, args...)...)
		return errs, code
	}

	// A changed byte: rebuilt in place.
	must(os.Chmod(libFile, 0o644))
	must(os.WriteFile(libFile, []byte("LIB\n"), 0o644))
	if errs, code := verify("--check-contents"); code == 0 || !strings.Contains(errs, "path '"+lib+"' was modified!") {
		t.Errorf("verify without --repair: exit %d\n%s", code, errs)
	}
	if errs, code := verify("--check-contents", "--repair"); code != 0 || !strings.Contains(errs, "path '"+lib+"' repaired") {
		t.Fatalf("verify --repair: exit %d\n%s", code, errs)
	}
	if data, _ := os.ReadFile(libFile); string(data) != "lib\n" {
		t.Errorf("lib is %q after the repair", data)
	}
	nixtest.Nix(t, nil, "nix-store", "--store", st, "--verify", "--check-contents")

	// A deleted output that user still refers to.
	filepath.WalkDir(real(lib), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	must(os.RemoveAll(real(lib)))
	if errs, code := verify("--repair"); code != 0 || !strings.Contains(errs, "path '"+lib+"' disappeared, but it still has valid referrers!") {
		t.Fatalf("verify --repair of a missing path: exit %d\n%s", code, errs)
	}
	if self, _ := os.ReadFile(filepath.Join(real(lib), "self")); string(self) != lib+"\n" {
		t.Errorf("self is %q after the repair", self)
	}
	nixtest.Nix(t, nil, "nix-store", "--store", st, "--verify", "--check-contents")
	if refs := mustFerry(t, nil, "--store", st, "query", "--references", user); !strings.Contains(refs, lib) {
		t.Errorf("user's references %q", refs)
	}

	// An output nix-build made, repaired by ferry to the same NAR hash.
	nixOut := strings.TrimSpace(string(nixtest.Nix(t, nil, "nix-build", "--store", st, "--no-out-link", "-E",
		`derivation { name = "nix-built"; system = "`+system+`"; builder = "/bin/sh"; args = [ "-c" "mkdir $out; echo nix > $out/f; echo $out > $out/self" ]; }`)))
	wantHash := nixtest.PathInfos(t, st, nixOut)[nixOut].NarHash
	must(os.Chmod(filepath.Join(real(nixOut), "f"), 0o644))
	must(os.WriteFile(filepath.Join(real(nixOut), "f"), []byte("NIX\n"), 0o644))
	if errs, code := verify("--check-contents", "--repair"); code != 0 {
		t.Fatalf("verify --repair of a nix-build output: exit %d\n%s", code, errs)
	}
	if got := nixtest.PathInfos(t, st, nixOut)[nixOut].NarHash; got != wantHash || wantHash == "" {
		t.Errorf("repaired %s has NAR hash %s, nix-build made %s", nixOut, got, wantHash)
	}
	nixtest.Nix(t, nil, "nix-store", "--store", st, "--verify", "--check-contents")

	// And the other way round: Nix repairs what ferry built.
	must(os.Chmod(libFile, 0o644))
	must(os.WriteFile(libFile, []byte("LIB\n"), 0o644))
	nixtest.Nix(t, nil, "nix-store", "--store", st, "--verify", "--check-contents", "--repair")
	if errs, code := verify("--check-contents"); code != 0 {
		t.Errorf("after nix-store --repair: exit %d\n%s", code, errs)
	}

	// No deriver: nothing to rebuild, and verify fails.
	plain := filepath.Join(dir, "plain.txt")
	os.WriteFile(plain, []byte("plain\n"), 0o644)
	added := strings.TrimSpace(mustFerry(t, nil, "--store", st, "store", "add", plain))
	must(os.Chmod(real(added), 0o644))
	must(os.WriteFile(real(added), []byte("PLAIN\n"), 0o644))
	errs, code := verify("--check-contents", "--repair")
	if code == 0 || !strings.Contains(errs, "cannot repair path '"+added+"'") {
		t.Errorf("verify --repair of a path without deriver: exit %d\n%s", code, errs)
	}
}
