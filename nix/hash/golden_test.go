package hash

import (
	"ferry/internal/nixtest"
	"os"
	"path/filepath"
	"testing"
)

// The fixtures under testdata were recorded from Nix 2.8 by
// scripts/record-fixtures; see that script for the commands.

// readFixture reads a fixture of this package (nixtest.Fixture).
func readFixture(t *testing.T, name string) [][]string {
	return nixtest.Fixture(t, "hash", name, -1)
}

// TestNixHashFile compares every encoding of every algorithm with what
// `nix hash file --type ALGO --base16|--base32|--base64|--sri` printed for
// the files under testdata/input, and parses each printed form back.
func TestNixHashFile(t *testing.T) {
	seen := map[Algorithm]bool{}
	for _, l := range readFixture(t, "nix-hash.txt") {
		if len(l) != 6 {
			t.Fatalf("bad line %q", l)
		}
		file, algo, want := l[0], l[1], l[2:]
		t.Run(file+"/"+algo, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", "input", file))
			if err != nil {
				t.Fatal(err)
			}
			a, err := ParseAlgorithm(algo)
			if err != nil {
				t.Fatal(err)
			}
			seen[a] = true
			h := Sum(a, data)
			got := []string{h.Encode(Base16, false), h.Encode(Nix32, false), h.Encode(Base64, false), h.SRI()}
			names := []string{"base16", "base32", "base64", "sri"}
			for i := range want {
				if got[i] != want[i] {
					t.Errorf("%s: got %s, nix %s", names[i], got[i], want[i])
				}
			}
			for i, s := range want {
				if i < 3 {
					s = algo + ":" + s
				}
				p, err := Parse(s)
				if err != nil || !p.Equal(h) {
					t.Errorf("Parse(%q) = %v, %v; want %v", s, p, err, h)
				}
				if i < 3 {
					if p, err := ParseAny(want[i], a); err != nil || !p.Equal(h) {
						t.Errorf("ParseAny(%q, %v) = %v, %v", want[i], a, p, err)
					}
				}
			}
			if got := h.Encode(Base16, true); got != algo+":"+want[0] {
				t.Errorf("prefixed base16 = %s", got)
			}
		})
	}
	for _, a := range []Algorithm{MD5, SHA1, SHA256, SHA512} {
		if !seen[a] {
			t.Errorf("no fixture for %v", a)
		}
	}
}

// nixLenient lists strings Nix 2.8's base64 decoder accepts that ferry
// rejects: SRI digests with missing or extra '=' padding. ferry takes
// only canonically padded base64 (what every Nix version prints).
var nixLenient = map[string]bool{
	"sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM":   true,
	"md5-sZRqySSS0jR8YjW00mERhA":                           true,
	"sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM==": true,
}

// TestNixParse parses each string of testdata/parse-input.txt as
// `nix hash to-sri` did: Parse without a type, ParseAny with --type. The
// result must be the SRI Nix printed, or an error where Nix failed.
func TestNixParse(t *testing.T) {
	var accepted, rejected int
	for _, l := range readFixture(t, "parse.txt") {
		if len(l) != 3 {
			t.Fatalf("bad line %q", l)
		}
		typ, s, want := l[0], l[1], l[2]
		var h Hash
		var err error
		if typ == "-" {
			h, err = Parse(s)
		} else {
			a, aerr := ParseAlgorithm(typ)
			if aerr != nil {
				t.Fatal(aerr)
			}
			h, err = ParseAny(s, a)
		}
		switch {
		case nixLenient[s]:
			if want == "ERROR" {
				t.Errorf("%s %q: Nix 2.8 now rejects it; drop it from nixLenient", typ, s)
			}
			if err == nil {
				t.Errorf("%s %q: ferry accepts it now; drop it from nixLenient", typ, s)
			}
		case want == "ERROR":
			rejected++
			if err == nil {
				t.Errorf("%s %q: got %s, Nix rejects it", typ, s, h.SRI())
			}
		default:
			accepted++
			if err != nil {
				t.Errorf("%s %q: %v; Nix gives %s", typ, s, err, want)
			} else if h.SRI() != want {
				t.Errorf("%s %q: got %s, Nix gives %s", typ, s, h.SRI(), want)
			}
		}
	}
	if accepted == 0 || rejected == 0 {
		t.Errorf("%d accepted and %d rejected fixtures, want both", accepted, rejected)
	}
}
