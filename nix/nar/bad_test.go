package nar

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dirWith wraps entry tokens in a directory root.
func dirWith(parts ...any) []byte {
	all := []any{toks("nix-archive-1 ( type directory")}
	all = append(all, parts...)
	all = append(all, toks(")"))
	return build(all...)
}

// file is the tokens of an entry holding a small regular file.
func file(name string) []any {
	return []any{toks("entry ( name"), name, toks("node ( type regular contents"), "x", toks(") )")}
}

func files(names ...string) []any {
	var out []any
	for _, name := range names {
		out = append(out, file(name)...)
	}
	return out
}

func nested(depth int) []byte {
	parts := []any{toks("nix-archive-1 ( type directory")}
	for range depth {
		parts = append(parts, toks("entry ( name d node ( type directory"))
	}
	for range depth {
		parts = append(parts, toks(") )"))
	}
	parts = append(parts, toks(")"))
	return build(parts...)
}

func TestReaderRejects(t *testing.T) {
	hello, _ := os.ReadFile("testdata/hello.nar")
	tests := []struct {
		name  string
		nar   []byte
		want  string // substring of the error
		trunc bool   // error wraps io.ErrUnexpectedEOF
	}{
		{"empty input", nil, "truncated", true},
		{"bad magic", build(toks("nix-archive-2 ( type regular contents"), "", toks(")")), `bad magic "nix-archive-2"`, false},
		{"huge magic length", build(n(1 << 63)), "not a NAR: token of 9223372036854775808 bytes is longer than 16", false},
		{"magic non-zero padding", append(build(n(13)), "nix-archive-1\x00\x00\x01"...), "non-zero padding after token", false},
		{"missing open paren", build(toks("nix-archive-1 type")), `expected "(", got "type"`, false},
		{"no type", build(toks("nix-archive-1 ( )")), `expected "type", got ")"`, false},
		{"two type fields", build(toks("nix-archive-1 ( type type regular")), `unknown file type "type"`, false},
		{"unknown type", build(toks("nix-archive-1 ( type fifo )")), `unknown file type "fifo"`, false},
		{"regular without contents", build(toks("nix-archive-1 ( type regular )")), `expected "executable" or "contents", got ")"`, false},
		{"unknown field", build(toks("nix-archive-1 ( type regular size")), `expected "executable" or "contents", got "size"`, false},
		{"executable value", build(toks("nix-archive-1 ( type regular executable 1 contents"), "", toks(")")), `"executable" marker has a non-empty value of 1 bytes`, false},
		{"executable twice", build(toks("nix-archive-1 ( type regular executable"), "", "executable", "", toks("contents"), "", toks(")")), `expected "contents", got "executable"`, false},
		{"executable after contents", build(toks("nix-archive-1 ( type regular contents"), "x", toks("executable"), "", toks(")")), `expected ")", got "executable"`, false},
		{"huge file size", build(toks("nix-archive-1 ( type regular contents"), n(1<<63)), "file size 9223372036854775808 is too large", false},
		{"huge file size, truncated", build(toks("nix-archive-1 ( type regular contents"), n(1<<62), raw("abc")), "file contents", true},
		{"contents non-zero padding", append(build(toks("nix-archive-1 ( type regular contents"), n(1)), "x\x00\x00\x00\x00\x00\x00\x01"...), "non-zero padding after file contents", false},
		{"truncated padding", append(build(toks("nix-archive-1 ( type regular contents"), n(1)), "x\x00"...), "padding", true},
		{"missing final paren", hello[:len(hello)-16], "truncated", true},
		{"empty symlink target", build(toks("nix-archive-1 ( type symlink target"), "", toks(")")), "empty symlink target", false},
		{"NUL in symlink target", build(toks("nix-archive-1 ( type symlink target"), "a\x00b", toks(")")), `symlink target "a\x00b" contains NUL`, false},
		{"long symlink target", build(toks("nix-archive-1 ( type symlink target"), strings.Repeat("a", 4096), toks(")")), "symlink target of 4096 bytes is longer than 4095", false},
		{"symlink unknown field", build(toks("nix-archive-1 ( type symlink path a )")), `expected "target", got "path"`, false},
		{"symlink extra field", build(toks("nix-archive-1 ( type symlink target a target b )")), `expected ")", got "target"`, false},
		{"empty name", dirWith(file("")...), "empty entry name", false},
		{"dot name", dirWith(file(".")...), `invalid entry name "."`, false},
		{"dotdot name", dirWith(file("..")...), `invalid entry name ".."`, false},
		{"slash in name", dirWith(file("a/b")...), `entry name "a/b" contains '/'`, false},
		{"NUL in name", dirWith(file("a\x00b")...), `entry name "a\x00b" contains NUL`, false},
		{"long name", dirWith(file(strings.Repeat("n", 256))...), "entry name of 256 bytes is longer than 255", false},
		{"unsorted names", dirWith(files("b", "a")...), `unsorted entry name "a" after "b"`, false},
		{"unsorted bytewise", dirWith(files("a", "B")...), `unsorted entry name "B" after "a"`, false},
		{"duplicate names", dirWith(files("a", "a")...), `duplicate entry name "a"`, false},
		{"unknown directory field", dirWith(toks("file")), `expected "entry" or ")", got "file"`, false},
		{"name after node", dirWith(toks("entry ( node ( type regular contents"), "x", toks(") name a )")), `expected "name", got "node"`, false},
		{"entry not closed", dirWith(toks("entry ( name a node ( type symlink target b ) entry")), `expected ")", got "entry"`, false},
		{"too deep", nested(MaxDepth + 1), "nested deeper than 256 directories", false},
		{"unknown token kind", build(toks("nix-archive-1 ( type directory entry ( name a node ( type regular contents"), "", toks(") ) (")), `expected "entry" or ")", got "("`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readAll(t, bytes.NewReader(tt.nar))
			if err == nil {
				t.Fatalf("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
			if !errors.Is(err, ErrFormat) {
				t.Errorf("error %q is not ErrFormat", err)
			}
			if got := errors.Is(err, io.ErrUnexpectedEOF); got != tt.trunc {
				t.Errorf("errors.Is(%q, io.ErrUnexpectedEOF) = %v, want %v", err, got, tt.trunc)
			}
			// Sticky: the next call gives the same error.
			nr := NewReader(bytes.NewReader(tt.nar))
			var first error
			for first == nil {
				_, first = nr.Next()
			}
			if _, again := nr.Next(); again != first {
				t.Errorf("error not sticky: %v then %v", first, again)
			}
			// Restore rejects it too and leaves nothing outside dest.
			dir := t.TempDir()
			if err := Restore(bytes.NewReader(tt.nar), filepath.Join(dir, "out")); err == nil {
				t.Errorf("Restore accepted it")
			}
		})
	}
}

func TestReaderAcceptsDepthLimit(t *testing.T) {
	if _, err := readAll(t, bytes.NewReader(nested(MaxDepth))); err != nil {
		t.Fatal(err)
	}
}

func TestErrorNamesEntryAndOffset(t *testing.T) {
	nar := build(toks("nix-archive-1 ( type directory entry ( name a node ( type directory"),
		files("y", "x"), toks(") ) )"))
	_, err := readAll(t, bytes.NewReader(nar))
	var fe *FormatError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is not a *FormatError", err)
	}
	if fe.Path != "a" {
		t.Errorf("Path = %q, want %q", fe.Path, "a")
	}
	if !bytes.HasPrefix(nar[fe.Offset:], build("x")) {
		t.Errorf("Offset %d does not point at the name token", fe.Offset)
	}
	want := `nar: parse entry "a" at offset ` // then the number and the cause
	if !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), `unsorted entry name "x" after "y"`) {
		t.Errorf("error = %q", err)
	}
}

// TestNixFixtures runs Nix's own NAR fixtures from libutil-tests.
func TestNixFixtures(t *testing.T) {
	want := map[string]string{
		"dot.nar":                               `invalid entry name "."`,
		"dotdot.nar":                            `invalid entry name ".."`,
		"empty.nar":                             "empty entry name",
		"executable-after-contents.nar":         `expected ")", got "executable"`,
		"invalid-tag-instead-of-contents.nar":   `got "AAAAAAAA"`,
		"name-after-node.nar":                   `expected "name", got "node"`,
		"nul-character.nar":                     "contains NUL",
		"regular-one-byte-non-zero-padding.nar": "non-zero padding",
		"regular-one-byte-zero-padding.nar":     "",
		"regular-truncated-large-contents.nar":  "file size 18446744073709551615 is too large",
		"regular-truncated-padding.nar":         "truncated while reading padding",
		"slash.nar":                             "contains '/'",
	}
	files, _ := filepath.Glob("testdata/nix-libutil/*.nar")
	if len(files) != len(want) {
		t.Fatalf("found %d fixtures, want %d", len(files), len(want))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			must(t, err)
			w, ok := want[filepath.Base(f)]
			if !ok {
				t.Fatalf("no expectation")
			}
			_, err = readAll(t, bytes.NewReader(data))
			switch {
			case w == "" && err != nil:
				t.Errorf("rejected: %v", err)
			case w != "" && err == nil:
				t.Errorf("accepted")
			case w != "" && !strings.Contains(err.Error(), w):
				t.Errorf("error %q does not mention %q", err, w)
			}
		})
	}
}

// TestHugeLengthsDoNotAllocate checks that lengths near 2^63 are rejected
// or streamed, never allocated.
func TestHugeLengthsDoNotAllocate(t *testing.T) {
	inputs := [][]byte{
		build(n(1 << 63)),
		build(toks("nix-archive-1 ( type directory entry ( name"), n(1<<63)),
		build(toks("nix-archive-1 ( type symlink target"), n(1<<63-1)),
		build(toks("nix-archive-1 ( type regular contents"), n(1<<63-1), raw("abc")),
	}
	for i, in := range inputs {
		allocs := testing.AllocsPerRun(10, func() {
			nr := NewReader(bytes.NewReader(in))
			for {
				if _, err := nr.Next(); err != nil {
					break
				}
			}
		})
		// A reader, its header, the error and skip buffer: a handful of
		// small allocations, none sized from the input.
		if allocs > 20 {
			t.Errorf("input %d: %v allocations", i, allocs)
		}
	}
}
