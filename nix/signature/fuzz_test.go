package signature

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

func keySeeds(f *testing.F) {
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xa5}, n)) }
	for _, s := range []string{
		nixSecret, nixPublic, nixSecret + "\n", nixPublic + "\n",
		"", ":", "a:", ":a", "nocolon", "a:b:c",
		"k:" + b64(32), "k:" + b64(64), "k:" + b64(31), "k:" + b64(33),
		"k:" + strings.TrimRight(b64(32), "="), "k:" + b64(32) + "=junk", "k:!!",
		"k:" + b64(64)[:40] + "\n" + b64(64)[40:], "k:" + b64(32) + "\r\n",
		"lpaWlpaWlpaWlpaW:lpaWlpaWlpaWlpaW",
	} {
		f.Add(s)
	}
}

func FuzzParsePublicKey(f *testing.F) {
	keySeeds(f)
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParsePublicKey(s)
		if err != nil {
			return
		}
		if k.Name() == "" || strings.Contains(k.Name(), ":") || len(k.Bytes()) != 32 {
			t.Fatalf("%q parsed to %q %x", s, k.Name(), k.Bytes())
		}
		k2, err := ParsePublicKey(k.String())
		if err != nil || !k2.Equal(k) {
			t.Fatalf("%q: re-encoded %q does not parse back: %v", s, k.String(), err)
		}
		if _, b64, _ := strings.Cut(s, ":"); b64 == base64.StdEncoding.EncodeToString(k.Bytes()) && k.String() != s {
			t.Fatalf("canonical %q re-encodes as %q", s, k.String())
		}
	})
}

func FuzzParseSecretKey(f *testing.F) {
	keySeeds(f)
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseSecretKey(s)
		if err != nil {
			// The key itself never shows in an error.
			// The name is shown, so a name that holds the key's text
			// (as "lpaWlpaWlpaWlpaW:lpaWlpaWlpaWlpaW" does) is no leak.
			if name, b64, ok := strings.Cut(s, ":"); ok && len(b64) >= 16 && !strings.Contains(name, b64) && strings.Contains(err.Error(), b64) {
				t.Fatalf("error shows the key: %v", err)
			}
			return
		}
		if k.Name() == "" || strings.Contains(k.Name(), ":") {
			t.Fatalf("%q parsed to name %q", s, k.Name())
		}
		k2, err := ParseSecretKey(k.Encode())
		if err != nil || k2.Encode() != k.Encode() {
			t.Fatalf("%q: re-encoded does not parse back: %v", s, err)
		}
		// Signing and verifying never panic, whatever the key's halves.
		ks := PublicKeys{}
		ks.Add(k.PublicKey())
		ks.VerifyDetached("data", k.Sign("data"))
	})
}

func FuzzParseSignature(f *testing.F) {
	for _, s := range []string{
		sigF, sigX, strings.TrimRight(sigF, "="), sigF + "junk", sigF + "=junk",
		"", ":", "x", ":AAAA", "k:", "k:AAAA", "k:!!", "test-1:" + strings.Repeat("A", 86),
	} {
		f.Add(s)
	}
	_, ks := mustKeys(f)
	f.Fuzz(func(t *testing.T, s string) {
		ok, verr := ks.VerifyDetached("data", s)
		sig, err := ParseSignature(s)
		if err != nil {
			if ok {
				t.Fatalf("%q does not parse but verified", s)
			}
			if strings.HasPrefix(s, "test-1:") && verr == nil {
				t.Fatalf("%q names a known key and does not parse, but VerifyDetached gave no error", s)
			}
			return
		}
		if verr != nil {
			t.Fatalf("%q parses but VerifyDetached errs: %v", s, verr)
		}
		if sig.KeyName == "" || strings.Contains(sig.KeyName, ":") || len(sig.Sig) != 64 {
			t.Fatalf("%q parsed to %q %x", s, sig.KeyName, sig.Sig)
		}
		sig2, err := ParseSignature(sig.String())
		if err != nil || sig2.String() != sig.String() {
			t.Fatalf("%q: re-encoded %q does not parse back: %v", s, sig.String(), err)
		}
		if ok2, _ := ks.VerifyDetached("data", sig.String()); ok2 != ok {
			t.Fatalf("%q verified %v, re-encoded %v", s, ok, ok2)
		}
	})
}
