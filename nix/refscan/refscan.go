// Package refscan finds which store paths a byte stream refers to, the way
// Nix discovers the references of a build output (docs/store.md §7.2;
// RefScanSink in src/libstore/references.cc of Nix 2.8.0).
//
// The input is normally the NAR serialisation of an output, so file names
// and symlink targets count as well as file contents. A reference is any
// occurrence of a candidate's 32-character nix32 hash part at any offset,
// also inside a longer run of nix32 characters and without a /nix/store/
// prefix: Nix checks every window of 32 bytes. Occurrences that span the
// boundary between two writes are found too, so the result does not depend
// on how the stream is cut.
//
// Only runs of at least 32 nix32 characters can hold a match, so the scanner
// skips other bytes with a table lookup and, inside long runs, filters windows
// through a small bit table before the exact set lookup.
package refscan

import (
	"encoding/binary"
	"slices"

	"ferry/nix/nixbase32"
)

// HashLen is the length of a store path hash part.
const HashLen = 32

var isNix32 [256]bool

func init() {
	for i := range len(nixbase32.Alphabet) {
		isNix32[nixbase32.Alphabet[i]] = true
	}
}

const filterBits = 16

// filterIndex hashes the first 8 bytes of a window.
func filterIndex(w []byte) uint32 {
	return uint32((binary.LittleEndian.Uint64(w) * 0x9E3779B97F4A7C15) >> (64 - filterBits))
}

// Scanner is an io.Writer that records which candidate hash parts occur in
// everything written to it. It is not safe for concurrent use.
type Scanner struct {
	want   map[string]bool // candidate -> found
	filter [1 << filterBits / 64]uint64
	found  int
	// tail holds the trailing run of nix32 characters written so far, at
	// most HashLen-1 bytes: the only bytes a match spanning the next write
	// can start in.
	tail []byte
	join []byte // scratch for tail + head of the next write
}

// NewScanner returns a Scanner looking for the given hash parts. Strings
// that are not 32 nix32 characters can never occur and are ignored.
func NewScanner(hashParts []string) *Scanner {
	s := &Scanner{
		want: make(map[string]bool, len(hashParts)),
		tail: make([]byte, 0, HashLen),
		join: make([]byte, 0, 2*HashLen),
	}
	for _, h := range hashParts {
		if len(h) != HashLen || !allNix32([]byte(h)) {
			continue
		}
		s.want[h] = false
		i := filterIndex([]byte(h))
		s.filter[i/64] |= 1 << (i % 64)
	}
	return s
}

func allNix32(b []byte) bool {
	for _, c := range b {
		if !isNix32[c] {
			return false
		}
	}
	return true
}

// Write scans p. It never fails.
func (s *Scanner) Write(p []byte) (int, error) {
	if len(s.want) == 0 || s.found == len(s.want) {
		return len(p), nil
	}
	// Windows that start in the tail: tail + the leading nix32 run of p.
	if len(s.tail) > 0 {
		k := 0
		for k < len(p) && k < HashLen-1 && isNix32[p[k]] {
			k++
		}
		if len(s.tail)+k >= HashLen {
			s.join = append(append(s.join[:0], s.tail...), p[:k]...)
			// k < HashLen, so every window here starts inside the tail;
			// those starting in p are scanned below.
			s.scanRun(s.join)
		}
	}
	s.scan(p)
	s.updateTail(p)
	return len(p), nil
}

// updateTail keeps the trailing nix32 run of everything written, capped at
// HashLen-1 bytes.
func (s *Scanner) updateTail(p []byte) {
	j := len(p)
	for j > 0 && len(p)-j < HashLen-1 && isNix32[p[j-1]] {
		j--
	}
	run := p[j:]
	if j > 0 {
		// The run starts inside p.
		s.tail = append(s.tail[:0], run...)
		return
	}
	// p is all nix32 (and short): extend the old tail.
	keep := min(len(s.tail), HashLen-1-len(run))
	s.tail = append(s.tail[:0], s.tail[len(s.tail)-keep:]...)
	s.tail = append(s.tail, run...)
}

// scan checks every window of p that lies within a nix32 run.
func (s *Scanner) scan(p []byte) {
	i := 0
	for i+HashLen <= len(p) {
		// Nix's trick: test the window from its end; a non-nix32 byte at
		// offset j rules out every window starting at or before it.
		j := HashLen - 1
		for j >= 0 && isNix32[p[i+j]] {
			j--
		}
		if j >= 0 {
			i += j + 1
			continue
		}
		// p[i:i+HashLen] is all nix32: extend to the end of the run.
		e := i + HashLen
		for e < len(p) && isNix32[p[e]] {
			e++
		}
		s.scanRun(p[i:e])
		i = e + 1 // p[e], if any, is not nix32

	}
}

// scanRun checks every window of run, which consists of nix32 bytes only.
func (s *Scanner) scanRun(run []byte) {
	for i := 0; i+HashLen <= len(run); i++ {
		w := run[i : i+HashLen]
		f := filterIndex(w)
		if s.filter[f/64]&(1<<(f%64)) == 0 {
			continue
		}
		if found, ok := s.want[string(w)]; ok && !found {
			s.want[string(w)] = true
			s.found++
		}
	}
}

// Found returns the candidates seen so far, sorted.
func (s *Scanner) Found() []string {
	var out []string
	for h, found := range s.want {
		if found {
			out = append(out, h)
		}
	}
	slices.Sort(out)
	return out
}
