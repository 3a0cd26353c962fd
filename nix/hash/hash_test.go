package hash

import (
	"encoding/hex"
	"testing"
)

func TestEncodings(t *testing.T) {
	h := SumString(SHA256, "hello\n")
	want := map[string]string{
		"base16": "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
		"nix32":  "sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
		"sri":    "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=",
	}
	got := map[string]string{
		"base16": h.Encode(Base16, true),
		"nix32":  h.Encode(Nix32, true),
		"sri":    h.SRI(),
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: got %q, want %q", k, got[k], w)
		}
		p, err := Parse(w)
		if err != nil {
			t.Fatalf("Parse(%q): %v", w, err)
		}
		if !p.Equal(h) {
			t.Errorf("Parse(%q) = %v, want %v", w, p, h)
		}
	}
	for _, bare := range []string{h.Hex(), h.Encode(Nix32, false), h.Encode(Base64, false)} {
		p, err := ParseAny(bare, SHA256)
		if err != nil || !p.Equal(h) {
			t.Errorf("ParseAny(%q) = %v, %v", bare, p, err)
		}
	}
	// Upper-case base16 is accepted.
	up := "sha256:5891B5B522D5DF086D0FF0B110FBD9D21BB4FC7163AF34D08286A2E846F6BE03"
	if p, err := Parse(up); err != nil || !p.Equal(h) {
		t.Errorf("Parse(%q) = %v, %v", up, p, err)
	}
}

func TestCompress(t *testing.T) {
	d, _ := hex.DecodeString("fe50c26088fb1e2ba70dc3de7815d4b7fe5c6f8a83fb6464fb3da70023809016")
	if got := hex.EncodeToString(Compress(d, 20)); got != "7daba60473c6b92b848d53c87815d4b7fe5c6f8a" {
		t.Errorf("Compress = %s", got)
	}
}

func TestParseErrors(t *testing.T) {
	for _, s := range []string{
		"", "sha256:", "sha257:00", "sha256:zz", "md5:" + "0123", "sha256-abc",
		"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03", // no algorithm
		"sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4at",      // t is not nix32
	} {
		if h, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) = %v, want error", s, h)
		}
	}
	if _, err := ParseAny("md5:4425hx5d1mc9y39llj4k4nm55i", SHA256); err == nil {
		t.Error("ParseAny with mismatched algorithm succeeded")
	}
}

func TestAllAlgorithms(t *testing.T) {
	for _, a := range []Algorithm{MD5, SHA1, SHA256, SHA512} {
		h := SumString(a, "abc")
		for _, enc := range []Encoding{Base16, Nix32, Base64} {
			s := h.Encode(enc, true)
			p, err := Parse(s)
			if err != nil || !p.Equal(h) {
				t.Errorf("%v %v: Parse(%q) = %v, %v", a, enc, s, p, err)
			}
		}
		if p, err := Parse(h.SRI()); err != nil || !p.Equal(h) {
			t.Errorf("%v: Parse(%q) = %v, %v", a, h.SRI(), p, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq")
	f.Add("sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=")
	f.Add("md5:4425hx5d1mc9y39llj4k4nm55i")
	f.Add("sha1:7daba60473c6b92b848d53c87815d4b7fe5c6f8a")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := Parse(s)
		if err != nil {
			return
		}
		for _, enc := range []Encoding{Base16, Nix32, Base64, SRI} {
			p, err := Parse(h.Encode(enc, true))
			if err != nil || !p.Equal(h) {
				t.Fatalf("%q: re-parse of %v form failed: %v", s, enc, err)
			}
		}
	})
}
