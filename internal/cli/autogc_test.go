package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuildAutoGC: with min-free set and (through Nix's
// _NIX_TEST_FREE_SPACE_FILE) little space free, ferry build collects the
// store's garbage while it builds, keeps what the build uses, and leaves
// db/reserved deleted until the store is opened again.
func TestBuildAutoGC(t *testing.T) {
	requireBuilds(t)
	dir := t.TempDir()
	free := filepath.Join(dir, "free")
	os.WriteFile(free, []byte("1000\n"), 0o644)
	t.Setenv("NIX_CONF_DIR", t.TempDir())
	t.Setenv("NIX_CONFIG", "sandbox-paths = /bin/sh=/bin/busybox\nmin-free = 100000\nmax-free = 300000\ngc-reserved-space = 4096")
	t.Setenv("_NIX_TEST_FREE_SPACE_FILE", free)
	st := filepath.Join(dir, "store")
	reserved := filepath.Join(st, "nix/var/nix/db/reserved")
	// ferry gc opens the store with nix.conf's gc-reserved-space.
	mustFerry(t, nil, "--store", st, "gc", "--print-dead")
	if fi, err := os.Stat(reserved); err != nil || fi.Size() != 4096 {
		t.Fatalf("db/reserved after opening: %v %v", fi, err)
	}
	junkFile := filepath.Join(dir, "junk")
	os.WriteFile(junkFile, []byte(strings.Repeat("junk\n", 100)), 0o644)
	junk := strings.TrimSpace(mustFerry(t, nil, "--store", st, "store", "add", junkFile))
	ex := filepath.Join("..", "..", "examples")
	drvs := strings.Fields(mustFerry(t, nil, "--store", st, "derivation", "add",
		filepath.Join(ex, "chain-a.json"), filepath.Join(ex, "chain-b.json"), filepath.Join(ex, "chain-c.json")))

	out, errs, code := ferry(t, nil, "--store", st, "build", drvs[2])
	if code != 0 {
		t.Fatalf("build: exit %d\n%s", code, errs)
	}
	if !strings.Contains(errs, "running auto-GC to free 299000 bytes\n") || !strings.Contains(errs, "deleting '"+junk+"'") {
		t.Errorf("stderr:\n%s", errs)
	}
	if _, err := os.Stat(reserved); !os.IsNotExist(err) {
		t.Errorf("db/reserved after the auto-GC: %v", err)
	}
	outPath := strings.TrimSpace(out)
	if _, err := os.Stat(filepath.Join(st, outPath, "message")); err != nil {
		t.Errorf("built output: %v", err)
	}
	for _, p := range append([]string{outPath}, drvs...) {
		if _, errs, code := ferry(t, nil, "--store", st, "path-info", p); code != 0 {
			t.Errorf("%s collected: %s", p, errs)
		}
	}
	if _, _, code := ferry(t, nil, "--store", st, "path-info", junk); code == 0 {
		t.Errorf("garbage %s survived", junk)
	}
	if _, err := os.Stat(reserved); err != nil {
		t.Errorf("db/reserved not recreated: %v", err)
	}
}
