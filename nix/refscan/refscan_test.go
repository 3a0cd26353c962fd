package refscan

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ferry/internal/nixtest"
	"ferry/nix/nixbase32"
)

const (
	h1 = "94f9f1ql1x2a6a7v6bx5b7qzy4k5c7v9"
	h2 = "zzzqczjzb6jqk6y0l9vl5w0p6p1y4r8s"
)

var h3 = h1[16:] + h2[:16] // overlaps the end of h1 and the start of h2

// naive checks every offset, which is what Nix's search amounts to.
func naive(data []byte, cands []string) []string {
	set := map[string]bool{}
	for _, c := range cands {
		set[c] = true
	}
	var out []string
	for i := 0; i+HashLen <= len(data); i++ {
		w := string(data[i : i+HashLen])
		if set[w] {
			out = append(out, w)
			delete(set, w)
		}
	}
	slices.Sort(out)
	return out
}

func scanChunks(cands []string, chunks ...[]byte) []string {
	s := NewScanner(cands)
	for _, c := range chunks {
		s.Write(c)
	}
	return s.Found()
}

func TestScan(t *testing.T) {
	cands := []string{h1, h2, h3}
	tests := []struct {
		name string
		data string
		want []string
	}{
		{"in store path", "/nix/store/" + h1 + "-foo\n", []string{h1}},
		{"embedded anywhere", "abc" + h1 + "xyz", []string{h1}},
		// The case from docs/store.md §7.2: two hashes inside one long run.
		{"adjacent in a run", "abc" + h1 + "xyz" + h2 + "abc", []string{h1, h2}},
		{"overlapping candidates", h1 + h2[:16], []string{h1, h3}},
		{"all three", h1 + "xy" + h2 + " " + h3, []string{h1, h2, h3}},
		{"at start and end", h1 + h2, []string{h1, h2, h3}},
		{"empty", "", nil},
		{"31 chars", h1[:31], nil},
		{"interrupted by e", h1[:10] + "e" + h1[10:], nil},
		{"interrupted by slash", h1[:16] + "/" + h1[16:], nil},
		{"uppercase", strings.ToUpper(h1), nil},
		{"one char changed", h1[:31] + "0", nil},
		{"twice", h1 + "\x00" + h1, []string{h1}},
		{"binary around", "\xff\x00" + h2 + "\x01\x02", []string{h2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := []byte(tt.data)
			slices.Sort(tt.want)
			if got := scanChunks(cands, data); !slices.Equal(got, tt.want) {
				t.Errorf("one write: got %q, want %q", got, tt.want)
			}
			if got := naive(data, cands); !slices.Equal(got, tt.want) {
				t.Fatalf("test case wrong: naive gives %q", got)
			}
			// Every single split point, and 1-byte writes.
			for i := 0; i <= len(data); i++ {
				if got := scanChunks(cands, data[:i], data[i:]); !slices.Equal(got, tt.want) {
					t.Errorf("split at %d: got %q, want %q", i, got, tt.want)
				}
			}
			var ones [][]byte
			for i := range data {
				ones = append(ones, data[i:i+1])
			}
			if got := scanChunks(cands, ones...); !slices.Equal(got, tt.want) {
				t.Errorf("1-byte writes: got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestInvalidCandidatesIgnored(t *testing.T) {
	s := NewScanner([]string{"short", strings.Repeat("e", 32), strings.Repeat("A", 32), h1})
	s.Write([]byte("short " + strings.Repeat("e", 32) + strings.Repeat("A", 32) + h1))
	if got := s.Found(); !slices.Equal(got, []string{h1}) {
		t.Fatalf("got %q", got)
	}
	if got := NewScanner(nil).Found(); len(got) != 0 {
		t.Fatalf("no candidates: %q", got)
	}
}

// Found may be called between writes; a match completed later still counts.
func TestFoundIncremental(t *testing.T) {
	s := NewScanner([]string{h1, h2})
	s.Write([]byte("x" + h1 + h2[:5]))
	if got := s.Found(); !slices.Equal(got, []string{h1}) {
		t.Fatalf("first: %q", got)
	}
	s.Write([]byte(h2[5:]))
	if got := s.Found(); !slices.Equal(got, []string{h1, h2}) {
		t.Fatalf("second: %q", got)
	}
}

// randomInput mixes nix32 runs, fragments of candidates and other bytes.
func randomInput(r *rand.Rand, cands []string, n int) []byte {
	var b []byte
	for len(b) < n {
		switch r.IntN(4) {
		case 0:
			c := cands[r.IntN(len(cands))]
			i, j := r.IntN(len(c)), r.IntN(len(c)+1)
			if r.IntN(2) == 0 {
				i, j = 0, len(c)
			}
			if i <= j {
				b = append(b, c[i:j]...)
			}
		case 1:
			for range r.IntN(40) {
				b = append(b, nixbase32.Alphabet[r.IntN(32)])
			}
		case 2:
			b = append(b, byte(r.IntN(256)))
		case 3:
			b = append(b, "/nix/store/"...)
		}
	}
	return b
}

func TestRandomAgainstNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cands := []string{h1, h2, h3}
	for range 200 {
		c := make([]byte, 32)
		for i := range c {
			c[i] = nixbase32.Alphabet[r.IntN(32)]
		}
		cands = append(cands, string(c))
	}
	for iter := range 300 {
		data := randomInput(r, cands[:3+r.IntN(10)], 50+r.IntN(500))
		want := naive(data, cands)
		s := NewScanner(cands)
		for rest := data; len(rest) > 0; {
			k := min(len(rest), 1+r.IntN(70))
			s.Write(rest[:k])
			rest = rest[k:]
		}
		if got := s.Found(); !slices.Equal(got, want) {
			t.Fatalf("iteration %d: got %q, want %q\ndata %q", iter, got, want, data)
		}
	}
}

// TestNixBuildReferences builds a derivation with real Nix whose output
// mentions one input's hash part in the middle of other nix32 text, split
// across two printf calls, and one input's store path in a symlink target,
// while a third input is not mentioned. Nix's registered references must
// equal what the scanner finds in the output's NAR.
func TestNixBuildReferences(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	expr := filepath.Join(dir, "test.nix")
	os.WriteFile(expr, []byte(`
let
  a = builtins.toFile "a" "a";
  b = builtins.toFile "b" "b";
  c = builtins.toFile "c" "c";
  h = p: builtins.substring 11 32 (builtins.unsafeDiscardStringContext p);
in derivation {
  name = "refs";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  inherit a b c;
  ha1 = builtins.substring 0 10 (h a);
  ha2 = builtins.substring 10 22 (h a);
  args = [ "-c" ''
    mkdir $out
    printf 'abc%s' "$ha1" > $out/f
    printf '%sxyz\n' "$ha2" >> $out/f
    ln -s $b/x $out/l
    echo $out > $out/self
  '' ];
}
`), 0o644)
	out := nixtest.Line(t, "nix-build", "--store", store, "--no-out-link", expr)
	refs := strings.Fields(nixtest.Line(t, "nix-store", "--store", store, "-q", "--references", out))
	inputs := strings.Fields(nixtest.Line(t, "nix-store", "--store", store, "-q", "--references",
		nixtest.Line(t, "nix-store", "--store", store, "-q", "--deriver", out)))
	if len(refs) != 3 {
		t.Fatalf("nix found references %q, expected a, b and self", refs)
	}

	var cands []string
	for _, p := range append(inputs, out) {
		cands = append(cands, filepath.Base(p)[:32])
	}
	cmd := exec.Command("nix-store", "--dump", filepath.Join(store, out))
	cmd.Env = nixtest.Env(dir)
	s := NewScanner(cands)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = s, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nix-store --dump: %v\n%s", err, stderr.Bytes())
	}
	var want []string
	for _, p := range refs {
		want = append(want, filepath.Base(p)[:32])
	}
	slices.Sort(want)
	if got := s.Found(); !slices.Equal(got, want) {
		t.Fatalf("scanner found %q, nix registered %q (candidates %q)", got, want, cands)
	}
}

func BenchmarkScan(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	var cands []string
	for range 500 {
		c := make([]byte, 32)
		for i := range c {
			c[i] = nixbase32.Alphabet[r.IntN(32)]
		}
		cands = append(cands, string(c))
	}
	inputs := map[string][]byte{
		"binary": func() []byte {
			b := make([]byte, 1<<20)
			for i := range b {
				b[i] = byte(r.IntN(256))
			}
			return b
		}(),
		"text": bytes.Repeat([]byte("the quick brown fox jumps over /nix/store/"+cands[7]+"-lazy dog\n"), 1<<20/80),
		"nix32": func() []byte {
			b := make([]byte, 1<<20)
			for i := range b {
				b[i] = nixbase32.Alphabet[r.IntN(32)]
			}
			return b
		}(),
	}
	for _, name := range []string{"binary", "text", "nix32"} {
		data := inputs[name]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				s := NewScanner(cands)
				for i := 0; i < len(data); i += 64 << 10 {
					s.Write(data[i:min(len(data), i+64<<10)])
				}
			}
		})
	}
}

func FuzzScanner(f *testing.F) {
	f.Add([]byte("abc"+h1+"xyz"+h2), uint8(5))
	f.Add([]byte(h1+h2), uint8(1))
	f.Add([]byte("/nix/store/"+h2+"-x"), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		cands := []string{h1, h2, h3}
		want := naive(data, cands)
		s := NewScanner(cands)
		st := int(step)%64 + 1
		for i := 0; i < len(data); i += st {
			s.Write(data[i:min(len(data), i+st)])
		}
		if got := s.Found(); !slices.Equal(got, want) {
			t.Fatalf("got %q, want %q", got, want)
		}
	})
}
