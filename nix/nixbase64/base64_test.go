package nixbase64

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	for in, want := range map[string]string{
		"": "", "QQ": "A", "QUI": "AB", "QUJD": "ABC", "Q": "", "QUJD=QUJD": "ABC",
		"QU\nJD": "ABC", "QUJD\n": "ABC", "QQ==": "A", "QQ=!": "A",
	} {
		got, err := Decode(in)
		if err != nil || string(got) != want {
			t.Errorf("Decode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	_, err := Decode("QU!D")
	var ce *CharError
	if !errors.As(err, &ce) || ce.Char != '!' || ce.Offset != 2 || err.Error() != "invalid character in Base64 string: '!'" {
		t.Errorf("Decode(%q): %#v", "QU!D", err)
	}
	if _, err := Decode("QUJD\r\n"); err == nil {
		t.Errorf("a carriage return decoded; Nix refuses it")
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{"", "QQ", "QUI", "QUJD", "Q", "QUJD=x", "QU\nJD", "QU!D", "\r", strings.Repeat("A", 86)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Decode(s)
		var ce *CharError
		if err != nil && (!errors.As(err, &ce) || ce.Offset >= len(s) || s[ce.Offset] != ce.Char) {
			t.Fatalf("Decode(%q): %v", s, err)
		}
		// Where encoding/base64 reads the same text (alphabet only, no
		// lone trailing character), the two agree.
		if strings.ContainsAny(s, "=\n\r") || len(s)%4 == 1 {
			return
		}
		want, werr := base64.RawStdEncoding.DecodeString(s)
		if (err == nil) != (werr == nil) || (err == nil && !bytes.Equal(got, want)) {
			t.Fatalf("Decode(%q) = %x, %v; encoding/base64 %x, %v", s, got, err, want, werr)
		}
		if err == nil {
			// What decodes encodes back to a text that decodes the same.
			again, err := Decode(Encode(got))
			if err != nil || !bytes.Equal(again, got) {
				t.Fatalf("%q: round trip %x, %v", s, again, err)
			}
		}
	})
}
