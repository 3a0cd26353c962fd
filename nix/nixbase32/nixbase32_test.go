package nixbase32

import (
	"bytes"
	"encoding/hex"
	"testing"
)

func TestVectors(t *testing.T) {
	tests := []struct{ hex, nix32 string }{
		{"", ""},
		{"00", "00"},
		{"ff", "7z"},
		{"7daba60473c6b92b848d53c87815d4b7fe5c6f8a", "i9pmrzmpshapij2kin22pff6fc2adavx"},
		{"1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13", "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"},
	}
	for _, tt := range tests {
		t.Run(tt.nix32, func(t *testing.T) {
			raw, _ := hex.DecodeString(tt.hex)
			if got := EncodeToString(raw); got != tt.nix32 {
				t.Errorf("EncodeToString(%s) = %q, want %q", tt.hex, got, tt.nix32)
			}
			dec, err := DecodeString(tt.nix32)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(dec, raw) {
				t.Errorf("DecodeString(%q) = %x, want %s", tt.nix32, dec, tt.hex)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, s := range []string{"0e", "zz", "u0000000000000000000000000000000", "Z0"} {
		if _, err := DecodeString(s); err == nil {
			t.Errorf("DecodeString(%q) succeeded, want error", s)
		}
	}
}

func TestLengths(t *testing.T) {
	for n, want := range map[int]int{16: 26, 20: 32, 32: 52, 64: 103} {
		if got := EncodedLen(n); got != want {
			t.Errorf("EncodedLen(%d) = %d, want %d", n, got, want)
		}
		if got := DecodedLen(want); got != n {
			t.Errorf("DecodedLen(%d) = %d, want %d", want, got, n)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("i9pmrzmpshapij2kin22pff6fc2adavx")
	f.Add("04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw")
	f.Add("zz")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := DecodeString(s)
		if err != nil {
			return
		}
		if got := EncodeToString(b); got != s && EncodedLen(len(b)) == len(s) {
			t.Fatalf("round trip %q -> %x -> %q", s, b, got)
		}
	})
}
