// Package rewrite is Nix's RewritingSink and HashModuloSink
// (src/libutil/references.cc@2.8.0): streams in which every occurrence of
// one hash part is replaced by another of the same length, and the hash
// of a stream modulo a hash part, which is how a path that refers to
// itself is content-addressed.
package rewrite

import (
	"bytes"
	"io"
	"strconv"

	"ferry/nix/hash"
)

// A Writer replaces every occurrence of From by To (of the same length)
// in what is written through it to W, as Nix's rewriteStrings does on the
// whole text: left to right, never matching inside a replacement. It
// holds back len(From)-1 bytes that may begin an occurrence; Flush writes
// them. Matches are the stream offsets of the occurrences replaced so
// far, as RewritingSink records them.
type Writer struct {
	W        io.Writer
	From, To []byte
	Matches  []uint64

	buf []byte
	pos uint64 // stream offset of buf[0]
}

func (r *Writer) Write(p []byte) (int, error) {
	r.buf = append(r.buf, p...)
	end := 0 // end of the last replacement
	for {
		j := bytes.Index(r.buf[end:], r.From)
		if j < 0 {
			break
		}
		r.Matches = append(r.Matches, r.pos+uint64(end+j))
		copy(r.buf[end+j:], r.To)
		end += j + len(r.From)
	}
	n := max(end, len(r.buf)-(len(r.From)-1))
	if n > 0 {
		if _, err := r.W.Write(r.buf[:n]); err != nil {
			return 0, err
		}
		r.pos += uint64(n)
		r.buf = append(r.buf[:0], r.buf[n:]...)
	}
	return len(p), nil
}

// Flush writes what is held back.
func (r *Writer) Flush() error {
	if len(r.buf) == 0 {
		return nil
	}
	_, err := r.W.Write(r.buf)
	r.pos += uint64(len(r.buf))
	r.buf = r.buf[:0]
	return err
}

// Chain returns a writer that applies the rewrites pairs[0], pairs[1], ...
// in order before w, and the function that flushes them all, in order.
func Chain(w io.Writer, pairs [][2]string) (io.Writer, func() error) {
	var chain []*Writer
	for i := len(pairs) - 1; i >= 0; i-- {
		rw := &Writer{W: w, From: []byte(pairs[i][0]), To: []byte(pairs[i][1])}
		chain = append([]*Writer{rw}, chain...)
		w = rw
	}
	return w, func() error {
		for _, rw := range chain {
			if err := rw.Flush(); err != nil {
				return err
			}
		}
		return nil
	}
}

// A ModuloHasher is HashModuloSink: the hash of what is written with every
// occurrence of the modulus (a hash part) replaced by as many NUL bytes,
// followed by "|<offset>" for each occurrence, in order.
type ModuloHasher struct {
	h  interface{ Sum([]byte) []byte }
	hw io.Writer
	rw *Writer
	a  hash.Algorithm
}

// NewModuloHasher hashes with a modulo modulus.
func NewModuloHasher(a hash.Algorithm, modulus string) *ModuloHasher {
	h := a.New()
	return &ModuloHasher{h: h, hw: h, a: a, rw: &Writer{W: h, From: []byte(modulus), To: make([]byte, len(modulus))}}
}

func (m *ModuloHasher) Write(p []byte) (int, error) { return m.rw.Write(p) }

// Matches are the offsets of the modulus's occurrences so far.
func (m *ModuloHasher) Matches() []uint64 { return m.rw.Matches }

// Sum ends the stream and returns the hash.
func (m *ModuloHasher) Sum() (hash.Hash, error) {
	if err := m.rw.Flush(); err != nil {
		return hash.Hash{}, err
	}
	for _, off := range m.rw.Matches {
		io.WriteString(m.hw, "|"+strconv.FormatUint(off, 10))
	}
	return hash.New(m.a, m.h.Sum(nil))
}
