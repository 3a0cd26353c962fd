package storepath_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/nixtest"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
)

// Store paths computed by ferry must equal the ones real Nix gives
// nix-store --add, --add-fixed (flat and --recursive, every algorithm) and
// builtins.toFile with references.
func TestPathsMatchNix(t *testing.T) {
	nixtest.RequireNix(t)
	rng := rand.New(rand.NewSource(1))
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	file := filepath.Join(dir, "data.bin")
	content := make([]byte, 1+rng.Intn(100000))
	rng.Read(content)
	os.WriteFile(file, content, 0o644)
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "sub"), 0o755)
	os.WriteFile(filepath.Join(tree, "sub", "x"), content[:len(content)/2], 0o755)
	os.Symlink("sub/x", filepath.Join(tree, "l"))

	narHash := func(a hash.Algorithm, p string) hash.Hash {
		h := a.New()
		if err := nar.Dump(h, p); err != nil {
			t.Fatal(err)
		}
		return hash.FromHasher(a, h)
	}

	t.Run("add", func(t *testing.T) {
		for _, p := range []string{file, tree} {
			want := nixtest.Line(t, "nix-store", "--store", store, "--add", p)
			got, err := storepath.DefaultDir.MakeFixedOutput(filepath.Base(p), storepath.Recursive, narHash(hash.SHA256, p), nil, false)
			if err != nil || string(got) != want {
				t.Errorf("add %s: got %s, %v; nix %s", p, got, err, want)
			}
		}
	})
	for _, a := range []hash.Algorithm{hash.MD5, hash.SHA1, hash.SHA256, hash.SHA512} {
		t.Run("add-fixed "+a.String(), func(t *testing.T) {
			want := nixtest.Line(t, "nix-store", "--store", store, "--add-fixed", a.String(), file)
			got, _ := storepath.DefaultDir.MakeFixedOutput("data.bin", storepath.Flat, hash.Sum(a, content), nil, false)
			if string(got) != want {
				t.Errorf("flat: got %s, nix %s", got, want)
			}
			want = nixtest.Line(t, "nix-store", "--store", store, "--add-fixed", "--recursive", a.String(), tree)
			got, _ = storepath.DefaultDir.MakeFixedOutput("tree", storepath.Recursive, narHash(a, tree), nil, false)
			if string(got) != want {
				t.Errorf("recursive: got %s, nix %s", got, want)
			}
		})
	}
	t.Run("toFile", func(t *testing.T) {
		// A chain of text files, each referring to the previous ones.
		var refs []storepath.Path
		for i := 0; i < 4; i++ {
			var body strings.Builder
			fmt.Fprintf(&body, "file %d\n", i)
			var nixRefs []string
			for _, r := range refs {
				fmt.Fprintf(&body, "see %s\n", r)
				nixRefs = append(nixRefs, fmt.Sprintf("${builtins.storePath %q}", r))
			}
			name := fmt.Sprintf("t%d.txt", i)
			// Build the Nix string so that its context carries the refs.
			expr := fmt.Sprintf("builtins.toFile %q %s", name, nixString(t, body.String(), refs, nixRefs))
			out := nixtest.Nix(t, nil, "nix-instantiate", "--store", store, "--read-write-mode", "--eval", "--json", "-E", expr)
			var want string
			json.Unmarshal(out, &want)
			got, err := storepath.DefaultDir.MakeText(name, hash.SumString(hash.SHA256, body.String()), refs)
			if err != nil || string(got) != want {
				t.Fatalf("toFile %s: got %s, %v; nix %s", name, got, err, want)
			}
			refs = append(refs, got)
		}
	})
}

// nixString renders body as a Nix string expression in which each ref is
// an antiquotation of the corresponding nixRef, so the string's context
// holds the references.
func nixString(t *testing.T, body string, refs []storepath.Path, nixRefs []string) string {
	var b bytes.Buffer
	b.WriteString(`"`)
	rest := body
	for i, r := range refs {
		before, after, ok := strings.Cut(rest, string(r))
		if !ok {
			t.Fatalf("ref %s not in body", r)
		}
		b.WriteString(escapeNix(before))
		b.WriteString(nixRefs[i])
		rest = after
	}
	b.WriteString(escapeNix(rest))
	b.WriteString(`"`)
	return b.String()
}

func escapeNix(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "$", `\$`)
	return r.Replace(s)
}
