package export

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ferry/internal/nixtest"
	"ferry/nix/nar"
	"ferry/nix/nixbase32"
	"ferry/nix/storepath"
)

// TestNixExport reads a real `nix-store --export` of a closure holding
// derivations, text files and a source directory (with an executable and a
// symlink), and checks every entry against what Nix reports for the path;
// writing the entries back must give Nix's exact bytes.
func TestNixExport(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "run"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	os.WriteFile(filepath.Join(src, "data"), bytes.Repeat([]byte("0123456789abcdef"), 5000), 0o644)
	os.Symlink("sub/run", filepath.Join(src, "link"))
	expr := filepath.Join(dir, "test.nix")
	os.WriteFile(expr, []byte(`
let
  txt = builtins.toFile "txt" "hello\n";
  dep = derivation { name = "dep"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo ${txt} > $out" ]; };
in derivation {
  name = "top"; system = "x86_64-linux"; builder = "/bin/sh";
  src = builtins.path { path = `+src+`; name = "src"; };
  args = [ "-c" "cat ${dep} > $out" ];
}
`), 0o644)
	drv := nixtest.Line(t, "nix-instantiate", "--store", store, expr)
	closure := strings.Fields(nixtest.Line(t, "nix-store", "--store", store, "-qR", drv))
	if len(closure) != 4 {
		t.Fatalf("closure %q: want top.drv, dep.drv, txt and src", closure)
	}
	stream := nixtest.Nix(t, nil, "nix-store", append([]string{"--store", store, "--export"}, closure...)...)

	entries, err := readAll(NewReader(bytes.NewReader(stream), nil))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	seen := map[storepath.Path]bool{}
	for _, e := range entries {
		p := string(e.info.Path)
		got = append(got, p)
		for _, ref := range e.info.References {
			if ref != e.info.Path && !seen[ref] {
				t.Errorf("%s comes before its reference %s", p, ref)
			}
		}
		seen[e.info.Path] = true
		refs := strings.Fields(nixtest.Line(t, "nix-store", "--store", store, "-q", "--references", p))
		slices.SortFunc(refs, func(a, b string) int { return strings.Compare(filepath.Base(a), filepath.Base(b)) })
		var gotRefs []string
		for _, r := range e.info.References {
			gotRefs = append(gotRefs, string(r))
		}
		if !slices.Equal(gotRefs, refs) {
			t.Errorf("%s: references %q, nix says %q", p, gotRefs, refs)
		}
		if d := nixtest.Line(t, "nix-store", "--store", store, "-q", "--deriver", p); string(e.info.Deriver) != strings.TrimPrefix(d, "unknown-deriver") {
			t.Errorf("%s: deriver %q, nix says %q", p, e.info.Deriver, d)
		}
		if dump := nixtest.Nix(t, nil, "nix-store", "--dump", filepath.Join(store, p)); !bytes.Equal(e.nar, dump) {
			t.Errorf("%s: NAR differs from nix-store --dump", p)
		}
	}
	slices.Sort(got)
	slices.Sort(closure)
	if !slices.Equal(got, closure) {
		t.Fatalf("paths %q, closure %q", got, closure)
	}
	if out := writeAll(t, entries); !bytes.Equal(out, stream) {
		t.Fatal("re-encoded stream differs from nix-store --export")
	}
}

// TestNixImport writes a stream with our Writer (a dependency first, then a
// path with a self-reference, a reference and a deriver) and imports it
// into an empty store with `nix-store --import`.
func TestNixImport(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	dep := storepath.Path("/nix/store/9yyh0p5mibwx2b7czhn9n7qbhgb1n4r8-dep")
	top := storepath.Path("/nix/store/2gbf3ajil9jcgajdxs04wmmihmm01m7j-top")
	drv := storepath.Path("/nix/store/0c7v9xyzzzqczjzb6jqk6y0l9vl5w0p6-top.drv")

	tree := filepath.Join(dir, "tree")
	os.MkdirAll(tree, 0o755)
	os.WriteFile(filepath.Join(tree, "f"), []byte("see "+string(dep)+" and "+string(top)+"\n"), 0o644)
	os.Symlink(string(dep), filepath.Join(tree, "l"))

	var buf, depNAR, topNAR bytes.Buffer
	nar.DumpBytes(&depNAR, []byte("dependency\n"))
	nar.Dump(&topNAR, tree)
	w := NewWriter(&buf)
	if err := w.WritePath(&Info{Path: dep}, bytes.NewReader(depNAR.Bytes())); err != nil {
		t.Fatal(err)
	}
	w.StartPath()
	w.Write(topNAR.Bytes())
	w.FinishPath(&Info{Path: top, References: []storepath.Path{top, dep}, Deriver: drv})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	out := strings.Fields(string(nixtest.Nix(t, buf.Bytes(), "nix-store", "--store", store, "--import")))
	if !slices.Equal(out, []string{string(dep), string(top)}) {
		t.Fatalf("imported %q", out)
	}
	refs := strings.Fields(nixtest.Line(t, "nix-store", "--store", store, "-q", "--references", string(top)))
	slices.Sort(refs)
	if want := []string{string(top), string(dep)}; !slices.Equal(refs, want) {
		t.Errorf("references %q, want %q", refs, want)
	}
	if d := nixtest.Line(t, "nix-store", "--store", store, "-q", "--deriver", string(top)); d != string(drv) {
		t.Errorf("deriver %q", d)
	}
	sum := sha256.Sum256(topNAR.Bytes())
	if h := nixtest.Line(t, "nix-store", "--store", store, "-q", "--hash", string(top)); h != "sha256:"+nixbase32.EncodeToString(sum[:]) {
		t.Errorf("hash %s", h)
	}
	if dump := nixtest.Nix(t, nil, "nix-store", "--dump", filepath.Join(store, string(top))); !bytes.Equal(dump, topNAR.Bytes()) {
		t.Error("imported tree differs")
	}

	// A reference that is neither valid nor earlier in the stream is refused.
	var bad bytes.Buffer
	w = NewWriter(&bad)
	w.WritePath(&Info{Path: top, References: []storepath.Path{dep}}, bytes.NewReader(topNAR.Bytes()))
	w.Close()
	if _, stderr, err := nixtest.Try(t, bad.Bytes(), "nix-store", "--store", filepath.Join(dir, "empty"), "--import"); err == nil {
		t.Error("import with a missing reference succeeded")
	} else if !bytes.Contains(stderr, []byte("is not valid")) {
		t.Errorf("unexpected error: %s", stderr)
	}
}
