package localstore

import (
	"bytes"
	"io"
	"os"
	"strconv"

	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
)

// hashCAPath is Nix's LocalStore::hashCAPath (src/libstore/local-store.cc
// @2.8.0): the hash of the object at path (its NAR, or a flat file's
// contents) through a HashModuloSink of modulus, the path's hash part:
// every occurrence of modulus is hashed as as many NUL bytes, and "|<offset>"
// for each occurrence is hashed after the content. It is the content
// address of a path that refers to itself (a floating content-addressed
// output).
func hashCAPath(m storepath.Method, a hash.Algorithm, path, modulus string) (hash.Hash, error) {
	h := a.New()
	rw := &moduloWriter{w: h, from: []byte(modulus), to: make([]byte, len(modulus))}
	var err error
	if m == storepath.Flat {
		var f *os.File
		if f, err = os.Open(path); err == nil {
			_, err = io.Copy(rw, f)
			f.Close()
		}
	} else {
		err = nar.Dump(rw, path)
	}
	if err == nil {
		err = rw.flush()
	}
	if err != nil {
		return hash.Hash{}, err
	}
	for _, off := range rw.matches {
		io.WriteString(h, "|"+strconv.FormatUint(off, 10))
	}
	return hash.FromHasher(a, h), nil
}

// moduloWriter is Nix's RewritingSink: it replaces every occurrence of
// from by to (as long) left to right, recording the stream offset of each.
type moduloWriter struct {
	w        io.Writer
	from, to []byte
	buf      []byte
	pos      uint64
	matches  []uint64
}

func (r *moduloWriter) Write(p []byte) (int, error) {
	r.buf = append(r.buf, p...)
	end := 0
	for {
		j := bytes.Index(r.buf[end:], r.from)
		if j < 0 {
			break
		}
		r.matches = append(r.matches, r.pos+uint64(end+j))
		copy(r.buf[end+j:], r.to)
		end += j + len(r.from)
	}
	n := max(end, len(r.buf)-(len(r.from)-1))
	if n > 0 {
		if _, err := r.w.Write(r.buf[:n]); err != nil {
			return 0, err
		}
		r.pos += uint64(n)
		r.buf = append(r.buf[:0], r.buf[n:]...)
	}
	return len(p), nil
}

func (r *moduloWriter) flush() error {
	if len(r.buf) == 0 {
		return nil
	}
	_, err := r.w.Write(r.buf)
	r.pos += uint64(len(r.buf))
	r.buf = r.buf[:0]
	return err
}
