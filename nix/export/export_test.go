package export

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/nix/wire"
)

// testdata/two.export is `nix-store --export` (Nix 2.8.0) of two
// builtins.toFile paths, "top" referring to "dep".
const (
	depPath = "/nix/store/9yyh0p5mibwx2b7czhn9n7qbhgb1n4r8-dep"
	topPath = "/nix/store/2gbf3ajil9jcgajdxs04wmmihmm01m7j-top"
)

func golden(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/two.export")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func dumpBytes(t testing.TB, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := nar.DumpBytes(&b, []byte(s)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

type entry struct {
	info Info
	nar  []byte
}

// readAll reads every entry of an export stream.
func readAll(r *Reader) ([]entry, error) {
	var out []entry
	for {
		if err := r.Next(); err == io.EOF {
			return out, nil
		} else if err != nil {
			return out, err
		}
		b, err := io.ReadAll(r)
		if err != nil {
			return out, err
		}
		info, err := r.Info()
		if err != nil {
			return out, err
		}
		if r.NARSize() != int64(len(b)) {
			return out, errors.New("NARSize disagrees with the bytes read")
		}
		out = append(out, entry{*info, b})
	}
}

func writeAll(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, e := range entries {
		if err := w.WritePath(&e.info, bytes.NewReader(e.nar)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReadGolden(t *testing.T) {
	in := golden(t)
	for name, r := range map[string]io.Reader{
		"whole":    bytes.NewReader(in),
		"one byte": iotest.OneByteReader(bytes.NewReader(in)),
		"half":     iotest.HalfReader(bytes.NewReader(in)),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := readAll(NewReader(r, nil))
			if err != nil {
				t.Fatal(err)
			}
			want := []entry{
				{Info{Path: depPath}, dumpBytes(t, "I am a dependency\n")},
				{Info{Path: topPath, References: []storepath.Path{depPath}}, dumpBytes(t, "top refers to "+depPath+"\n")},
			}
			if len(got) != len(want) {
				t.Fatalf("%d entries", len(got))
			}
			for i := range want {
				g, w := got[i], want[i]
				if g.info.Path != w.info.Path || g.info.Deriver != w.info.Deriver ||
					!slices.Equal(g.info.References, w.info.References) || !bytes.Equal(g.nar, w.nar) {
					t.Errorf("entry %d: got %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

// Writing back what was read reproduces Nix's bytes exactly.
func TestWriteGolden(t *testing.T) {
	in := golden(t)
	entries, err := readAll(NewReader(bytes.NewReader(in), nil))
	if err != nil {
		t.Fatal(err)
	}
	if out := writeAll(t, entries); !bytes.Equal(out, in) {
		t.Fatalf("re-encoded stream differs:\n%x\n%x", out, in)
	}

	// The same through StartPath/Write/FinishPath, references unsorted and
	// duplicated.
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.StartPath()
	nar.DumpBytes(w, []byte("I am a dependency\n"))
	w.FinishPath(&Info{Path: depPath})
	w.StartPath()
	nar.DumpBytes(w, []byte("top refers to "+depPath+"\n"))
	w.FinishPath(&Info{Path: topPath, References: []storepath.Path{depPath, depPath}})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), in) {
		t.Fatal("StartPath/FinishPath output differs")
	}
}

// Reading stops exactly at the end marker, and skipping an entry's NAR
// (partly or wholly) keeps the stream in step.
func TestSkipAndNoOverread(t *testing.T) {
	br := bufio.NewReader(io.MultiReader(bytes.NewReader(golden(t)), strings.NewReader("NEXT")))
	r := NewReader(br, nil)
	if err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if err := r.Next(); err != nil { // skips the rest of dep
		t.Fatal(err)
	}
	info, err := r.Info()
	if err != nil || info.Path != topPath {
		t.Fatalf("second entry: %v, %v", info, err)
	}
	if err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	if err := r.Next(); err != io.EOF {
		t.Fatalf("after end: %v", err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "NEXT" {
		t.Fatalf("left %q", rest)
	}
}

// stream builds a one-path stream from a NAR and raw trailer parts.
func stream(t testing.TB, narBytes []byte, trailer ...[]byte) []byte {
	b := wire.AppendUint64(nil, 1)
	b = append(b, narBytes...)
	for _, p := range trailer {
		b = append(b, p...)
	}
	return b
}

func TestBadInput(t *testing.T) {
	u := func(v uint64) []byte { return wire.AppendUint64(nil, v) }
	s := func(v string) []byte { return wire.AppendString(nil, v) }
	good := dumpBytes(t, "x")
	tests := []struct {
		name string
		in   []byte
		is   error
		msg  string // substring of the message
	}{
		{"empty", nil, io.ErrUnexpectedEOF, ""},
		{"bad marker", u(2), ErrFormat, "input doesn't look like something created by 'nix-store --export'"},
		{"not a nar", stream(t, s("nix-archive-2")), nar.ErrFormat, ""},
		{"wrong magic", stream(t, good, u(0x4558494f)), ErrFormat, "Nix archive cannot be imported; wrong format"},
		{"bad path", stream(t, good, u(Magic), s("/nix/store/short-x")), ErrFormat, "invalid store path"},
		{"path outside store", stream(t, good, u(Magic), s("/tmp/9yyh0p5mibwx2b7czhn9n7qbhgb1n4r8-dep")), ErrFormat, "invalid store path"},
		{"huge path", stream(t, good, u(Magic), u(1<<40)), wire.ErrTooLong, ""},
		{"huge ref count", stream(t, good, u(Magic), s(depPath), u(1<<60)), wire.ErrTooLong, ""},
		{"bad ref", stream(t, good, u(Magic), s(depPath), u(1), s("/nix/store/x")), ErrFormat, "references of"},
		{"bad deriver", stream(t, good, u(Magic), s(depPath), u(0), s("foo.drv")), ErrFormat, "deriver of"},
		{"bad padding", stream(t, good, u(Magic), u(47), []byte(depPath), []byte{1}), wire.ErrPadding, ""},
		{"huge signature", stream(t, good, u(Magic), s(depPath), u(0), s(""), u(1), u(1<<40)), wire.ErrTooLong, ""},
		{"flag too large", stream(t, good, u(Magic), s(depPath), u(0), s(""), u(1<<32)), nil, "too large for type 'j'"},
		{"no end marker", stream(t, good, u(Magic), s(depPath), u(0), s(""), u(0)), io.ErrUnexpectedEOF, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readAll(NewReader(bytes.NewReader(tt.in), nil))
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %q is not %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.msg) || !strings.HasPrefix(err.Error(), "read export: ") {
				t.Errorf("error %q, want it to contain %q", err, tt.msg)
			}
		})
	}

	// Signature flag 1 with a signature, and flag 2, are accepted.
	for _, tail := range [][]byte{bytes.Join([][]byte{u(1), s("sig")}, nil), u(2)} {
		in := stream(t, good, u(Magic), s(depPath), u(0), s(""), tail, u(0))
		if got, err := readAll(NewReader(bytes.NewReader(in), nil)); err != nil || len(got) != 1 {
			t.Errorf("legacy signature %x: %v", tail, err)
		}
	}

	// Every strict prefix of a valid stream is a truncation error.
	in := golden(t)
	for n := range len(in) {
		_, err := readAll(NewReader(bytes.NewReader(in[:n]), nil))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("prefix of %d bytes: %v", n, err)
		}
	}
}

func TestStoreDir(t *testing.T) {
	in := stream(t, dumpBytes(t, "x"), wire.AppendUint64(nil, Magic),
		wire.AppendString(nil, "/gnu/store/9yyh0p5mibwx2b7czhn9n7qbhgb1n4r8-dep"), wire.AppendUint64(nil, 0),
		wire.AppendString(nil, ""), wire.AppendUint64(nil, 0), wire.AppendUint64(nil, 0))
	got, err := readAll(NewReader(bytes.NewReader(in), &ReaderOptions{StoreDir: "/gnu/store"}))
	if err != nil || len(got) != 1 || got[0].info.Path.Dir() != "/gnu/store" {
		t.Fatalf("got %+v, %v", got, err)
	}
	if _, err := readAll(NewReader(bytes.NewReader(in), nil)); !errors.Is(err, ErrFormat) {
		t.Fatalf("default dir accepted /gnu/store: %v", err)
	}
}

func TestWriterErrors(t *testing.T) {
	info := &Info{Path: depPath}
	good := dumpBytes(t, "x")
	tests := []struct {
		name string
		do   func(w *Writer) error
	}{
		{"malformed nar", func(w *Writer) error { return w.WritePath(info, bytes.NewReader(good[:len(good)-8])) }},
		{"trailing data", func(w *Writer) error { return w.WritePath(info, bytes.NewReader(append(good, 0))) }},
		{"finish without start", func(w *Writer) error { return w.FinishPath(info) }},
		{"write outside path", func(w *Writer) error { _, err := w.Write(good); return err }},
		{"start twice", func(w *Writer) error { w.StartPath(); return w.StartPath() }},
		{"close inside path", func(w *Writer) error { w.StartPath(); return w.Close() }},
		{"empty path", func(w *Writer) error { return w.WritePath(&Info{}, bytes.NewReader(good)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWriter(io.Discard)
			err := tt.do(w)
			if err == nil || !strings.HasPrefix(err.Error(), "write export: ") {
				t.Fatalf("error %v", err)
			}
			if w.Close() != err {
				t.Fatal("error is not sticky")
			}
		})
	}
}

func FuzzReader(f *testing.F) {
	f.Add(golden(f))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(stream(f, dumpBytes(f, "x"), wire.AppendUint64(nil, Magic), wire.AppendString(nil, depPath),
		wire.AppendStrings(nil, []string{topPath, depPath, depPath}), wire.AppendString(nil, topPath),
		wire.AppendUint64(nil, 1), wire.AppendString(nil, "sig"), wire.AppendUint64(nil, 0)))
	f.Fuzz(func(t *testing.T, in []byte) {
		entries, err := readAll(NewReader(bytes.NewReader(in), nil))
		if err != nil {
			return
		}
		// A stream that parses re-encodes to one that parses the same.
		again, err := readAll(NewReader(bytes.NewReader(writeAll(t, entries)), nil))
		if err != nil {
			t.Fatalf("re-encoded stream does not parse: %v", err)
		}
		if len(again) != len(entries) {
			t.Fatalf("%d entries became %d", len(entries), len(again))
		}
		for i := range entries {
			a, b := entries[i], again[i]
			if a.info.Path != b.info.Path || a.info.Deriver != b.info.Deriver ||
				!slices.Equal(a.info.References, b.info.References) || !bytes.Equal(a.nar, b.nar) {
				t.Fatalf("entry %d changed: %+v -> %+v", i, a, b)
			}
		}
	})
}

func BenchmarkReader(b *testing.B) {
	var n bytes.Buffer
	if err := nar.DumpBytes(&n, bytes.Repeat([]byte("0123456789abcdef"), 1<<20)); err != nil {
		b.Fatal(err)
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.WritePath(&Info{Path: depPath}, bytes.NewReader(n.Bytes())); err != nil {
		b.Fatal(err)
	}
	w.Close()
	in := buf.Bytes()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		r := NewReader(bufio.NewReader(bytes.NewReader(in)), nil)
		for r.Next() == nil {
			if _, err := io.Copy(io.Discard, r); err != nil {
				b.Fatal(err)
			}
		}
	}
}
