package localstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"ferry/internal/nixtest"
	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/store"
)

// TestFerryWritesNixReads writes every kind of object with ferry and
// checks that Nix 2.8 verifies the store and reports the same facts.
func TestFerryWritesNixReads(t *testing.T) {
	nixtest.RequireNix(t)
	ctx := context.Background()
	root := t.TempDir()
	src := t.TempDir()
	s := openStore(t, root)

	hello := filepath.Join(src, "hello.txt")
	os.WriteFile(hello, []byte("hello\n"), 0o644)
	tree := filepath.Join(src, "tree")
	writeTree(t, tree, map[string]string{"f": "hi", "bin/x*": "#!/bin/sh\n", "l": "@f", "sub/deep/g": "g"})
	os.Chmod(filepath.Join(tree, "f"), 0o4755) // setuid must go

	want := map[string]string{}
	add := func(src string, m storepath.Method, a hash.Algorithm, wantPath string) storepath.Path {
		t.Helper()
		info, err := s.AddPath(ctx, src, m, a)
		fatalIf(t, err)
		if wantPath != "" && string(info.Path) != wantPath {
			t.Errorf("AddPath %s: got %s, want %s", src, info.Path, wantPath)
		}
		return info.Path
	}
	add(hello, storepath.Recursive, hash.SHA256, "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")
	add(hello, storepath.Flat, hash.SHA256, "/nix/store/gy454w1cxaq731grqwylhzf4pp9r5izh-hello.txt")
	add(hello, storepath.Flat, hash.MD5, "/nix/store/dra1cz5vbrhclpv4y1q0psnbkxz581bk-hello.txt")
	treeP := add(tree, storepath.Recursive, hash.SHA256, "")
	add(tree, storepath.Recursive, hash.SHA1, "")
	// The same path again is a no-op.
	add(hello, storepath.Recursive, hash.SHA256, "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")

	// The Nix-computed path of the same tree.
	if got := nixtest.Line(t, "nix-store", "--store", t.TempDir(), "--add", tree); got != string(treeP) {
		t.Errorf("tree: ferry %s, nix %s", treeP, got)
	}

	foo, err := s.AddText(ctx, "foo.txt", []byte("hello\n"), nil)
	fatalIf(t, err)
	if foo.Path != "/nix/store/xl3jbiq4g9jnqn8yp9y4cski5n3ylk1q-foo.txt" {
		t.Errorf("foo.txt: %s", foo.Path)
	}
	ref, err := s.AddText(ctx, "ref.txt", []byte("see "+string(foo.Path)+"\n"), []storepath.Path{foo.Path})
	fatalIf(t, err)
	if ref.Path != "/nix/store/4vra9dlsyfwvsxycm1pfnwvd4p8b7aan-ref.txt" {
		t.Errorf("ref.txt: %s", ref.Path)
	}
	want["ref"] = string(ref.Path)

	// A derivation: ferry writes it, Nix builds it.
	drv := &derivation.Derivation{
		Name:      "triv",
		Outputs:   map[string]derivation.Output{"out": {}},
		InputSrcs: []storepath.Path{foo.Path},
		Platform:  "x86_64-linux",
		Builder:   "/bin/sh",
		Args:      []string{"-c", "echo " + string(foo.Path) + " > $out"},
		Env:       map[string]string{"builder": "/bin/sh", "name": "triv", "system": "x86_64-linux", "out": ""},
	}
	resolve := func(p storepath.Path) (*derivation.Derivation, error) { return s.ReadDerivation(ctx, p) }
	fatalIf(t, drv.FillOutputPaths(s.Dir(), resolve, nil))
	drvPath, err := s.AddDerivation(ctx, drv)
	fatalIf(t, err)
	outs, err := s.QueryDerivationOutputs(ctx, drvPath)
	fatalIf(t, err)
	if got := nixtest.Line(t, "nix-store", "--store", root, "-q", "--outputs", string(drvPath)); got != string(outs["out"]) {
		t.Errorf("outputs: nix %s, ferry %v", got, outs)
	}
	built := nixtest.Line(t, "nix-store", "--store", root, "--realise", string(drvPath))
	if built != string(outs["out"]) {
		t.Errorf("nix built %s, want %s", built, outs["out"])
	}
	if ds, err := s.QueryValidDerivers(ctx, outs["out"]); err != nil || len(ds) != 1 || ds[0] != drvPath {
		t.Errorf("valid derivers: %v %v", ds, err)
	}
	if d, err := s.QueryDeriver(ctx, outs["out"]); err != nil || d != drvPath {
		t.Errorf("deriver: %v %v", d, err)
	}

	// AddToStoreNar with every column set.
	var buf bytes.Buffer
	nar.DumpBytes(&buf, []byte("payload "+string(ref.Path)))
	imp := &store.PathInfo{
		Path:             mustPath(t, "/nix/store/00000000000000000000000000000000-imported"),
		Deriver:          drvPath,
		NarHash:          hash.Sum(hash.SHA256, buf.Bytes()),
		NarSize:          uint64(buf.Len()),
		References:       []storepath.Path{ref.Path, "/nix/store/00000000000000000000000000000000-imported"},
		RegistrationTime: time.Unix(1700000000, 0),
		Ultimate:         true,
		Sigs:             []string{"cache.example.org-1:c2lnbmF0dXJl", "other:b3RoZXI="},
	}
	fatalIf(t, s.AddToStoreNar(ctx, imp, bytes.NewReader(buf.Bytes())))

	// Canonical metadata on disk.
	for _, rel := range []string{"", "f", "bin", "bin/x", "sub/deep/g"} {
		st, err := os.Lstat(filepath.Join(s.RealPath(treeP), rel))
		fatalIf(t, err)
		if st.ModTime().Unix() != 1 {
			t.Errorf("%s: mtime %v", rel, st.ModTime())
		}
		if m := st.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky); m != 0o444 && m != 0o555 {
			t.Errorf("%s: mode %v", rel, m)
		}
	}
	if st, _ := os.Lstat(filepath.Join(s.RealPath(treeP), "l")); st.ModTime().Unix() != 1 {
		t.Errorf("symlink mtime %v", st.ModTime())
	}

	nixVerify(t, root)
	compareFacts(t, ferryFacts(t, s), nixFacts(t, root))

	// Layout and schema file like Nix's.
	b, err := os.ReadFile(filepath.Join(root, "nix/var/nix/db/schema"))
	if err != nil || string(b) != "10" {
		t.Errorf("schema file %q %v", b, err)
	}
	for _, d := range []string{"temproots", "gcroots/per-user", "profiles/per-user", "gcroots/profiles"} {
		if _, err := os.Lstat(filepath.Join(root, "nix/var/nix", d)); err != nil {
			t.Error(err)
		}
	}
	_ = want
}

// TestNixWritesFerryReads has Nix add, build and import objects, then
// reads them with ferry: same facts, same NARs, same export stream, and
// a ferry import of Nix's export gives the same facts again.
func TestNixWritesFerryReads(t *testing.T) {
	nixtest.RequireNix(t)
	ctx := context.Background()
	src := t.TempDir()
	a, b, c := t.TempDir(), t.TempDir(), t.TempDir()

	hello := filepath.Join(src, "hello.txt")
	os.WriteFile(hello, []byte("hello\n"), 0o644)
	tree := filepath.Join(src, "tree")
	writeTree(t, tree, map[string]string{"f": "hi", "bin/x*": "#!/bin/sh\n", "l": "@f"})
	expr := filepath.Join(src, "t.nix")
	os.WriteFile(expr, []byte(`let dep = builtins.toFile "dep.txt" "dep\n"; in
derivation { name = "triv"; builder = "/bin/sh"; args = ["-c" "echo ${dep} > $out"]; system = builtins.currentSystem; }`), 0o644)

	p1 := nixtest.Line(t, "nix-store", "--store", a, "--add", hello)
	p2 := nixtest.Line(t, "nix-store", "--store", a, "--add-fixed", "--recursive", "sha1", tree)
	out := nixtest.Line(t, "nix-build", "--store", a, expr, "--no-out-link")
	drvPath := nixtest.Line(t, "nix-store", "--store", a, "-q", "--deriver", out)
	paths := []string{p1, p2, out, drvPath}
	closure := strings.Fields(string(nixtest.Nix(t, nil, "nix-store", "--store", a, "-qR", "--include-outputs", out, drvPath, p1, p2)))
	stream := nixtest.Nix(t, nil, "nix-store", append([]string{"--store", a, "--export"}, closure...)...)
	nixtest.Nix(t, stream, "nix-store", "--store", b, "--import")

	for _, root := range []string{a, b} {
		s := openStore(t, root)
		compareFacts(t, ferryFacts(t, s), nixFacts(t, root))
		for _, p := range paths {
			var got bytes.Buffer
			fatalIf(t, s.NarFromPath(ctx, mustPath(t, p), &got))
			if wantNar := nixtest.Nix(t, nil, "nix-store", "--dump", filepath.Join(root, p)); !bytes.Equal(got.Bytes(), wantNar) {
				t.Errorf("%s: NAR differs from nix-store --dump", p)
			}
		}
		cl, err := s.QueryClosure(ctx, []storepath.Path{mustPath(t, out), mustPath(t, drvPath), mustPath(t, p1), mustPath(t, p2)}, true)
		fatalIf(t, err)
		var gotCl []string
		for _, p := range cl {
			gotCl = append(gotCl, string(p))
		}
		wantCl := append([]string(nil), closure...)
		sort.Strings(wantCl)
		if strings.Join(gotCl, " ") != strings.Join(wantCl, " ") {
			t.Errorf("closure:\nferry %v\nnix   %v", gotCl, wantCl)
		}
		dep := nixtest.Line(t, "nix-store", "--store", root, "-q", "--references", out)
		refs, err := s.QueryReferrers(ctx, mustPath(t, dep))
		fatalIf(t, err)
		wantRefs := strings.Fields(string(nixtest.Nix(t, nil, "nix-store", "--store", root, "-q", "--referrers", dep)))
		if len(refs) != len(wantRefs) {
			t.Errorf("referrers of %s: ferry %v, nix %v", dep, refs, wantRefs)
		}
		if root == a {
			outs, err := s.QueryDerivationOutputs(ctx, mustPath(t, drvPath))
			if err != nil || string(outs["out"]) != out {
				t.Errorf("derivation outputs %v %v", outs, err)
			}
			// ferry's export of the closure is byte-identical to Nix's.
			var exp bytes.Buffer
			var cp []storepath.Path
			for _, p := range closure {
				cp = append(cp, mustPath(t, p))
			}
			fatalIf(t, s.Export(ctx, &exp, cp))
			if !bytes.Equal(exp.Bytes(), stream) {
				t.Errorf("export stream differs from nix-store --export (%d vs %d bytes)", exp.Len(), len(stream))
			}
		}
	}

	// ferry imports Nix's stream into a fresh store.
	s := openStore(t, c)
	got, err := s.Import(ctx, bytes.NewReader(stream))
	fatalIf(t, err)
	if len(got) != len(closure) {
		t.Errorf("imported %v, want %v", got, closure)
	}
	nixVerify(t, c)
	fc, fb := ferryFacts(t, s), nixFacts(t, b)
	for p, f := range fc {
		f.RegTime = fb[p].RegTime
		fc[p] = f
	}
	compareFacts(t, fc, fb)
}

// TestAlternatingWrites has ferry and Nix take turns on one store, ferry
// keeping its handle open throughout.
func TestAlternatingWrites(t *testing.T) {
	nixtest.RequireNix(t)
	ctx := context.Background()
	root := t.TempDir()
	src := t.TempDir()
	s := openStore(t, root)
	var prev []storepath.Path
	for i := range 4 {
		info, err := s.AddText(ctx, "ferry-"+string(rune('a'+i)), []byte(strings.Repeat("x", i)+"refs "+joinPaths(prev)), prev)
		fatalIf(t, err)
		f := filepath.Join(src, "nix-"+string(rune('a'+i)))
		os.WriteFile(f, []byte("from nix "+string(info.Path)), 0o644)
		p := mustPath(t, nixtest.Line(t, "nix-store", "--store", root, "--add", f))
		prev = []storepath.Path{info.Path, p}
		if ok, err := s.IsValidPath(ctx, p); err != nil || !ok {
			t.Fatalf("ferry does not see %s: %v", p, err)
		}
	}
	nixVerify(t, root)
	compareFacts(t, ferryFacts(t, s), nixFacts(t, root))
}

func joinPaths(ps []storepath.Path) string {
	var ss []string
	for _, p := range ps {
		ss = append(ss, string(p))
	}
	return strings.Join(ss, " ")
}
