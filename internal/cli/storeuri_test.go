package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"ferry/internal/nixtest"
)

// storeURIExpr is two derivations and an input source; the top one says
// what it is built in, so the build log has something to keep.
const storeURIExpr = `let
  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  dep = mk "uri-dep" "echo dep in $NIX_STORE > $out";
in mk "uri-top" "echo building top; mkdir $out; cat ${dep} > $out/dep; echo ${./src.txt} > $out/src"`

// TestLocalStoreURIsLikeNix builds the same expression with real
// nix-build and with ferry build in stores named with parameters (a
// logical store directory that is not /nix/store, state= and log=
// elsewhere), and requires the same .drv text, output paths, NAR hashes
// and references, the build log kept where nix-store --read-log finds it,
// and no directory with a '?' in its name.
func TestLocalStoreURIsLikeNix(t *testing.T) {
	nixtest.RequireNix(t)
	requireBusybox(t)
	copyConfig(t, nixtest.Config)
	base := t.TempDir()
	if err := os.WriteFile(filepath.Join(base, "src.txt"), []byte("an input source\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	expr := filepath.Join(base, "e.nix")
	if err := os.WriteFile(expr, []byte(storeURIExpr), 0o644); err != nil {
		t.Fatal(err)
	}
	logical := filepath.Join(base, "logical", "store")
	uri := func(side string) string {
		return filepath.Join(base, side) + "?store=" + logical + "&state=" + filepath.Join(base, side+"-state") + "&log=" + filepath.Join(base, side+"-log")
	}
	nixURI, ferryURI := uri("nix"), uri("ferry")

	nixOut := nixtest.Line(t, "nix-build", "--store", nixURI, "--no-out-link", expr)
	drv := nixtest.Line(t, "nix-instantiate", "--store", ferryURI, expr)
	if !strings.HasPrefix(drv, logical+"/") || !strings.HasPrefix(nixOut, logical+"/") {
		t.Fatalf("paths outside the logical store %s: %s, %s", logical, drv, nixOut)
	}
	ferryOut := strings.TrimSpace(mustFerry(t, nil, "--store", ferryURI, "build", drv))
	if ferryOut != nixOut {
		t.Errorf("ferry built %s, nix-build %s", ferryOut, nixOut)
	}
	for _, p := range []string{drv} {
		a, errA := os.ReadFile(filepath.Join(base, "nix/nix/store", filepath.Base(p)))
		b, errB := os.ReadFile(filepath.Join(base, "ferry/nix/store", filepath.Base(p)))
		if errA != nil || errB != nil || string(a) != string(b) {
			t.Errorf(".drv %s differs: %v %v\n nix   %s\n ferry %s", p, errA, errB, a, b)
		}
	}
	want := nixtest.PathInfos(t, nixURI, "--recursive", nixOut)
	got := nixtest.PathInfos(t, ferryURI, "--recursive", ferryOut)
	for p, info := range want {
		info.Deriver = filepath.Base(info.Deriver)
		want[p] = info
	}
	for p, info := range got {
		info.Deriver = filepath.Base(info.Deriver)
		got[p] = info
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("closure (-nix-build +ferry build):\n%s", diff)
	}
	readLog := func(store string) string {
		t.Helper()
		out, stderr, err := nixtest.Try(t, nil, "nix-store", "--store", store, "--read-log", drv)
		if err != nil {
			t.Errorf("nix-store --store %s --read-log %s: %v\n%s", store, drv, err, stderr)
		}
		return string(out)
	}
	if n, f := readLog(nixURI), readLog(ferryURI); n != f || !strings.Contains(f, "building top") {
		t.Errorf("build logs: nix-build kept %q, ferry build %q", n, f)
	}
	// The same files under log=: bzip2-compressed, as compress-build-log
	// (on by default) has Nix write them.
	logFiles := func(side string) []string {
		t.Helper()
		var names []string
		root := filepath.Join(base, side+"-log", "drvs")
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(root, p)
				names = append(names, rel)
			}
			return nil
		})
		return names
	}
	if n, f := logFiles("nix"), logFiles("ferry"); len(f) == 0 || !cmp.Equal(n, f) || !strings.HasSuffix(f[0], ".bz2") {
		t.Errorf("log files under log=: nix-build kept %q, ferry build %q", n, f)
	}
	filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), "?") {
			t.Errorf("%s has a '?' in its name", p)
		}
		return nil
	})
	if _, err := os.Stat(logical); !os.IsNotExist(err) {
		t.Errorf("the logical store directory %s was created: %v", logical, err)
	}

	// A copy keeps the logical directory; between two directories it is
	// refused before anything is sent.
	copyDst := filepath.Join(base, "copy") + "?store=" + logical
	mustFerry(t, nil, "--store", ferryURI, "copy", "--to", copyDst, ferryOut)
	if diff := cmp.Diff(nixtest.PathInfos(t, ferryURI, "--recursive", ferryOut), nixtest.PathInfos(t, copyDst, "--recursive", ferryOut)); diff != "" {
		t.Errorf("ferry copy into %s (-source +copy):\n%s", copyDst, diff)
	}
	if _, errs, code := ferry(t, nil, "--store", ferryURI, "copy", "--to", filepath.Join(base, "plain"), ferryOut); code == 0 || !strings.Contains(errs, "cannot copy between store directories") {
		t.Errorf("copy into a /nix/store store: exit %d\n%s", code, errs)
	}

	// keep-build-log = false keeps none, as in Nix.
	copyConfig(t, nixtest.Config+"keep-build-log = false\n")
	quiet := filepath.Join(base, "quiet") + "?store=" + logical
	nixtest.Line(t, "nix-instantiate", "--store", quiet, expr)
	mustFerry(t, nil, "--store", quiet, "build", drv)
	if _, err := os.Stat(filepath.Join(base, "quiet/nix/var/log/nix/drvs")); !os.IsNotExist(err) {
		t.Errorf("keep-build-log = false kept a log: %v", err)
	}
}
