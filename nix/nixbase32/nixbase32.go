// Package nixbase32 implements Nix's base-32 encoding ("nix32"): the
// alphabet 0-9a-z without e, o, u and t, with the bytes read as a
// little-endian number and printed most significant digit first.
//
// It is the encoding of store-path hash parts and of the hashes Nix prints
// by default (docs/store.md §1.2; src/libutil/hash.cc printHash32).
package nixbase32

import (
	"errors"
	"fmt"
)

// Alphabet is the 32 characters of nix32, in digit order.
const Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

var decodeMap [256]byte

func init() {
	for i := range decodeMap {
		decodeMap[i] = 0xff
	}
	for i := 0; i < len(Alphabet); i++ {
		decodeMap[Alphabet[i]] = byte(i)
	}
}

// ErrInvalid is returned (wrapped) for input that is not nix32.
var ErrInvalid = errors.New("invalid base-32")

// EncodedLen returns the length of the encoding of n bytes.
func EncodedLen(n int) int {
	if n == 0 {
		return 0
	}
	return (n*8-1)/5 + 1
}

// DecodedLen returns the number of bytes that an encoding of n characters
// holds: the largest m with EncodedLen(m) == n.
func DecodedLen(n int) int { return n * 5 / 8 }

// Is reports whether c is a nix32 digit.
func Is(c byte) bool { return decodeMap[c] != 0xff }

// Encode writes the encoding of src to dst, which must have room for
// EncodedLen(len(src)) bytes.
func Encode(dst, src []byte) {
	n := EncodedLen(len(src))
	for k := n - 1; k >= 0; k-- {
		b := uint(k) * 5
		i, j := b/8, b%8
		c := src[i] >> j
		if int(i)+1 < len(src) {
			c |= src[i+1] << (8 - j)
		}
		dst[n-1-k] = Alphabet[c&31]
	}
}

// EncodeToString returns the encoding of src.
func EncodeToString(src []byte) string {
	dst := make([]byte, EncodedLen(len(src)))
	Encode(dst, src)
	return string(dst)
}

// Decode decodes src into dst, which must be exactly DecodedLen(len(src))
// bytes long, and rejects characters outside the alphabet and digits that
// overflow past the last byte (as Nix does).
func Decode(dst, src []byte) error {
	for i := range dst {
		dst[i] = 0
	}
	n := len(src)
	for i := 0; i < n; i++ {
		d := decodeMap[src[n-1-i]]
		if d == 0xff {
			return fmt.Errorf("%w: character %q at offset %d", ErrInvalid, src[n-1-i], n-1-i)
		}
		b := uint(i) * 5
		idx, j := b/8, b%8
		if int(idx) >= len(dst) {
			if d != 0 {
				return fmt.Errorf("%w: %q overflows %d bytes", ErrInvalid, src, len(dst))
			}
			continue
		}
		dst[idx] |= d << j
		carry := d >> (8 - j)
		if int(idx)+1 < len(dst) {
			dst[idx+1] |= carry
		} else if carry != 0 {
			return fmt.Errorf("%w: %q overflows %d bytes", ErrInvalid, src, len(dst))
		}
	}
	return nil
}

// DecodeString decodes s into DecodedLen(len(s)) bytes.
func DecodeString(s string) ([]byte, error) {
	dst := make([]byte, DecodedLen(len(s)))
	if err := Decode(dst, []byte(s)); err != nil {
		return nil, err
	}
	return dst, nil
}

// ValidateString reports an error if s contains a character outside the
// alphabet.
func ValidateString(s string) error {
	for i := 0; i < len(s); i++ {
		if !Is(s[i]) {
			return fmt.Errorf("%w: character %q at offset %d", ErrInvalid, s[i], i)
		}
	}
	return nil
}
