package storepath_test

import (
	"encoding/json"
	"ferry/internal/nixtest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
)

// The fixtures under testdata were recorded from Nix 2.8 by
// scripts/record-fixtures; see that script for the commands.

// fixtureLines reads a fixture of this package (nixtest.Fixture).
func fixtureLines(t *testing.T, name string) [][]string {
	return nixtest.Fixture(t, "storepath", name, 4)
}

// pathInfo is the part of `nix path-info --json` the recorder keeps.
type pathInfo struct {
	Path       storepath.Path
	NarHash    string
	NarSize    int64
	References []storepath.Path
	CA         string
}

func loadPathInfo(t *testing.T) map[storepath.Path]pathInfo {
	t.Helper()
	data, err := os.ReadFile("testdata/path-info.json")
	if err != nil {
		t.Fatalf("fixture missing (run scripts/record-fixtures storepath): %v", err)
	}
	var list []pathInfo
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	m := map[storepath.Path]pathInfo{}
	for _, pi := range list {
		m[pi.Path] = pi
	}
	return m
}

// narOf is the NAR serialisation of a file or tree, as ferry writes it.
func narOf(t *testing.T, path string) []byte {
	t.Helper()
	var b strings.Builder
	if err := nar.Dump(&b, path); err != nil {
		t.Fatal(err)
	}
	return []byte(b.String())
}

// checkInfo compares the NAR hash, size and content address Nix recorded
// for p with ferry's NAR of file and its parse and rendering of the ca.
func checkInfo(t *testing.T, pi pathInfo, file string) storepath.ContentAddress {
	t.Helper()
	n := narOf(t, file)
	if want, err := hash.Parse(pi.NarHash); err != nil {
		t.Errorf("narHash %q: %v", pi.NarHash, err)
	} else if got := hash.Sum(hash.SHA256, n); !got.Equal(want) {
		t.Errorf("NAR hash of %s = %s, Nix %s", file, got.SRI(), pi.NarHash)
	}
	if int64(len(n)) != pi.NarSize {
		t.Errorf("NAR size of %s = %d, Nix %d", file, len(n), pi.NarSize)
	}
	ca, err := storepath.ParseContentAddress(pi.CA)
	if err != nil {
		t.Fatalf("ParseContentAddress(%q): %v", pi.CA, err)
	}
	if ca.String() != pi.CA {
		t.Errorf("content address %q renders as %q", pi.CA, ca.String())
	}
	return ca
}

// TestNixAdded recomputes the paths and content addresses of everything
// nix-store --add and --add-fixed [--recursive] ALGO stored from
// testdata/input: the hash ferry computes from the input must be the one
// in Nix's ca, and the path ferry makes from it Nix's path.
func TestNixAdded(t *testing.T) {
	infos := loadPathInfo(t)
	methods := map[string]int{}
	for _, l := range fixtureLines(t, "added.txt") {
		if len(l) != 4 {
			t.Fatalf("bad line %q", l)
		}
		how, algo, input, want := l[0], l[1], l[2], storepath.Path(l[3])
		t.Run(how+"/"+algo+"/"+input, func(t *testing.T) {
			methods[how]++
			pi, ok := infos[want]
			if !ok {
				t.Fatalf("%s not in path-info.json", want)
			}
			file := filepath.Join("testdata", "input", input)
			ca := checkInfo(t, pi, file)
			var m storepath.Method
			var h hash.Hash
			switch how {
			case "add":
				m, h = storepath.Recursive, hash.Sum(hash.SHA256, narOf(t, file))
			case "flat", "recursive":
				a, err := hash.ParseAlgorithm(algo)
				if err != nil {
					t.Fatal(err)
				}
				if how == "flat" {
					data, err := os.ReadFile(file)
					if err != nil {
						t.Fatal(err)
					}
					m, h = storepath.Flat, hash.Sum(a, data)
				} else {
					m, h = storepath.Recursive, hash.Sum(a, narOf(t, file))
				}
			default:
				t.Fatalf("unknown method %q", how)
			}
			if ca.Method != m || !ca.Hash.Equal(h) {
				t.Errorf("content address: ferry %s, Nix %s", storepath.ContentAddress{Method: m, Hash: h}, pi.CA)
			}
			got, err := storepath.DefaultDir.MakeFixedOutput(input, m, h, nil, false)
			if err != nil || got != want {
				t.Errorf("MakeFixedOutput = %s, %v; Nix %s", got, err, want)
			}
			if got, err := storepath.DefaultDir.MakeFromCA(input, ca, nil, false); err != nil || got != want {
				t.Errorf("MakeFromCA(%s) = %s, %v; Nix %s", pi.CA, got, err, want)
			}
			if p, err := storepath.Parse(string(want)); err != nil || p != want || p.Name() != input {
				t.Errorf("Parse(%s) = %s (name %q), %v", want, p, p.Name(), err)
			}
		})
	}
	if methods["add"] == 0 || methods["flat"] == 0 || methods["recursive"] == 0 {
		t.Errorf("fixtures cover only %v", methods)
	}
}

// TestNixText recomputes the paths of builtins.toFile texts, some with
// references to others, from the contents Nix wrote (testdata/text).
func TestNixText(t *testing.T) {
	infos := loadPathInfo(t)
	withRefs := 0
	for _, l := range fixtureLines(t, "text.txt") {
		if len(l) != 2 {
			t.Fatalf("bad line %q", l)
		}
		name, want := l[0], storepath.Path(l[1])
		t.Run(name, func(t *testing.T) {
			pi, ok := infos[want]
			if !ok {
				t.Fatalf("%s not in path-info.json", want)
			}
			file := filepath.Join("testdata", "text", name)
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			ca := checkInfo(t, pi, file)
			h := hash.Sum(hash.SHA256, data)
			if ca.Method != storepath.Text || !ca.Hash.Equal(h) {
				t.Errorf("content address: ferry %s, Nix %s", storepath.ContentAddress{Method: storepath.Text, Hash: h}, pi.CA)
			}
			if len(pi.References) > 0 {
				withRefs++
			}
			got, err := storepath.DefaultDir.MakeText(name, h, pi.References)
			if err != nil || got != want {
				t.Errorf("MakeText(%s, refs %v) = %s, %v; Nix %s", name, pi.References, got, err, want)
			}
			if got, err := storepath.DefaultDir.MakeFromCA(name, ca, pi.References, false); err != nil || got != want {
				t.Errorf("MakeFromCA = %s, %v; Nix %s", got, err, want)
			}
		})
	}
	if withRefs < 2 {
		t.Errorf("only %d text fixtures have references", withRefs)
	}
}

// masterOnly are names Nix 2.8 accepts but current Nix (and ferry, which
// follows it when creating paths; docs/store.md §1.4) rejects.
var masterOnly = map[string]bool{".": true, "..": true, ".-foo": true, "..-foo": true}

// TestNixNames checks ValidateName against the names builtins.toFile
// accepted or rejected.
func TestNixNames(t *testing.T) {
	var ok, bad int
	for _, l := range fixtureLines(t, "names-nix.txt") {
		if len(l) < 1 {
			t.Fatalf("bad line %q", l)
		}
		verdict, name := l[0], ""
		if len(l) > 1 {
			name = strings.Join(l[1:], " ")
		}
		err := storepath.ValidateName(name)
		switch {
		case verdict == "ok" && masterOnly[name]:
			if err == nil {
				t.Errorf("ValidateName(%q) accepts a name current Nix rejects", name)
			}
		case verdict == "ok":
			ok++
			if err != nil {
				t.Errorf("ValidateName(%q): %v; Nix accepts it", name, err)
			}
		case verdict == "bad":
			bad++
			if err == nil {
				t.Errorf("ValidateName(%q) accepts a name Nix rejects", name)
			}
		default:
			t.Fatalf("bad line %q", l)
		}
	}
	if ok == 0 || bad == 0 {
		t.Errorf("%d accepted and %d rejected names, want both", ok, bad)
	}
}

// TestNixPlaceholder compares HashPlaceholder with builtins.placeholder.
func TestNixPlaceholder(t *testing.T) {
	for _, l := range fixtureLines(t, "placeholder.txt") {
		if len(l) != 2 {
			t.Fatalf("bad line %q", l)
		}
		if got := storepath.HashPlaceholder(l[0]); got != l[1] {
			t.Errorf("HashPlaceholder(%s) = %s, Nix %s", l[0], got, l[1])
		}
	}
}
