package nar

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// wop is one step of a writer test: a *Header to write, a string of
// contents, or close.
type wop any

type closeOp struct{}

func TestWriterMisuse(t *testing.T) {
	dir := func(p string) *Header { return &Header{Path: p, Type: TypeDirectory} }
	reg := func(p string, size int64) *Header { return &Header{Path: p, Type: TypeRegular, Size: size} }
	tests := []struct {
		name string
		ops  []wop
		want string // error of the last op
		is   error
	}{
		{"root with path", []wop{reg("a", 0)}, "the first object must be the root", ErrHeader},
		{"second root", []wop{reg("", 0), reg("", 0)}, "root object is complete", ErrHeader},
		{"entry after file root", []wop{reg("", 0), reg("a", 0)}, "root object is complete", ErrHeader},
		{"unsorted", []wop{dir(""), reg("b", 0), reg("a", 0)}, `entry name "a" is not after "b"`, ErrHeader},
		{"duplicate", []wop{dir(""), dir("a"), dir("a")}, `entry name "a" is not after "a"`, ErrHeader},
		{"reopen closed dir", []wop{dir(""), dir("a"), dir("b"), reg("a/x", 0)}, `parent "a" is not an open directory`, ErrHeader},
		{"parent not a dir", []wop{dir(""), reg("a", 0), reg("a/b", 0)}, `parent "a" is not an open directory`, ErrHeader},
		{"leading slash", []wop{dir(""), reg("/a", 0)}, "path is not relative", ErrHeader},
		{"double slash", []wop{dir(""), dir("a"), reg("a//b", 0)}, `parent "a/" is not an open directory`, ErrHeader},
		{"dot", []wop{dir(""), reg(".", 0)}, `invalid entry name "."`, ErrHeader},
		{"NUL", []wop{dir(""), reg("a\x00", 0)}, "contains NUL", ErrHeader},
		{"long name", []wop{dir(""), reg(strings.Repeat("x", 256), 0)}, "longer than 255", ErrHeader},
		{"negative size", []wop{reg("", -1)}, "negative size", ErrHeader},
		{"empty target", []wop{&Header{Type: TypeSymlink}}, "empty symlink target", ErrHeader},
		{"bad type", []wop{&Header{Type: 9}}, "unknown type", ErrHeader},
		{"missing contents", []wop{dir(""), reg("a", 3), "ab", reg("b", 0)}, "missed writing 1 bytes", nil},
		{"missing contents at close", []wop{reg("", 3), closeOp{}}, "missed writing 3 bytes", nil},
		{"too long", []wop{reg("", 3), "abcd"}, "write too long", ErrWriteTooLong},
		{"write to dir", []wop{dir(""), "a"}, "not a regular file", nil},
		{"close without root", []wop{closeOp{}}, "no root object", ErrHeader},
		{"write after close", []wop{dir(""), closeOp{}, dir("a")}, "after close", ErrWriteAfterClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWriter(io.Discard)
			var err error
			for i, op := range tt.ops {
				switch op := op.(type) {
				case *Header:
					err = w.WriteHeader(op)
				case string:
					_, err = io.WriteString(w, op)
				case closeOp:
					err = w.Close()
				}
				if i < len(tt.ops)-1 && err != nil {
					t.Fatalf("op %d: %v", i, err)
				}
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to mention %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
		})
	}
}

// TestWriterClosesOuterDirs writes entries of an outer directory after a
// nested one and checks the result reads back.
func TestWriterClosesOuterDirs(t *testing.T) {
	entries := []entry{
		{Header: Header{Type: TypeDirectory}},
		{Header: Header{Path: "a", Type: TypeDirectory}},
		{Header: Header{Path: "a/b", Type: TypeDirectory}},
		{Header: Header{Path: "a/b/c", Type: TypeRegular, Executable: true, Size: 9}, Contents: "123456789"},
		{Header: Header{Path: "a/d", Type: TypeSymlink, LinkTarget: "b/c"}},
		{Header: Header{Path: "e", Type: TypeDirectory}},
		{Header: Header{Path: "f", Type: TypeRegular}},
	}
	data, err := writeAll(t, entries)
	must(t, err)
	got, err := readAll(t, bytes.NewReader(data))
	must(t, err)
	if len(got) != len(entries) {
		t.Fatalf("read %d entries, want %d", len(got), len(entries))
	}
	for i := range got {
		got[i].ContentOffset = 0
		if got[i] != entries[i] {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], entries[i])
		}
	}
}

// TestWriterLargeWrites mixes small and large writes around the buffer.
func TestWriterLargeWrites(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 10000)
	var b bytes.Buffer
	w := NewWriter(&b)
	must(t, w.WriteHeader(&Header{Type: TypeRegular, Size: int64(2*len(big) + 3)}))
	for _, p := range [][]byte{[]byte("a"), big, []byte("bc"), big} {
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	must(t, w.Close())
	must(t, w.Close()) // idempotent
	got, err := readAll(t, &b)
	must(t, err)
	if want := "a" + string(big) + "bc" + string(big); got[0].Contents != want {
		t.Errorf("contents differ")
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("disk full")
	}
	f.n--
	return len(p), nil
}

func TestWriterStickyError(t *testing.T) {
	w := NewWriter(&failWriter{})
	must(t, w.WriteHeader(&Header{Type: TypeRegular, Size: 1 << 20}))
	_, err := w.Write(make([]byte, 1<<20))
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Write = %v, want disk full", err)
	}
	if err2 := w.Close(); err2 != err {
		t.Errorf("Close = %v, want sticky %v", err2, err)
	}
}
