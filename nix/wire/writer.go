package wire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

var zeros [8]byte

// AppendUint64 appends the encoding of v to b.
func AppendUint64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }

// AppendString appends the encoding of s (length, bytes, padding) to b.
func AppendString(b []byte, s string) []byte {
	b = AppendUint64(b, uint64(len(s)))
	b = append(b, s...)
	return append(b, zeros[:PadLen(uint64(len(s)))]...)
}

// AppendStrings appends a count followed by each string.
func AppendStrings(b []byte, ss []string) []byte {
	b = AppendUint64(b, uint64(len(ss)))
	for _, s := range ss {
		b = AppendString(b, s)
	}
	return b
}

// Writer encodes wire items into a bufio.Writer. Errors are sticky (those of
// bufio.Writer); nothing reaches the underlying writer until the buffer fills
// or Flush is called.
type Writer struct {
	w   *bufio.Writer
	buf [8]byte
}

// NewWriter returns a Writer on w. If w is already a *bufio.Writer it is used
// as is.
func NewWriter(w io.Writer) *Writer { return &Writer{w: bufio.NewWriter(w)} }

// NewWriterSize is NewWriter with a buffer of at least size bytes.
func NewWriterSize(w io.Writer, size int) *Writer { return &Writer{w: bufio.NewWriterSize(w, size)} }

// Write writes raw bytes, e.g. a NAR, which the protocol sends unprefixed.
func (w *Writer) Write(p []byte) (int, error) { return w.w.Write(p) }

// Flush writes buffered data to the underlying writer.
func (w *Writer) Flush() error { return w.w.Flush() }

// WriteUint64 writes one integer.
func (w *Writer) WriteUint64(v uint64) error {
	binary.LittleEndian.PutUint64(w.buf[:], v)
	_, err := w.w.Write(w.buf[:])
	return err
}

// WriteBool writes a boolean as 0 or 1.
func (w *Writer) WriteBool(v bool) error {
	if v {
		return w.WriteUint64(1)
	}
	return w.WriteUint64(0)
}

// WritePadding writes the zero padding that follows a string of n bytes.
func (w *Writer) WritePadding(n uint64) error {
	_, err := w.w.Write(zeros[:PadLen(n)])
	return err
}

// WriteString writes a string.
func (w *Writer) WriteString(s string) error {
	w.WriteUint64(uint64(len(s)))
	w.w.WriteString(s)
	return w.WritePadding(uint64(len(s)))
}

// WriteBytes writes a byte string.
func (w *Writer) WriteBytes(b []byte) error {
	w.WriteUint64(uint64(len(b)))
	w.w.Write(b)
	return w.WritePadding(uint64(len(b)))
}

// WriteStrings writes a count followed by each string. For a set, the
// caller sorts first: Nix writers emit sets in bytewise order.
func (w *Writer) WriteStrings(ss []string) error {
	err := w.WriteUint64(uint64(len(ss)))
	for _, s := range ss {
		err = w.WriteString(s)
	}
	return err
}

// WriteBytesFrom writes a string of n bytes copied from r, streaming. It
// fails if r ends early; the stream is then unusable.
func (w *Writer) WriteBytesFrom(n uint64, r io.Reader) error {
	if err := w.WriteUint64(n); err != nil {
		return err
	}
	m, err := io.CopyN(w.w, r, int64(n))
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("write string: copied %d of %d bytes: %w", m, n, err)
	}
	return w.WritePadding(n)
}
