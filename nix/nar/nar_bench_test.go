package nar

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkDumpLargeFile dumps one 256 MiB file into SHA-256, as hashing
// a store path does. Target: well over 1 GB/s.
func BenchmarkDumpLargeFile(b *testing.B) {
	const size = 256 << 20
	p := filepath.Join(b.TempDir(), "big")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for range size / len(chunk) {
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	// Sync so that write-back of the fresh file does not run during timing.
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		h := sha256.New()
		if err := Dump(h, p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDumpSmallFiles dumps a tree of 10,000 small files in 100
// directories into SHA-256.
func BenchmarkDumpSmallFiles(b *testing.B) {
	root := filepath.Join(b.TempDir(), "tree")
	var total int64
	for d := range 100 {
		dir := filepath.Join(root, fmt.Sprintf("dir%03d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for i := range 100 {
			data := make([]byte, (d*100+i)%2000)
			total += int64(len(data))
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("file%03d", i)), data, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.SetBytes(total)
	b.ReportAllocs()
	for b.Loop() {
		if err := Dump(sha256.New(), root); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReader reads a 64 MiB single-file archive from memory.
func BenchmarkReader(b *testing.B) {
	const size = 64 << 20
	nar := build(toks("nix-archive-1 ( type regular contents"), n(size))
	nar = append(nar, make([]byte, size)...)
	nar = append(nar, build(")")...)
	buf := make([]byte, 1<<20)
	b.SetBytes(size)
	for b.Loop() {
		nr := NewReader(&sliceReader{b: nar})
		if _, err := nr.Next(); err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(io.Discard, onlyReader{nr}, buf); err != nil {
			b.Fatal(err)
		}
		if _, err := nr.Next(); err != io.EOF {
			b.Fatal(err)
		}
	}
}

type sliceReader struct{ b []byte }

func (s *sliceReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}

type onlyReader struct{ io.Reader }
