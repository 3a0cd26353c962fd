package signature

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"math/big"
	"strings"
	"testing"

	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// A key pair made by `nix-store --generate-binary-cache-key test-1 sk pk`
// (Nix 2.8.0), and `nix store sign -k sk` signatures of two paths: f, a
// file added with nix-store --add, and x, builtins.toFile referring to f.
const (
	nixSecret = "test-1:21nP09mcly3pvnK5hYUuXnf3fZYF8qjzg9UZYpyOKXeoZf6gcSIZ3HdI5IxX6lYgHOahp5roo/51HQwPm0PHyw=="
	nixPublic = "test-1:qGX+oHEiGdx3SOSMV+pWIBzmoaea6KP+dR0MD5tDx8s="

	pathF    = storepath.Path("/nix/store/xp0dpr9yz5h0fk5c5lpj7zzqjbdh3w8c-f")
	narHashF = "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
	sigF     = "test-1:HYB50BhYwAf5L8ynlrivoKCMdEyKIeC54UYw3GQxfb63D77c0D8KxGPtvZM2VPfSFMyMVpqlFUc+kF8ylSJABA=="

	pathX    = storepath.Path("/nix/store/7scxiiv22nqr1iwnffr7n5gw1bilyvc0-x")
	narHashX = "sha256-ySgCaKjov8yA3H4De8sfJRIDbqymddovg2IQEuc3IUg="
	sigX     = "test-1:aS2LZNQZt78patBPNJ2wUVWeT1U0n6LKh0z5vRwG/qhyJoP2GtLruwmlyrh+fDJUXNe0nNF9rXpZztLSHA9SAQ=="
)

func mustHash(t testing.TB, s string) hash.Hash {
	t.Helper()
	h, err := hash.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func mustKeys(t testing.TB) (SecretKey, PublicKeys) {
	t.Helper()
	sk, err := ParseSecretKey(nixSecret)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := ParsePublicKeys([]string{nixPublic})
	if err != nil {
		t.Fatal(err)
	}
	return sk, ks
}

func TestNixVectors(t *testing.T) {
	sk, ks := mustKeys(t)
	if sk.Name() != "test-1" || sk.Encode() != nixSecret {
		t.Errorf("secret key round trip: %s %s", sk.Name(), sk.Encode())
	}
	if got := sk.PublicKey().String(); got != nixPublic {
		t.Errorf("public half %s, want %s", got, nixPublic)
	}
	if !sk.PublicKey().Equal(ks["test-1"]) {
		t.Error("public half differs from the parsed public key")
	}

	fp, err := Fingerprint(pathX, mustHash(t, narHashX), 160, []storepath.Path{pathF})
	if err != nil {
		t.Fatal(err)
	}
	wantFP := "1;" + string(pathX) + ";sha256:0j116zki4432hcpxlxd6mip064i53z5pn0vyvj0crgz8m1l04a69;160;" + string(pathF)
	if fp != wantFP {
		t.Errorf("fingerprint\n %s\nwant\n %s", fp, wantFP)
	}
	for _, c := range []struct {
		path    storepath.Path
		narHash string
		size    uint64
		refs    []storepath.Path
		sig     string
	}{
		{pathF, narHashF, 120, nil, sigF},
		{pathX, narHashX, 160, []storepath.Path{pathF}, sigX},
	} {
		h := mustHash(t, c.narHash)
		got, err := sk.SignPath(c.path, h, c.size, c.refs)
		if err != nil || got != c.sig {
			t.Errorf("sign %s: %s, %v; nix %s", c.path, got, err, c.sig)
		}
		if n, err := ks.VerifyPath(c.path, h, c.size, c.refs, []string{c.sig}); n != 1 || err != nil {
			t.Errorf("verify %s: %d, %v", c.path, n, err)
		}
		// Any change to what is signed breaks it.
		if n, err := ks.VerifyPath(c.path, h, c.size+1, c.refs, []string{c.sig}); n != 0 || err != nil {
			t.Errorf("verify %s with another size: %d, %v", c.path, n, err)
		}
		if n, _ := ks.VerifyPath(c.path, h, c.size, append(c.refs, c.path), []string{c.sig}); n != 0 {
			t.Errorf("verify %s with another reference: %d", c.path, n)
		}
	}
}

func TestParseKeyErrors(t *testing.T) {
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }
	for _, c := range []struct {
		in, public, secret string
	}{
		{"", "empty", "empty"},
		{"nocolon", "no ':'", "no ':'"},
		{":" + b64(32), "empty key name", "empty key name"},
		{"name:", `"name" has nothing after ':'`, `"name" has nothing after ':'`},
		{"name:" + b64(31), "public key is not valid: 31 bytes, want 32", "secret key is not valid: 31 bytes, want 64"},
		{"name:" + b64(64), "public key is not valid: 64 bytes, want 32", ""},
		{"name:" + b64(32), "", "secret key is not valid: 32 bytes, want 64"},
		{"name:abc!", `invalid character in Base64 string: '!'`, "invalid character in Base64 string at offset 3"},
		{"a:b:" + b64(32), `invalid character in Base64 string: ':'`, "offset 1"},
		{"name: " + b64(32), `invalid character in Base64 string: ' '`, "offset 0"},
		{"name:" + b64(32) + "\r\n", "", "want 64"},
	} {
		_, err := ParsePublicKey(c.in)
		check(t, "public "+c.in, err, c.public)
		_, err = ParseSecretKey(c.in)
		check(t, "secret "+c.in, err, c.secret)
	}
	// The secret key never shows in an error, its name does.
	secret := "mykey:" + strings.Repeat("A", 80) + "!"
	_, err := ParseSecretKey(secret)
	if err == nil || strings.Contains(err.Error(), "AAAA") || !strings.Contains(err.Error(), `"mykey"`) {
		t.Errorf("secret key error %v", err)
	}
}

func check(t *testing.T, what string, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrInvalid) {
		t.Errorf("%s: error %v, want one with %q wrapping ErrInvalid", what, err, want)
	}
}

// Nix's base64Decode stops at '=', skips newlines and drops a partial
// last byte, so padding is optional and a key file's newline harmless.
func TestLenientBase64(t *testing.T) {
	_, pub, _ := strings.Cut(nixPublic, ":")
	for _, s := range []string{
		nixPublic,
		nixPublic + "\n",
		"test-1:" + strings.TrimRight(pub, "="),
		nixPublic + "==junk!",
		"test-1:" + pub[:10] + "\n" + pub[10:],
	} {
		k, err := ParsePublicKey(s)
		if err != nil || k.String() != nixPublic {
			t.Errorf("%q: %v %v", s, k, err)
		}
	}
	if _, err := ParseSecretKey(nixSecret + "\n"); err != nil {
		t.Errorf("secret key file with newline: %v", err)
	}
}

func TestVerifyDetached(t *testing.T) {
	sk, ks := mustKeys(t)
	data := "some data"
	good := sk.Sign(data)
	_, sigB64, _ := strings.Cut(good, ":")
	other, _ := GenerateSecretKey("other-1", nil)
	for _, c := range []struct {
		sig  string
		ok   bool
		err  string
		desc string
	}{
		{good, true, "", "good"},
		{strings.TrimRight(good, "="), true, "", "no padding"},
		{good + "=junk", true, "", "junk after padding"},
		{other.Sign(data), false, "", "unknown key"},
		{"other-1:" + sigB64, false, "", "unknown key name, good signature"},
		{"nocolon", false, "", "no name"},
		{":" + sigB64, false, "", "empty name"},
		{"test-1:!!!!", false, "invalid character in Base64 string: '!'", "bad base64"},
		{"test-1:AAAA", false, "signature is not valid: 3 bytes, want 64", "short"},
		{"test-1:", false, "signature is not valid: 0 bytes", "empty"},
		{"test-1:" + base64.StdEncoding.EncodeToString(make([]byte, 64)), false, "", "zeros"},
		{sk.Sign(data + "x"), false, "", "other data"},
	} {
		ok, err := ks.VerifyDetached(data, c.sig)
		if ok != c.ok {
			t.Errorf("%s: %q verified %v", c.desc, c.sig, ok)
		}
		check(t, c.desc, err, c.err)
	}
	if ok, err := (PublicKeys{}).VerifyDetached(data, good); ok || err != nil {
		t.Errorf("no keys: %v %v", ok, err)
	}
}

func TestCheckSignatures(t *testing.T) {
	sk, ks := mustKeys(t)
	sk2, _ := GenerateSecretKey("second-1", nil)
	ks.Add(sk2.PublicKey())
	data := "1;x"
	s1, s2 := sk.Sign(data), sk2.Sign(data)
	n, err := ks.CheckSignatures(data, []string{s1, s1, s2, "unknown:AAAA", sk.Sign("other")})
	if n != 2 || err != nil {
		t.Errorf("got %d, %v; want 2 (duplicates once)", n, err)
	}
	// An undecodable signature by a known key: Nix 2.8 throws; the count
	// still counts the rest, and the error is the first in sorted order.
	n, err = ks.CheckSignatures(data, []string{"test-1:zz", s1, "second-1:!"})
	if n != 1 || err == nil || !strings.Contains(err.Error(), `"second-1:!"`) {
		t.Errorf("got %d, %v", n, err)
	}
	if n, err := ks.CheckSignatures(data, nil); n != 0 || err != nil {
		t.Errorf("none: %d %v", n, err)
	}
}

// The first key of a name wins, as getDefaultPublicKeys' emplace does.
func TestPublicKeysFirstWins(t *testing.T) {
	a, _ := GenerateSecretKey("k", nil)
	b, _ := GenerateSecretKey("k", nil)
	ks, err := ParsePublicKeys([]string{a.PublicKey().String(), b.PublicKey().String()})
	if err != nil || len(ks) != 1 || !ks["k"].Equal(a.PublicKey()) {
		t.Errorf("%v %v", ks, err)
	}
	if ks.Add(b.PublicKey()) {
		t.Error("Add replaced a key")
	}
	if _, err := ParsePublicKeys([]string{nixPublic, "bad"}); err == nil || !strings.Contains(err.Error(), `"bad"`) {
		t.Errorf("bad key: %v", err)
	}
}

func TestGenerate(t *testing.T) {
	seed := bytes.NewReader(bytes.Repeat([]byte{7}, 32))
	sk, err := GenerateSecretKey("cache.example.org-1", seed)
	if err != nil {
		t.Fatal(err)
	}
	want := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	if sk.Encode() != "cache.example.org-1:"+base64.StdEncoding.EncodeToString(want) {
		t.Errorf("generated %s", sk.Encode())
	}
	sk2, err := ParseSecretKey(sk.Encode())
	if err != nil || sk2.Encode() != sk.Encode() {
		t.Errorf("round trip: %v", err)
	}
	pk, err := ParsePublicKey(sk.PublicKey().String())
	if err != nil || !pk.Equal(sk.PublicKey()) || !bytes.Equal(pk.Bytes(), want.Public().(ed25519.PublicKey)) {
		t.Errorf("public round trip: %v", err)
	}
	if s := sk.String(); strings.Contains(s, base64.StdEncoding.EncodeToString(want)[:8]) || !strings.HasPrefix(s, "cache.example.org-1:") {
		t.Errorf("String shows the secret: %s", s)
	}
	for _, name := range []string{"", "a:b"} {
		if _, err := GenerateSecretKey(name, nil); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	if _, err := NewPublicKey("x", make([]byte, 31)); err == nil {
		t.Error("short public key accepted")
	}
	if k, err := NewSecretKey("x", want); err != nil || k.Encode() != "x:"+base64.StdEncoding.EncodeToString(want) {
		t.Errorf("NewSecretKey: %v", err)
	}
}

func TestParseSignature(t *testing.T) {
	s, err := ParseSignature(sigF)
	if err != nil || s.KeyName != "test-1" || len(s.Sig) != 64 || s.String() != sigF {
		t.Errorf("%v %v", s, err)
	}
	for in, want := range map[string]string{
		"":                             "no ':'",
		"x":                            "no ':'",
		":AAAA":                        "empty key name",
		"k:AAAA":                       "3 bytes, want 64",
		"k:AA AA":                      "invalid character in Base64 string: ' '",
		"k:" + strings.Repeat("A", 84): "63 bytes, want 64",
	} {
		_, err := ParseSignature(in)
		check(t, in, err, want)
	}
}

func TestFingerprint(t *testing.T) {
	h := mustHash(t, narHashF)
	a := storepath.Path("/nix/store/00000000000000000000000000000000-a")
	b := storepath.Path("/nix/store/11111111111111111111111111111111-b")
	fp, err := Fingerprint(pathF, h, 5, []storepath.Path{b, pathF, a, b})
	want := "1;" + string(pathF) + ";" + narHashF + ";5;" + string(a) + "," + string(b) + "," + string(pathF)
	if err != nil || fp != want {
		t.Errorf("got %s, %v\nwant %s", fp, err, want)
	}
	_, err = Fingerprint(pathF, h, 0, nil)
	if err == nil || err.Error() != "cannot calculate fingerprint of path '"+string(pathF)+"' because its size is not known" {
		t.Errorf("size 0: %v", err)
	}
	if _, err := Fingerprint(pathF, hash.Hash{}, 5, nil); err == nil || !strings.Contains(err.Error(), "NAR hash is not known") {
		t.Errorf("zero hash: %v", err)
	}
	// Nix 2.8 signs whatever algorithm the NAR hash has.
	h512 := hash.SumString(hash.SHA512, "x")
	if fp, err := Fingerprint(pathF, h512, 5, nil); err != nil || !strings.Contains(fp, ";sha512:"+h512.Encode(hash.Nix32, false)+";") {
		t.Errorf("sha512: %s %v", fp, err)
	}
	// checkSignatures computes the fingerprint only for a signature.
	_, ks := mustKeys(t)
	if n, err := ks.VerifyPath(pathF, h, 0, nil, nil); n != 0 || err != nil {
		t.Errorf("no signatures: %d %v", n, err)
	}
	if _, err := ks.VerifyPath(pathF, h, 0, nil, []string{"unknown:x"}); err == nil {
		t.Error("size 0 with a signature: no error")
	}
}

func TestIsContentAddressed(t *testing.T) {
	d := storepath.DefaultDir
	content := hash.SumString(hash.SHA256, "hello")
	ref := storepath.Path("/nix/store/00000000000000000000000000000000-a")
	text, _ := d.MakeText("t", content, []storepath.Path{ref})
	src, _ := d.MakeFixedOutput("s", storepath.Recursive, content, []storepath.Path{ref}, true)
	flat, _ := d.MakeFixedOutput("f", storepath.Flat, content, nil, false)
	textCA := storepath.ContentAddress{Method: storepath.Text, Hash: content}
	recCA := storepath.ContentAddress{Method: storepath.Recursive, Hash: content}
	flatCA := storepath.ContentAddress{Method: storepath.Flat, Hash: content}
	for _, c := range []struct {
		path storepath.Path
		ca   storepath.ContentAddress
		refs []storepath.Path
		want bool
	}{
		{text, textCA, []storepath.Path{ref}, true},
		{text, textCA, nil, false},
		{src, recCA, []storepath.Path{src, ref}, true},
		{src, recCA, []storepath.Path{ref}, false},
		{flat, flatCA, nil, true},
		{flat, flatCA, []storepath.Path{ref}, false},
		{flat, storepath.ContentAddress{}, nil, false},
		{text, recCA, []storepath.Path{ref}, false},
		{"", textCA, nil, false},
		{"/nix/store/short", textCA, nil, false},
	} {
		if got := IsContentAddressed(c.path, c.ca, c.refs); got != c.want {
			t.Errorf("IsContentAddressed(%s, %s, %v) = %v", c.path, c.ca, c.refs, got)
		}
	}
}

// crypto/ed25519 accepts any message under the identity key with R the
// identity and S zero; libsodium, and so Nix and ferry, reject it.
func TestSmallOrder(t *testing.T) {
	identity := make([]byte, 32)
	identity[0] = 1
	sig := append(append([]byte(nil), identity...), make([]byte, 32)...)
	if !ed25519.Verify(identity, []byte("anything"), sig) {
		t.Fatal("crypto/ed25519 rejects the identity forgery; the test is moot")
	}
	k, err := ParsePublicKey("evil:" + base64.StdEncoding.EncodeToString(identity))
	if err != nil {
		t.Fatal(err)
	}
	ks := PublicKeys{}
	ks.Add(k)
	if ok, err := ks.VerifyDetached("anything", "evil:"+base64.StdEncoding.EncodeToString(sig)); ok || err != nil {
		t.Errorf("identity forgery: %v %v", ok, err)
	}

	// The blocklist is what libsodium's says: each y is on the curve as
	// a point of order 1, 2, 4 or 8, or is p or p+1.
	p := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	d := new(big.Int).Mul(big.NewInt(-121665), new(big.Int).ModInverse(big.NewInt(121666), p))
	d.Mod(d, p)
	for i, enc := range smallOrder {
		be := make([]byte, 32)
		for j := range enc {
			be[31-j] = enc[j]
		}
		y := new(big.Int).SetBytes(be)
		if i >= 5 {
			if y.Cmp(p) < 0 {
				t.Errorf("entry %d is canonical", i)
			}
			y.Sub(y, p)
		}
		y2 := new(big.Int).Mul(y, y)
		y2.Mod(y2, p)
		switch {
		case y.Sign() == 0 || y.Cmp(big.NewInt(1)) == 0 || y.Cmp(new(big.Int).Sub(p, big.NewInt(1))) == 0:
		default:
			// Order 8 doubles to y = 0, i.e. x² = -y²: d·y⁴ + 2y² - 1 = 0.
			v := new(big.Int).Mul(d, new(big.Int).Mul(y2, y2))
			v.Add(v, new(big.Int).Lsh(y2, 1))
			v.Sub(v, big.NewInt(1))
			if v.Mod(v, p).Sign() != 0 {
				t.Errorf("entry %d is not of order 8", i)
			}
		}
	}
	if isCanonical(smallOrder[5][:]) || isCanonical(smallOrder[6][:]) || !isCanonical(smallOrder[4][:]) {
		t.Error("isCanonical wrong at p-1, p, p+1")
	}
	if !hasSmallOrder(append(append([]byte(nil), smallOrder[2][:31]...), smallOrder[2][31]|0x80)) {
		t.Error("sign bit not ignored")
	}
}
