package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"ferry/internal/nixtest"
)

// ferry runs the CLI in-process and returns stdout, stderr and the status.
func ferry(t *testing.T, stdin []byte, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &Env{Stdin: bytes.NewReader(stdin), Stdout: &out, Stderr: &errb}
	code := Run(context.Background(), e, args)
	return out.String(), errb.String(), code
}

func mustFerry(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	out, errs, code := ferry(t, stdin, args...)
	if code != 0 {
		t.Fatalf("ferry %s: exit %d\n%s", strings.Join(args, " "), code, errs)
	}
	return out
}

func sampleTree(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(dir, "d/e"), 0o755)
	os.WriteFile(filepath.Join(dir, "a b.txt"), []byte("hello\n"), 0o644)
	nixtest.WriteExecutable(filepath.Join(dir, "d/x"), bytes.Repeat([]byte("x"), 70000))
	os.Symlink("../a b.txt", filepath.Join(dir, "d/link"))
	os.Symlink("nowhere", filepath.Join(dir, "dangling"))
	return dir
}

func TestHashMatchesNix(t *testing.T) {
	nixtest.RequireNix(t)
	tree := sampleTree(t)
	file := filepath.Join(tree, "d/x")
	for _, sub := range []string{"path", "file"} {
		target := tree
		if sub == "file" {
			target = file
		}
		for _, typ := range []string{"md5", "sha1", "sha256", "sha512"} {
			for _, enc := range []string{"", "--base16", "--base32", "--base64", "--sri"} {
				args := []string{"hash", sub, "--type", typ}
				if enc != "" {
					args = append(args, enc)
				}
				args = append(args, target)
				t.Run(strings.Join(args[1:4], " ")+enc, func(t *testing.T) {
					want := string(nixtest.Nix(t, nil, "nix", args...))
					if got := mustFerry(t, nil, args...); got != want {
						t.Errorf("ferry %v = %q, nix = %q", args, got, want)
					}
				})
			}
		}
	}
}

func TestNarMatchesNix(t *testing.T) {
	nixtest.RequireNix(t)
	tree := sampleTree(t)
	want := nixtest.Nix(t, nil, "nix-store", "--dump", tree)
	got := mustFerry(t, nil, "nar", "dump", tree)
	if got != string(want) {
		t.Fatalf("ferry nar dump differs from nix-store --dump (%d vs %d bytes)", len(got), len(want))
	}
	dest := filepath.Join(t.TempDir(), "restored")
	mustFerry(t, want, "nar", "restore", dest)
	if again := mustFerry(t, nil, "nar", "dump", dest); again != got {
		t.Error("dump of restored tree differs")
	}
	narFile := filepath.Join(t.TempDir(), "x.nar")
	os.WriteFile(narFile, want, 0o644)
	wantLs := string(nixtest.Nix(t, nil, "nix", "nar", "ls", "-R", "-l", narFile, "/"))
	if gotLs := mustFerry(t, want, "nar", "ls", "-R", "-l"); gotLs != wantLs {
		t.Errorf("nar ls:\n%s\nnix nar ls:\n%s", gotLs, wantLs)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := [][]string{
		{},
		{"no-such-command"},
		{"hash", "path", "--type", "sha3", "x"},
		{"hash", "path", "--base16", "--base32", "x"},
		{"nar", "dump"},
		{"nar", "restore"},
		{"--store"},
	}
	for _, args := range tests {
		_, errs, code := ferry(t, nil, args...)
		if code != 2 || !strings.Contains(errs, "error: ") {
			t.Errorf("ferry %q: exit %d, stderr %q; want usage error", args, code, errs)
		}
	}
	if _, errs, code := ferry(t, nil, "hash", "path", "/nonexistent/x"); code != 1 || !strings.Contains(errs, "/nonexistent/x") {
		t.Errorf("missing path: exit %d, %q", code, errs)
	}
}

func TestGlobalStoreFlagAnywhere(t *testing.T) {
	for _, args := range [][]string{
		{"--store", "/x", "help"}, {"help", "--store", "/x"}, {"help", "--store=/x"},
	} {
		e := &Env{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}}
		rest, err := globalFlags(e, args)
		if err != nil || e.Store != "/x" || len(rest) != 1 || rest[0] != "help" {
			t.Errorf("globalFlags(%q) = %q, %v; store %q", args, rest, err, e.Store)
		}
	}
}

func TestDemo(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	var out, errb bytes.Buffer
	results, err := runDemo(context.Background(), &Env{Stdout: &out, Stderr: &errb}, nixtest.FerryBin(t), filepath.Join(dir, "local"), filepath.Join(dir, "remote"))
	if err != nil {
		t.Fatalf("demo: %v\n%s\n%s", err, out.String(), errb.String())
	}
	if len(results) != 5 || !strings.Contains(out.String(), "no .drv file reached the remote") ||
		!strings.Contains(out.String(), "sent 1 input paths") {
		t.Fatalf("demo output:\n%s", out.String())
	}
	// Real Nix realises the same derivations (written into its store by
	// ferry derivation add) to the same output paths and contents.
	nixStore := filepath.Join(dir, "nix")
	// The input source of greet, as builtins.toFile adds it.
	nixtest.Nix(t, nil, "nix-instantiate", "--store", nixStore, "--read-write-mode", "--eval", "-E",
		`builtins.toFile "greeting.txt" (builtins.readFile ../../examples/tree/greeting.txt)`)
	var drvs []string
	for _, name := range []string{"hello", "chain-a", "chain-b", "chain-c", "greet"} {
		drvs = append(drvs, strings.TrimSpace(mustFerry(t, nil, "--store", nixStore, "derivation", "add", filepath.Join("../../examples", name+".json"))))
	}
	nixtest.Nix(t, nil, "nix-store", "--store", nixStore, "--realise", drvs[0], drvs[3], drvs[4])
	want := nixtest.PathInfos(t, nixStore, "--all")
	got := nixtest.PathInfos(t, filepath.Join(dir, "local"), "--all")
	for _, r := range results {
		for _, p := range r.Outputs {
			if got[string(p)].Path == "" || want[string(p)].Path == "" {
				t.Errorf("%s: missing from the demo's store or Nix's", p)
			}
			// Registration times and ultimate differ: the demo copied them.
			if !reflect.DeepEqual(got[string(p)], want[string(p)]) {
				t.Errorf("%s:\nferry demo: %+v\nnix-store --realise: %+v", p, got[string(p)], want[string(p)])
			}
		}
	}
}
