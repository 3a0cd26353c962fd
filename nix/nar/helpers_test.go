package nar

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"testing"
)

// n is an integer token in a test archive.
type n uint64

// raw is a byte sequence written as-is into a test archive.
type raw []byte

// build assembles an archive from strings (written as NAR strings with
// padding), n (a bare 8-byte integer) and raw bytes.
func build(parts ...any) []byte {
	var b bytes.Buffer
	for _, p := range parts {
		switch p := p.(type) {
		case string:
			binary.Write(&b, binary.LittleEndian, uint64(len(p)))
			b.WriteString(p)
			b.Write(make([]byte, padLen(uint64(len(p)))))
		case n:
			binary.Write(&b, binary.LittleEndian, uint64(p))
		case raw:
			b.Write(p)
		case []any:
			b.Write(build(p...))
		case []string:
			for _, s := range p {
				binary.Write(&b, binary.LittleEndian, uint64(len(s)))
				b.WriteString(s)
				b.Write(make([]byte, padLen(uint64(len(s)))))
			}
		default:
			panic("bad part")
		}
	}
	return b.Bytes()
}

// toks splits a space-separated list of tokens.
func toks(s string) []string { return strings.Fields(s) }

// entry is one object read from an archive, with its contents.
type entry struct {
	Header
	Contents string
}

// readAll reads a whole archive.
func readAll(t testing.TB, r io.Reader) ([]entry, error) {
	t.Helper()
	nr := NewReader(r)
	var out []entry
	for {
		h, err := nr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		e := entry{Header: *h}
		if h.Type == TypeRegular {
			b, err := io.ReadAll(nr)
			if err != nil {
				return out, err
			}
			e.Contents = string(b)
		}
		out = append(out, e)
	}
}

// writeAll writes entries with a Writer.
func writeAll(t testing.TB, entries []entry) ([]byte, error) {
	t.Helper()
	var b bytes.Buffer
	w := NewWriter(&b)
	for _, e := range entries {
		h := e.Header
		if err := w.WriteHeader(&h); err != nil {
			return nil, err
		}
		if h.Type == TypeRegular {
			if _, err := io.WriteString(w, e.Contents); err != nil {
				return nil, err
			}
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
