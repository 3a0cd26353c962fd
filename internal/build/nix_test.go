package build

import (
	"bytes"
	"context"
	"crypto/sha1"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"ferry/internal/localstore"
	"ferry/internal/nixtest"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/store"
)

// crossExpr generates the Nix expression of the cross test: several
// levels of inputs, multiple outputs that refer to each other, fixed
// outputs flat and recursive in several algorithms, passAsFile, and
// references written in the middle of other text.
func crossExpr(t *testing.T) string {
	t.Helper()
	// The recursive fixed outputs hash this tree.
	tree := filepath.Join(t.TempDir(), "tree")
	must(t, os.Mkdir(tree, 0o755))
	must(t, os.WriteFile(filepath.Join(tree, "file"), []byte("rec\n"), 0o644))
	must(t, os.Symlink("file", filepath.Join(tree, "link")))
	var narBuf bytes.Buffer
	must(t, nar.Dump(&narBuf, tree))
	recSHA256 := hash.Sum(hash.SHA256, narBuf.Bytes())
	recSHA512 := hash.Sum(hash.SHA512, narBuf.Bytes())
	flatSHA256 := hash.SumString(hash.SHA256, "hello\n")
	flatSHA1 := hash.FromHasher(hash.SHA1, func() (h interface {
		Write([]byte) (int, error)
		Sum([]byte) []byte
		Reset()
		Size() int
		BlockSize() int
	}) {
		s := sha1.New()
		s.Write([]byte("flat sha1\n"))
		return s
	}())
	return fmt.Sprintf(`
let
  mk = name: script: attrs: derivation ({ inherit name; system = "%s"; builder = "/bin/sh"; args = [ "-c" script ]; } // attrs);
in rec {
  fodFlat = mk "fod-flat" "echo hello > $out" { outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "%s"; };
  fodFlatSha1 = mk "fod-flat-sha1" "echo flat sha1 > $out" { outputHashMode = "flat"; outputHashAlgo = "sha1"; outputHash = "%s"; };
  fodRec = mk "fod-rec" "mkdir $out; echo rec > $out/file; ln -s file $out/link" { outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = "%s"; };
  fodRecSha512 = mk "fod-rec-sha512" "mkdir $out; echo rec > $out/file; ln -s file $out/link" { outputHashMode = "recursive"; outputHashAlgo = "sha512"; outputHash = "%s"; };
  a = mk "level-a" "mkdir $out; echo a > $out/a; echo ${fodFlat} > $out/fod" {};
  b = mk "level-b" ''
    mkdir $out $dev $doc
    echo ${a} > $out/a-ref
    echo $dev > $out/dev-ref
    echo $out > $doc/out-ref
    echo nothing > $doc/readme
    cat $contentPath > $out/content
    echo $contentPath > $out/content-path
  '' { outputs = [ "out" "dev" "doc" ]; passAsFile = [ "content" ]; content = "passed as a file\n"; };
  c = mk "level-c" ''
    mkdir $out
    echo ${b.dev} > $out/dev
    cat ${fodRec}/file > $out/rec
    echo ${fodRecSha512} ${fodFlatSha1} > $out/fods
    ln -s ${b} $out/b-link
  '' {};
  d = mk "level-d" ''
    mkdir -p $out/bin $lib
    echo ${c} > $out/bin/c
    chmod +x $out/bin/c
    echo abc$(basename ${b.doc})xyz > $lib/embedded
    echo $lib > $out/lib
  '' { outputs = [ "out" "lib" ]; };
  e = mk "level-e" "echo ${d.lib} ${d} > $out" {};
}
`, system, flatSHA256.Hex(), flatSHA1.Hex(), recSHA256.Hex(), recSHA512.Hex())
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCrossNix builds the same derivations with nix-build in one store
// and with BuildGraph in another (holding the .drv files Nix
// instantiated there) and compares output paths, NAR hashes, references,
// derivers and content addresses as Nix reads them from both stores.
func TestCrossNix(t *testing.T) {
	nixtest.RequireNix(t)
	requireSandbox(t)
	dir := t.TempDir()
	expr := filepath.Join(dir, "cross.nix")
	must(t, os.WriteFile(expr, []byte(crossExpr(t)), 0o644))
	nixStore, ferryStore := filepath.Join(dir, "nix"), filepath.Join(dir, "ferry")

	nixOuts := strings.Fields(string(nixtest.Nix(t, nil, "nix-build", "--store", nixStore, "--no-out-link", "-j", "4", expr)))
	drvs := strings.Fields(string(nixtest.Nix(t, nil, "nix-instantiate", "--store", ferryStore, expr)))
	if len(drvs) == 0 {
		t.Fatal("nothing instantiated")
	}

	st, err := localstore.Open(ferryStore, &localstore.Options{NoSync: true})
	must(t, err)
	var roots []storepath.Path
	for _, d := range drvs {
		p, err := storepath.Parse(d)
		must(t, err)
		roots = append(roots, p)
	}
	results, err := BuildGraph(context.Background(), st, roots, 2, &Options{Settings: testSettings()})
	must(t, err)
	var ferryOuts []string
	seen := map[string]bool{}
	for dp, res := range results {
		if res.Status != store.Built {
			t.Fatalf("%s: %v %s", dp, res.Status, res.ErrorMsg)
		}
		for _, p := range res.BuiltOutputs {
			if !seen[string(p)] {
				seen[string(p)] = true
				ferryOuts = append(ferryOuts, string(p))
			}
		}
	}
	st.Close()
	// Every output Nix built for the top-level attributes is among ferry's.
	for _, p := range nixOuts {
		if !seen[p] {
			t.Errorf("nix-build output %s not built by ferry", p)
		}
	}
	sort.Strings(ferryOuts)
	if len(ferryOuts) != 12 {
		t.Fatalf("only %d outputs: %v", len(ferryOuts), ferryOuts)
	}
	want := nixtest.PathInfos(t, nixStore, ferryOuts...)
	got := nixtest.PathInfos(t, ferryStore, ferryOuts...)
	for _, p := range ferryOuts {
		w, g := want[p], got[p]
		if w.Path == "" || g.Path == "" {
			t.Errorf("%s: missing from nix (%v) or ferry (%v)", p, w.Path != "", g.Path != "")
			continue
		}
		if w.NarHash != g.NarHash || w.NarSize != g.NarSize || strings.Join(w.References, " ") != strings.Join(g.References, " ") ||
			w.Deriver != g.Deriver || w.CA != g.CA {
			t.Errorf("%s differs:\nnix   %+v\nferry %+v", p, w, g)
		}
	}
	// The interesting references are really there.
	refsOf := func(name string) []string {
		for _, p := range ferryOuts {
			if strings.HasSuffix(p, "-"+name) {
				return got[p].References
			}
		}
		t.Fatalf("no output %s", name)
		return nil
	}
	if r := refsOf("level-b"); len(r) != 2 { // a and dev
		t.Errorf("level-b refs %v", r)
	}
	if r := refsOf("level-b-doc"); len(r) != 1 || !strings.HasSuffix(r[0], "-level-b") { // out
		t.Errorf("level-b-doc refs %v", r)
	}
	if r := refsOf("level-d-lib"); len(r) != 1 || !strings.HasSuffix(r[0], "-level-b-doc") {
		t.Errorf("level-d-lib refs %v", r)
	}
}
