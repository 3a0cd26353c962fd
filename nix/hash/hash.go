// Package hash holds the hash algorithms Nix uses (md5, sha1, sha256,
// sha512) and every text form Nix reads and prints them in: base16, nix32,
// base64 and SRI, with or without the "algo:" prefix
// (docs/store.md §1.1; src/libutil/hash.cc).
package hash

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	gohash "hash"
	"strings"

	"ferry/nix/nixbase32"
)

// Algorithm is a hash algorithm Nix knows.
type Algorithm uint8

// The algorithms, with their digest sizes.
const (
	MD5    Algorithm = iota + 1 // 16 bytes
	SHA1                        // 20 bytes
	SHA256                      // 32 bytes
	SHA512                      // 64 bytes
)

// ErrInvalid is wrapped by every parse error.
var ErrInvalid = errors.New("invalid hash")

// ParseAlgorithm parses "md5", "sha1", "sha256" or "sha512".
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case "md5":
		return MD5, nil
	case "sha1":
		return SHA1, nil
	case "sha256":
		return SHA256, nil
	case "sha512":
		return SHA512, nil
	}
	return 0, fmt.Errorf("%w: unknown hash algorithm %q", ErrInvalid, s)
}

// String returns the algorithm's name as Nix prints it.
func (a Algorithm) String() string {
	switch a {
	case MD5:
		return "md5"
	case SHA1:
		return "sha1"
	case SHA256:
		return "sha256"
	case SHA512:
		return "sha512"
	}
	return fmt.Sprintf("Algorithm(%d)", uint8(a))
}

// Size returns the digest size in bytes, or 0 for an unknown algorithm.
func (a Algorithm) Size() int {
	switch a {
	case MD5:
		return md5.Size
	case SHA1:
		return sha1.Size
	case SHA256:
		return sha256.Size
	case SHA512:
		return sha512.Size
	}
	return 0
}

// New returns a running hash for the algorithm.
func (a Algorithm) New() gohash.Hash {
	switch a {
	case MD5:
		return md5.New()
	case SHA1:
		return sha1.New()
	case SHA256:
		return sha256.New()
	case SHA512:
		return sha512.New()
	}
	panic("hash: unknown algorithm " + a.String())
}

// Encoding is a text form of a digest.
type Encoding uint8

// The encodings. SRI always carries the algorithm as "algo-".
const (
	Base16 Encoding = iota
	Nix32
	Base64
	SRI
)

// Hash is a digest together with its algorithm. The zero Hash is invalid.
// Hash is a comparable value type.
type Hash struct {
	algo   Algorithm
	digest [64]byte
}

// New makes a Hash from a digest, which must be a.Size() bytes long.
func New(a Algorithm, digest []byte) (Hash, error) {
	if a.Size() == 0 {
		return Hash{}, fmt.Errorf("%w: unknown hash algorithm %v", ErrInvalid, a)
	}
	if len(digest) != a.Size() {
		return Hash{}, fmt.Errorf("%w: %v digest of %d bytes, want %d", ErrInvalid, a, len(digest), a.Size())
	}
	h := Hash{algo: a}
	copy(h.digest[:], digest)
	return h, nil
}

// FromHasher returns the current digest of h as a Hash of algorithm a.
func FromHasher(a Algorithm, h gohash.Hash) Hash {
	x := Hash{algo: a}
	h.Sum(x.digest[:0])
	return x
}

// Sum returns the hash of data.
func Sum(a Algorithm, data []byte) Hash {
	h := a.New()
	h.Write(data)
	return FromHasher(a, h)
}

// SumString returns the hash of s.
func SumString(a Algorithm, s string) Hash { return Sum(a, []byte(s)) }

// Algorithm returns the hash's algorithm.
func (h Hash) Algorithm() Algorithm { return h.algo }

// Bytes returns a copy of the digest.
func (h Hash) Bytes() []byte { return append([]byte(nil), h.digest[:h.algo.Size()]...) }

// IsZero reports whether h is the zero Hash.
func (h Hash) IsZero() bool { return h.algo == 0 }

// Encode returns the digest in enc. With prefix, base16, nix32 and base64
// get "algo:" in front; SRI always has "algo-".
func (h Hash) Encode(enc Encoding, prefix bool) string {
	d := h.digest[:h.algo.Size()]
	var s string
	switch enc {
	case Base16:
		s = hex.EncodeToString(d)
	case Nix32:
		s = nixbase32.EncodeToString(d)
	case Base64:
		s = base64.StdEncoding.EncodeToString(d)
	case SRI:
		return h.algo.String() + "-" + base64.StdEncoding.EncodeToString(d)
	}
	if prefix {
		return h.algo.String() + ":" + s
	}
	return s
}

// String returns the hash as "algo:nix32", the form store paths and the
// "ca" column use.
func (h Hash) String() string { return h.Encode(Nix32, true) }

// Hex returns the bare base16 digest.
func (h Hash) Hex() string { return h.Encode(Base16, false) }

// SRI returns "algo-base64".
func (h Hash) SRI() string { return h.Encode(SRI, false) }

// Parse parses every form Nix's Hash::parseAny accepts: "algo:digest" and
// SRI "algo-base64"; the digest encoding is told apart by its length.
func Parse(s string) (Hash, error) {
	return parse(s, 0)
}

// ParseAny is Parse, but also accepts a bare digest of algorithm def
// (Nix's Hash::parseAny with a default type). A prefix, if present, must
// name def.
func ParseAny(s string, def Algorithm) (Hash, error) {
	return parse(s, def)
}

// ParseNonSRIUnprefixed parses a bare digest of algorithm a, in any encoding.
func ParseNonSRIUnprefixed(s string, a Algorithm) (Hash, error) {
	return decodeDigest(s, a, false)
}

func parse(s string, def Algorithm) (Hash, error) {
	if name, rest, ok := strings.Cut(s, ":"); ok {
		a, err := ParseAlgorithm(name)
		if err != nil {
			return Hash{}, fmt.Errorf("parse hash %q: %w", s, err)
		}
		if def != 0 && a != def {
			return Hash{}, fmt.Errorf("parse hash %q: %w: algorithm %v, want %v", s, ErrInvalid, a, def)
		}
		return decodeDigest(rest, a, false)
	}
	if name, rest, ok := strings.Cut(s, "-"); ok {
		if a, err := ParseAlgorithm(name); err == nil {
			if def != 0 && a != def {
				return Hash{}, fmt.Errorf("parse hash %q: %w: algorithm %v, want %v", s, ErrInvalid, a, def)
			}
			return decodeDigest(rest, a, true)
		}
	}
	if def == 0 {
		return Hash{}, fmt.Errorf("parse hash %q: %w: no algorithm given", s, ErrInvalid)
	}
	return decodeDigest(s, def, false)
}

func decodeDigest(s string, a Algorithm, sri bool) (Hash, error) {
	size := a.Size()
	var d []byte
	var err error
	switch {
	case sri:
		d, err = decodeBase64(s, size)
	case len(s) == 2*size:
		d, err = hex.DecodeString(s)
	case len(s) == nixbase32.EncodedLen(size):
		d = make([]byte, size)
		err = nixbase32.Decode(d, []byte(s))
	case len(s) == base64.StdEncoding.EncodedLen(size):
		d, err = decodeBase64(s, size)
	default:
		return Hash{}, fmt.Errorf("parse hash %q: %w: wrong length %d for a %v digest", s, ErrInvalid, len(s), a)
	}
	if err != nil {
		return Hash{}, fmt.Errorf("parse hash %q: %w: %v", s, ErrInvalid, err)
	}
	return New(a, d)
}

func decodeBase64(s string, size int) ([]byte, error) {
	if len(s) != base64.StdEncoding.EncodedLen(size) {
		return nil, fmt.Errorf("wrong base64 length %d", len(s))
	}
	d, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, err
	}
	if len(d) != size {
		return nil, fmt.Errorf("base64 decodes to %d bytes, want %d", len(d), size)
	}
	return d, nil
}

// Compress XOR-folds h's digest into n bytes (Nix's compressHash).
func Compress(digest []byte, n int) []byte {
	out := make([]byte, n)
	for i, b := range digest {
		out[i%n] ^= b
	}
	return out
}

// Equal reports whether two hashes are the same algorithm and digest.
func (h Hash) Equal(o Hash) bool {
	return h.algo == o.algo && bytes.Equal(h.digest[:], o.digest[:])
}
