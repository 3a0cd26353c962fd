// Package nixbase64 is Nix's base64 (src/libutil/util.cc@2.8.0,
// base64Encode and base64Decode): the standard alphabet with padding when
// encoding, and a decoder more lenient than encoding/base64's, which every
// base64 field Nix reads goes through (keys, signatures, a machine's
// public host key).
package nixbase64

import (
	"encoding/base64"
	"fmt"
)

// alphabet is util.cc's base64Chars.
const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

var digits = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i := 0; i < len(alphabet); i++ {
		t[alphabet[i]] = int8(i)
	}
	return t
}()

// A CharError is a character outside the alphabet, at byte Offset of the
// encoded text. Its message is Nix's.
type CharError struct {
	Char   byte
	Offset int
}

func (e *CharError) Error() string {
	return fmt.Sprintf("invalid character in Base64 string: '%c'", e.Char)
}

// Decode is base64Decode: it stops at the first '=', skips newlines, and
// drops the bits of a trailing partial byte, so padding is optional and
// anything after it is ignored. Any other character outside the alphabet
// is a *CharError.
func Decode(s string) ([]byte, error) {
	res := make([]byte, 0, (len(s)+2)/4*3)
	var d, bits uint
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '=' {
			break
		}
		if c == '\n' {
			continue
		}
		digit := digits[c]
		if digit < 0 {
			return nil, &CharError{Char: c, Offset: i}
		}
		bits += 6
		d = d<<6 | uint(digit)
		if bits >= 8 {
			res = append(res, byte(d>>(bits-8)))
			bits -= 8
		}
	}
	return res, nil
}

// Encode is base64Encode: the standard alphabet, padded.
func Encode(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
