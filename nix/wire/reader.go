package wire

import (
	"errors"
	"fmt"
	"io"
	"math"
	"unsafe"
)

// C++ type names (typeid(T).name() under the Itanium ABI) that Nix prints in
// "serialised integer N is too large for type 'X'".
const (
	TypeUint  = "j" // unsigned int: readInt, command numbers, versions, flags
	TypeBool  = "b" // bool: `in >> bool` sites, e.g. AddToStoreNar's ultimate
	TypeUint8 = "h" // unsigned char: master's BuildResult status
)

var (
	// ErrPadding reports a string whose padding bytes are not all zero.
	ErrPadding = errors.New("non-zero padding")
	// ErrTooLong reports a length or count larger than the caller's limit.
	ErrTooLong = errors.New("length exceeds limit")
)

// RangeError is an integer larger than the type Nix reads it into; its
// message is Nix's own (readNum in serialise.hh).
type RangeError struct {
	Value uint64
	Type  string // C++ type name, e.g. TypeUint
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("serialised integer %d is too large for type '%s'", e.Value, e.Type)
}

// NoEOF turns a clean io.EOF into an error wrapping io.ErrUnexpectedEOF, for
// callers in the middle of a structure where no end is clean.
func NoEOF(err error) error {
	if err == io.EOF {
		return fmt.Errorf("read: %w", io.ErrUnexpectedEOF)
	}
	return err
}

// PadLen is the number of zero bytes that follow a string of n bytes.
func PadLen(n uint64) int { return int(-n & 7) }

// Reader decodes wire items from an underlying reader, reading exactly the
// bytes of each item. It does not buffer (see the package doc).
type Reader struct {
	r   io.Reader
	buf [8]byte
}

// NewReader returns a Reader on r. r should normally be a *bufio.Reader
// shared with every other decoder of the same stream.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Read reads raw bytes from the underlying reader, so that a Reader can be
// handed to sub-decoders such as a NAR reader.
func (r *Reader) Read(p []byte) (int, error) { return r.r.Read(p) }

// ReadUint64 reads one integer (readLongLong).
func (r *Reader) ReadUint64() (uint64, error) {
	if _, err := io.ReadFull(r.r, r.buf[:]); err != nil {
		if err == io.EOF {
			return 0, io.EOF
		}
		return 0, fmt.Errorf("read integer: %w", err)
	}
	return uint64(r.buf[0]) | uint64(r.buf[1])<<8 | uint64(r.buf[2])<<16 | uint64(r.buf[3])<<24 |
		uint64(r.buf[4])<<32 | uint64(r.buf[5])<<40 | uint64(r.buf[6])<<48 | uint64(r.buf[7])<<56, nil
}

// ReadNum reads an integer that must not exceed max, like Nix's readNum<T>
// with T's maximum max and C++ type name typ. A larger value gives a
// *RangeError.
func (r *Reader) ReadNum(max uint64, typ string) (uint64, error) {
	v, err := r.ReadUint64()
	if err != nil {
		return 0, err
	}
	if v > max {
		return 0, &RangeError{Value: v, Type: typ}
	}
	return v, nil
}

// ReadInt reads an integer as Nix's readInt does (readNum<unsigned int>):
// values of 2^32 or more are rejected.
func (r *Reader) ReadInt() (uint64, error) { return r.ReadNum(math.MaxUint32, TypeUint) }

// ReadBool reads a strict boolean (Nix's `in >> bool`, readNum<bool>): only
// 0 and 1 are accepted.
func (r *Reader) ReadBool() (bool, error) {
	v, err := r.ReadNum(1, TypeBool)
	return v == 1, err
}

// ReadBoolLenient reads a boolean the way sites using readInt do: any
// non-zero value below 2^32 is true.
func (r *Reader) ReadBoolLenient() (bool, error) {
	v, err := r.ReadInt()
	return v != 0, err
}

// readLen reads a length or count and checks it against max.
func (r *Reader) readLen(what string, max int) (uint64, error) {
	n, err := r.ReadUint64()
	if err != nil {
		if err == io.EOF {
			return 0, io.EOF
		}
		return 0, fmt.Errorf("read %s: %w", what, err)
	}
	if max < 0 || n > uint64(max) {
		return 0, fmt.Errorf("read %s: %w (%d > %d)", what, ErrTooLong, n, max)
	}
	return n, nil
}

// ReadPadding reads and checks the padding after a string of n bytes.
func (r *Reader) ReadPadding(n uint64) error {
	p := r.buf[:PadLen(n)]
	if len(p) == 0 {
		return nil
	}
	if _, err := io.ReadFull(r.r, p); err != nil {
		return fmt.Errorf("read padding: %w", NoEOF(err))
	}
	for _, c := range p {
		if c != 0 {
			return fmt.Errorf("read padding: %w", ErrPadding)
		}
	}
	return nil
}

// allocStep bounds how much ReadBytes allocates ahead of data actually
// received, so a peer that announces a large (but allowed) length and then
// stops costs little memory.
const allocStep = 1 << 20

// ReadBytes reads a string of at most max bytes. The length is checked
// before anything is allocated.
func (r *Reader) ReadBytes(max int) ([]byte, error) {
	n, err := r.readLen("string", max)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return []byte{}, nil
	}
	var b []byte
	if n <= allocStep {
		b = make([]byte, n)
		if _, err := io.ReadFull(r.r, b); err != nil {
			return nil, fmt.Errorf("read string: %w", NoEOF(err))
		}
	} else {
		b = make([]byte, 0, allocStep)
		for uint64(len(b)) < n {
			chunk := min(n-uint64(len(b)), allocStep)
			b = append(b, make([]byte, chunk)...)
			if _, err := io.ReadFull(r.r, b[uint64(len(b))-chunk:]); err != nil {
				return nil, fmt.Errorf("read string: %w", NoEOF(err))
			}
		}
	}
	if err := r.ReadPadding(n); err != nil {
		return nil, fmt.Errorf("read string: %w", err)
	}
	return b, nil
}

// ReadString reads a string of at most max bytes.
func (r *Reader) ReadString(max int) (string, error) {
	b, err := r.ReadBytes(max)
	if err != nil || len(b) == 0 {
		return "", err
	}
	// b is private to this call, so it can back the string without a copy.
	return unsafe.String(&b[0], len(b)), nil
}

// ReadStrings reads a list (or set) of at most maxCount strings of at most
// maxLen bytes each, in wire order.
func (r *Reader) ReadStrings(maxCount, maxLen int) ([]string, error) {
	n, err := r.readLen("string list", maxCount)
	if err != nil {
		return nil, err
	}
	ss := make([]string, 0, min(n, 1024))
	for range n {
		s, err := r.ReadString(maxLen)
		if err != nil {
			return nil, fmt.Errorf("read string list: %w", NoEOF(err))
		}
		ss = append(ss, s)
	}
	return ss, nil
}

// BytesReader streams the body of one string, for blobs too large to hold
// in memory. It returns io.EOF after the last byte once the padding has been
// read and checked.
type BytesReader struct {
	r    *Reader
	n    uint64 // total length
	left uint64 // body bytes not yet read
	done bool   // padding consumed
}

// OpenBytes reads the length of a string of at most max bytes and returns a
// reader for its body. The caller must read it to io.EOF (or call Discard)
// before reading the next item.
func (r *Reader) OpenBytes(max uint64) (*BytesReader, error) {
	n, err := r.ReadUint64()
	if err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("read string: %w", err)
	}
	if n > max {
		return nil, fmt.Errorf("read string: %w (%d > %d)", ErrTooLong, n, max)
	}
	return &BytesReader{r: r, n: n, left: n}, nil
}

// Len returns the total length of the string.
func (b *BytesReader) Len() uint64 { return b.n }

// Read reads body bytes.
func (b *BytesReader) Read(p []byte) (int, error) {
	if b.left == 0 {
		if !b.done {
			if err := b.r.ReadPadding(b.n); err != nil {
				return 0, fmt.Errorf("read string: %w", err)
			}
			b.done = true
		}
		return 0, io.EOF
	}
	if uint64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.r.Read(p)
	b.left -= uint64(n)
	if err == io.EOF {
		if b.left > 0 {
			return n, fmt.Errorf("read string: %w", io.ErrUnexpectedEOF)
		}
		err = nil
	} else if err != nil {
		err = fmt.Errorf("read string: %w", err)
	}
	return n, err
}

// Discard skips the rest of the body and the padding.
func (b *BytesReader) Discard() error {
	_, err := io.Copy(io.Discard, b)
	return err
}
