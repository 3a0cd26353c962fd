// Package signature implements Nix's store-path signatures: ed25519 keys
// in Nix's "name:base64" text form, detached signatures "name:base64sig",
// and the fingerprint of a store path that such a signature covers.
//
// It follows Nix 2.8.0: src/libstore/crypto.cc (Key, SecretKey, PublicKey,
// verifyDetached, getDefaultPublicKeys), src/libstore/store-api.cc
// (ValidPathInfo::fingerprint, sign, isContentAddressed, checkSignatures,
// checkSignature) and src/libutil/util.cc (base64Encode, base64Decode).
// Nix does the cryptography with libsodium (crypto_sign_detached,
// crypto_sign_verify_detached); signing with crypto/ed25519 gives the same
// bytes, since ed25519 signatures are deterministic, and verification adds
// the checks libsodium makes beyond RFC 8032 (see PublicKeys.VerifyDetached).
//
// Keys are as `nix-store --generate-binary-cache-key NAME SECRET PUBLIC`
// writes them: the secret key is the name, a colon and the base64 of the
// 64-byte ed25519 private key (seed then public key, libsodium's and
// crypto/ed25519's layout alike); the public key is the name, a colon and
// the base64 of the 32-byte public key.
package signature

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"ferry/nix/nixbase64"
	"fmt"
	"io"
	"sort"
	"strings"
)

// ErrInvalid is wrapped by every error parsing a key or a signature.
var ErrInvalid = errors.New("invalid")

// split is crypto.cc's split: the text before the first colon and the text
// after it, or two empty strings when there is no colon or it comes first.
func split(s string) (name, rest string) {
	i := strings.IndexByte(s, ':')
	if i <= 0 {
		return "", ""
	}
	return s[:i], s[i+1:]
}

// decodeBase64 is Nix's base64Decode, with the offending character.
func decodeBase64(s string) ([]byte, *nixbase64.CharError) {
	b, err := nixbase64.Decode(s)
	if err != nil {
		var ce *nixbase64.CharError
		errors.As(err, &ce)
		return nil, ce
	}
	return b, nil
}

// SecretKey is a named ed25519 private key, as a secret-key-files entry or
// `nix store sign -k FILE` reads it (crypto.cc SecretKey). Its String
// method hides the key; Encode gives the file form.
type SecretKey struct {
	name string
	key  ed25519.PrivateKey
}

// PublicKey is a named ed25519 public key, a trusted-public-keys entry
// (crypto.cc PublicKey).
type PublicKey struct {
	name string
	key  ed25519.PublicKey
}

// parseKey is crypto.cc's Key constructor followed by the size check of
// SecretKey or PublicKey. what is "secret" or "public"; a secret key's
// text never appears in an error, only its name.
func parseKey(s, what string, size int) (name string, key []byte, err error) {
	quoted := fmt.Sprintf("%q", s)
	if what == "secret" {
		quoted = "(not shown)"
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("parse %s key %s: %w key: %s", what, quoted, ErrInvalid, fmt.Sprintf(format, args...))
	}
	i := strings.IndexByte(s, ':')
	switch {
	case s == "":
		return "", nil, fail("empty, want NAME:BASE64")
	case i < 0:
		return "", nil, fail("no ':' between the key's name and the key, want NAME:BASE64")
	case i == 0:
		return "", nil, fail("empty key name before ':'")
	case i == len(s)-1:
		return "", nil, fail("key %q has nothing after ':'", s[:i])
	}
	name = s[:i]
	if what == "secret" {
		quoted = fmt.Sprintf("%q", name)
	}
	key, b64err := decodeBase64(s[i+1:])
	if b64err != nil {
		if what == "secret" {
			return "", nil, fail("invalid character in Base64 string at offset %d", b64err.Offset)
		}
		return "", nil, fail("invalid character in Base64 string: %q", b64err.Char)
	}
	if len(key) != size {
		return "", nil, fail("%s key is not valid: %d bytes, want %d (ed25519)", what, len(key), size)
	}
	return name, key, nil
}

// ParseSecretKey parses a secret key, "name:base64" of the 64-byte ed25519
// private key (Nix 2.8.0 src/libstore/crypto.cc, SecretKey::SecretKey). As
// Nix does, it splits at the first colon, decodes with Nix's lenient
// base64 (so the newline ending a key file is ignored), and checks only
// the size: a key whose public half doesn't match its seed parses, and its
// signatures won't verify. Errors name the key by its name, never showing
// the key itself.
func ParseSecretKey(s string) (SecretKey, error) {
	name, key, err := parseKey(s, "secret", ed25519.PrivateKeySize)
	if err != nil {
		return SecretKey{}, err
	}
	return SecretKey{name: name, key: key}, nil
}

// ParsePublicKey parses a public key, "name:base64" of the 32-byte ed25519
// public key (Nix 2.8.0 src/libstore/crypto.cc, PublicKey::PublicKey).
func ParsePublicKey(s string) (PublicKey, error) {
	name, key, err := parseKey(s, "public", ed25519.PublicKeySize)
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{name: name, key: key}, nil
}

// validName rejects names that would not parse back: Nix's
// SecretKey::generate takes any name, but an empty one or one with a colon
// gives a key that Key's constructor rejects or reads under another name.
func validName(name string) error {
	if name == "" {
		return fmt.Errorf("%w key name: empty", ErrInvalid)
	}
	if strings.ContainsRune(name, ':') {
		return fmt.Errorf("%w key name %q: contains ':'", ErrInvalid, name)
	}
	return nil
}

// GenerateSecretKey makes a new key pair named name from rand
// (crypto/rand when nil), as `nix-store --generate-binary-cache-key` does
// (Nix 2.8.0 src/libstore/crypto.cc, SecretKey::generate). Unlike Nix it
// refuses a name that is empty or contains ':', which would not parse back.
func GenerateSecretKey(name string, random io.Reader) (SecretKey, error) {
	if err := validName(name); err != nil {
		return SecretKey{}, fmt.Errorf("generate key: %w", err)
	}
	if random == nil {
		random = rand.Reader
	}
	_, sk, err := ed25519.GenerateKey(random)
	if err != nil {
		return SecretKey{}, fmt.Errorf("generate key %q: %w", name, err)
	}
	return SecretKey{name: name, key: sk}, nil
}

// NewSecretKey makes a SecretKey from a name and a 64-byte ed25519 private
// key.
func NewSecretKey(name string, key ed25519.PrivateKey) (SecretKey, error) {
	if err := validName(name); err != nil {
		return SecretKey{}, err
	}
	if len(key) != ed25519.PrivateKeySize {
		return SecretKey{}, fmt.Errorf("%w secret key %q: %d bytes, want %d", ErrInvalid, name, len(key), ed25519.PrivateKeySize)
	}
	return SecretKey{name: name, key: append(ed25519.PrivateKey(nil), key...)}, nil
}

// NewPublicKey makes a PublicKey from a name and a 32-byte ed25519 public
// key.
func NewPublicKey(name string, key ed25519.PublicKey) (PublicKey, error) {
	if err := validName(name); err != nil {
		return PublicKey{}, err
	}
	if len(key) != ed25519.PublicKeySize {
		return PublicKey{}, fmt.Errorf("%w public key %q: %d bytes, want %d", ErrInvalid, name, len(key), ed25519.PublicKeySize)
	}
	return PublicKey{name: name, key: append(ed25519.PublicKey(nil), key...)}, nil
}

// Name is the key's name, e.g. "cache.example.org-1".
func (k SecretKey) Name() string { return k.name }

// Encode returns the key in Nix's text form, "name:base64" with padding,
// as the secret key file holds it (crypto.cc Key::to_string).
func (k SecretKey) Encode() string {
	return k.name + ":" + base64.StdEncoding.EncodeToString(k.key)
}

// String names the key without showing it, so that printing a SecretKey
// by mistake leaks nothing.
func (k SecretKey) String() string { return k.name + ":(secret)" }

// PublicKey returns the public half (crypto.cc SecretKey::toPublicKey,
// which like crypto/ed25519 takes the last 32 bytes of the private key).
func (k SecretKey) PublicKey() PublicKey {
	if len(k.key) != ed25519.PrivateKeySize {
		return PublicKey{name: k.name}
	}
	return PublicKey{name: k.name, key: append(ed25519.PublicKey(nil), k.key[32:]...)}
}

// Sign returns the detached signature of data, "name:base64sig"
// (Nix 2.8.0 src/libstore/crypto.cc, SecretKey::signDetached).
func (k SecretKey) Sign(data string) string {
	if len(k.key) != ed25519.PrivateKeySize {
		panic("signature: Sign with a zero SecretKey")
	}
	return k.name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.key, []byte(data)))
}

// Name is the key's name.
func (k PublicKey) Name() string { return k.name }

// Bytes returns a copy of the 32-byte ed25519 public key.
func (k PublicKey) Bytes() ed25519.PublicKey { return append(ed25519.PublicKey(nil), k.key...) }

// String returns the key in Nix's text form, "name:base64" (crypto.cc
// Key::to_string), as trusted-public-keys lists it.
func (k PublicKey) String() string {
	return k.name + ":" + base64.StdEncoding.EncodeToString(k.key)
}

// Equal reports whether k and o have the same name and key.
func (k PublicKey) Equal(o PublicKey) bool {
	return k.name == o.name && k.key.Equal(o.key)
}

// Signature is a parsed detached signature.
type Signature struct {
	// KeyName names the key that made it.
	KeyName string
	// Sig is the 64-byte ed25519 signature.
	Sig []byte
}

// ParseSignature parses "name:base64sig" the way verifyDetached (Nix 2.8.0
// src/libstore/crypto.cc) reads a signature by a known key: split at the
// first colon, Nix's lenient base64, exactly 64 bytes. (verifyDetached
// itself ignores, without decoding, a signature whose name is no trusted
// key's.)
func ParseSignature(s string) (Signature, error) {
	name, b64 := split(s)
	if name == "" {
		if strings.HasPrefix(s, ":") {
			return Signature{}, fmt.Errorf("parse signature %q: %w signature: empty key name before ':'", s, ErrInvalid)
		}
		return Signature{}, fmt.Errorf("parse signature %q: %w signature: no ':' between the key's name and the signature, want NAME:BASE64", s, ErrInvalid)
	}
	sig, err := decodeSig(b64)
	if err != nil {
		return Signature{}, fmt.Errorf("parse signature %q: %w", s, err)
	}
	return Signature{KeyName: name, Sig: sig}, nil
}

// decodeSig is the decoding half of verifyDetached, with its errors.
func decodeSig(b64 string) ([]byte, error) {
	sig, b64err := decodeBase64(b64)
	if b64err != nil {
		return nil, fmt.Errorf("%w signature: invalid character in Base64 string: %q", ErrInvalid, b64err.Char)
	}
	if len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w signature: signature is not valid: %d bytes, want %d (ed25519)", ErrInvalid, len(sig), ed25519.SignatureSize)
	}
	return sig, nil
}

// String returns the signature in Nix's text form, "name:base64sig".
func (s Signature) String() string {
	return s.KeyName + ":" + base64.StdEncoding.EncodeToString(s.Sig)
}

// PublicKeys are the keys signatures are checked against, by name (Nix's
// PublicKeys, a std::map from name to key).
type PublicKeys map[string]PublicKey

// Add adds k unless a key of that name is there already, reporting
// whether it did: the first key of a name wins, as with the
// publicKeys.emplace of getDefaultPublicKeys (Nix 2.8.0
// src/libstore/crypto.cc).
func (ks PublicKeys) Add(k PublicKey) bool {
	if _, ok := ks[k.name]; ok {
		return false
	}
	ks[k.name] = k
	return true
}

// ParsePublicKeys parses a trusted-public-keys list (the first key of a
// name wins, as in getDefaultPublicKeys). The error names the bad key.
func ParsePublicKeys(keys []string) (PublicKeys, error) {
	ks := make(PublicKeys, len(keys))
	for _, s := range keys {
		k, err := ParsePublicKey(s)
		if err != nil {
			return nil, err
		}
		ks.Add(k)
	}
	return ks, nil
}

// VerifyDetached reports whether sig, "name:base64sig", is a valid
// signature of data by the key of that name (Nix 2.8.0
// src/libstore/crypto.cc, verifyDetached). A signature without a name, or
// whose name is no key in ks, is not verified and is no error. One that
// names a key but does not decode (bad base64, not 64 bytes) is not
// verified and is an error: Nix 2.8 throws there ("invalid character in
// Base64 string", "signature is not valid"), failing the whole check.
//
// Verification is libsodium's crypto_sign_verify_detached (1.0.18, which
// Nix 2.8 calls): crypto/ed25519's RFC 8032 check, plus rejecting a public
// key or signature R that encodes a point of small order, and a
// non-canonical public key, as libsodium does; crypto/ed25519 alone would
// accept, for instance, any message under the identity key with R the
// identity and S zero.
func (ks PublicKeys) VerifyDetached(data, sig string) (bool, error) {
	name, b64 := split(sig)
	k, ok := ks[name]
	if name == "" || !ok {
		return false, nil
	}
	raw, err := decodeSig(b64)
	if err != nil {
		return false, fmt.Errorf("verify signature %q: %w", sig, err)
	}
	return k.verify(data, raw), nil
}

// verify is crypto_sign_verify_detached.
func (k PublicKey) verify(data string, sig []byte) bool {
	if len(k.key) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
		return false
	}
	if hasSmallOrder(sig[:32]) || !isCanonical(k.key) || hasSmallOrder(k.key) {
		return false
	}
	return ed25519.Verify(k.key, []byte(data), sig)
}

// smallOrder lists, little-endian, the y coordinates libsodium 1.0.18's
// ge25519_has_small_order blocks: 0, 1, the two order-8 points' y, p-1,
// and p and p+1 (non-canonical 0 and 1), p being 2^255-19.
var smallOrder = [7][32]byte{
	{},
	{0x01},
	{0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0,
		0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05},
	{0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f,
		0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a},
	pMinus(1),
	pMinus(0),
	pPlus1(),
}

// pMinus returns p-n, little-endian, for small n.
func pMinus(n byte) (b [32]byte) {
	for i := range b {
		b[i] = 0xff
	}
	b[0] = 0xed - n
	b[31] = 0x7f
	return b
}

func pPlus1() [32]byte {
	b := pMinus(0)
	b[0] = 0xee
	return b
}

// hasSmallOrder is ge25519_has_small_order: whether the encoding's y
// (sign bit ignored) is one of smallOrder's.
func hasSmallOrder(s []byte) bool {
	for _, bad := range smallOrder {
		same := true
		for j := 0; j < 31 && same; j++ {
			same = s[j] == bad[j]
		}
		if same && s[31]&0x7f == bad[31] {
			return true
		}
	}
	return false
}

// isCanonical is ge25519_is_canonical: whether the encoding's y (sign bit
// ignored) is below p.
func isCanonical(s []byte) bool {
	if s[31]&0x7f != 0x7f || s[0] < 0xed {
		return true
	}
	for _, c := range s[1:31] {
		if c != 0xff {
			return true
		}
	}
	return false
}

// CheckSignatures counts the signatures in sigs that are valid signatures
// of data by keys in ks; duplicates count once, since Nix keeps a path's
// signatures in a set (ValidPathInfo::checkSignatures, Nix 2.8.0
// src/libstore/store-api.cc, without its content-address shortcut: see
// IsContentAddressed). The error is the first, in Nix's sorted order, of
// VerifyDetached's: the count then still counts the other signatures, for
// a caller that takes an undecodable signature as merely unverified, while
// a caller doing what Nix 2.8 does fails on the error.
func (ks PublicKeys) CheckSignatures(data string, sigs []string) (int, error) {
	sorted := append([]string(nil), sigs...)
	sort.Strings(sorted)
	good := 0
	var first error
	for i, s := range sorted {
		if i > 0 && s == sorted[i-1] {
			continue
		}
		ok, err := ks.VerifyDetached(data, s)
		if err != nil && first == nil {
			first = err
		}
		if ok {
			good++
		}
	}
	return good, first
}
