package nar

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzReader checks that arbitrary input never panics the Reader, that it
// never reads past what it reports consuming, and that any archive it
// accepts is written back byte for byte by the Writer.
func FuzzReader(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.nar")
	more, _ := filepath.Glob("testdata/nix-libutil/*.nar")
	for _, p := range append(seeds, more...) {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add(dirWith(files("a", "b", "c")...))
	f.Add(nested(3))
	f.Add(build(toks("nix-archive-1 ( type regular executable"), "", "contents", "hello world", toks(")")))
	f.Add(build(toks("nix-archive-1 ( type symlink target /nix/store )")))

	f.Fuzz(func(t *testing.T, data []byte) {
		cr := &countingReader{r: bytes.NewReader(data)}
		nr := NewReader(cr)
		var entries []entry
		for {
			h, err := nr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				if nr.Offset() != cr.n {
					t.Fatalf("Offset %d, consumed %d", nr.Offset(), cr.n)
				}
				return
			}
			e := entry{Header: *h}
			if h.Type == TypeRegular {
				b, err := io.ReadAll(nr)
				if err != nil {
					return
				}
				e.Contents = string(b)
			}
			entries = append(entries, e)
		}
		if nr.Offset() != cr.n {
			t.Fatalf("Offset %d, consumed %d", nr.Offset(), cr.n)
		}
		out, err := writeAll(t, entries)
		if err != nil {
			t.Fatalf("Writer rejects what Reader accepted: %v", err)
		}
		if !bytes.Equal(out, data[:cr.n]) {
			t.Fatalf("rewritten archive differs from the consumed input\n got %q\nwant %q", out, data[:cr.n])
		}
	})
}
