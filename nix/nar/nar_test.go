package nar

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestGolden(t *testing.T) {
	tests := []struct {
		file string
		want []entry
	}{
		{"small.nar", []entry{
			{Header: Header{Path: "", Type: TypeDirectory}},
			{Header: Header{Path: "f", Type: TypeRegular, Size: 2, ContentOffset: 0xe8}, Contents: "hi"},
			{Header: Header{Path: "l", Type: TypeSymlink, LinkTarget: "f"}},
		}},
		{"hello.nar", []entry{
			{Header: Header{Path: "", Type: TypeRegular, Size: 6, ContentOffset: 96}, Contents: "hello\n"},
		}},
		{"nix-libutil/regular-one-byte-zero-padding.nar", []entry{
			{Header: Header{Path: "", Type: TypeRegular, Size: 1, ContentOffset: 96}, Contents: "x"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := readAll(t, bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("read:\n got %+v\nwant %+v", got, tt.want)
			}
			out, err := writeAll(t, got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, data) {
				t.Errorf("rewritten archive differs:\n got %q\nwant %q", out, data)
			}
		})
	}
}

func TestDumpGolden(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	must(t, os.Mkdir(small, 0o755))
	must(t, os.WriteFile(filepath.Join(small, "f"), []byte("hi"), 0o644))
	must(t, os.Symlink("f", filepath.Join(small, "l")))
	hello := filepath.Join(dir, "hello.txt")
	must(t, os.WriteFile(hello, []byte("hello\n"), 0o644))

	for _, tt := range []struct{ path, golden string }{{small, "small.nar"}, {hello, "hello.nar"}} {
		want, err := os.ReadFile(filepath.Join("testdata", tt.golden))
		must(t, err)
		var b bytes.Buffer
		must(t, Dump(&b, tt.path))
		if !bytes.Equal(b.Bytes(), want) {
			t.Errorf("Dump(%s) differs from %s", tt.path, tt.golden)
		}
	}
	var b bytes.Buffer
	must(t, DumpBytes(&b, []byte("hello\n")))
	want, _ := os.ReadFile("testdata/hello.nar")
	if !bytes.Equal(b.Bytes(), want) {
		t.Errorf("DumpBytes differs from hello.nar")
	}
	b.Reset()
	must(t, DumpRegular(&b, strings.NewReader("hello\n"), 6, false))
	if !bytes.Equal(b.Bytes(), want) {
		t.Errorf("DumpRegular differs from hello.nar")
	}
	b.Reset()
	if err := DumpRegular(&b, strings.NewReader("hell"), 6, false); err == nil {
		t.Errorf("DumpRegular with short reader succeeded")
	}
}

func TestDumpExecutableBit(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		mode os.FileMode
		exec bool
	}{{0o644, false}, {0o654, false}, {0o744, true}, {0o100, true}, {0o011, false}} {
		p := filepath.Join(dir, tt.mode.String())
		must(t, os.WriteFile(p, []byte("x"), 0o600))
		must(t, os.Chmod(p, tt.mode))
		var b bytes.Buffer
		must(t, Dump(&b, p))
		got, err := readAll(t, &b)
		must(t, err)
		if got[0].Executable != tt.exec {
			t.Errorf("mode %v: executable = %v, want %v", tt.mode, got[0].Executable, tt.exec)
		}
	}
}

func TestDumpUnsupported(t *testing.T) {
	var b bytes.Buffer
	err := Dump(&b, "/dev/null")
	if err == nil || !strings.Contains(err.Error(), "has an unsupported type") {
		t.Errorf("Dump(/dev/null) = %v, want unsupported type", err)
	}
	if err := Dump(&b, filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Dump(missing) = %v, want ErrNotExist", err)
	}
}

func TestList(t *testing.T) {
	data, err := os.ReadFile("testdata/small.nar")
	must(t, err)
	tests := []struct {
		opts ListOptions
		want string
	}{
		{ListOptions{}, "./f\n./l\n"},
		{ListOptions{Long: true, Recursive: true},
			"-r--r--r--                    2 ./f\n" +
				"lrwxrwxrwx                    0 ./l -> f\n"},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		must(t, List(&b, bytes.NewReader(data), &tt.opts))
		if b.String() != tt.want {
			t.Errorf("List(%+v) =\n%s\nwant\n%s", tt.opts, b.String(), tt.want)
		}
	}
	hello, _ := os.ReadFile("testdata/hello.nar")
	var b bytes.Buffer
	must(t, List(&b, bytes.NewReader(hello), &ListOptions{Long: true}))
	if want := "-r--r--r--                    6 \n"; b.String() != want {
		t.Errorf("List(hello) = %q, want %q", b.String(), want)
	}
}

// TestNoReadPastEnd checks that the Reader consumes exactly the archive
// from a stream that continues after it.
func TestNoReadPastEnd(t *testing.T) {
	small, _ := os.ReadFile("testdata/small.nar")
	hello, _ := os.ReadFile("testdata/hello.nar")
	sym := build(toks("nix-archive-1 ( type symlink target /x )"))
	deep := build(toks("nix-archive-1 ( type directory entry ( name a node ( type directory entry ( name b node ( type regular executable"), "", "contents", "abc", toks(") ) ) ) )"))
	for name, nar := range map[string][]byte{"small": small, "hello": hello, "symlink": sym, "deep": deep} {
		t.Run(name, func(t *testing.T) {
			stream := append(append([]byte{}, nar...), "trailing garbage that must stay unread"...)
			// iotest-style one byte at a time exercises every partial read too.
			for _, half := range []bool{false, true} {
				var src io.Reader = bytes.NewReader(stream)
				if half {
					src = oneByteReader{src}
				}
				cr := &countingReader{r: src}
				if _, err := readAll(t, cr); err != nil {
					t.Fatal(err)
				}
				if cr.n != int64(len(nar)) {
					t.Errorf("read %d bytes, archive is %d", cr.n, len(nar))
				}
			}
			// Restore, too, reads exactly the archive.
			cr := &countingReader{r: bytes.NewReader(stream)}
			must(t, Restore(cr, filepath.Join(t.TempDir(), "out")))
			if cr.n != int64(len(nar)) {
				t.Errorf("Restore read %d bytes, archive is %d", cr.n, len(nar))
			}
		})
	}
}

type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func TestReaderOffsetAndPartialRead(t *testing.T) {
	small, _ := os.ReadFile("testdata/small.nar")
	nr := NewReader(bytes.NewReader(small))
	for {
		_, err := nr.Next() // contents are skipped without Read
		if err == io.EOF {
			break
		}
		must(t, err)
		if n, err := nr.Read(make([]byte, 0)); n != 0 || (err != nil && err != io.EOF) {
			t.Fatalf("empty Read = %d, %v", n, err)
		}
	}
	if nr.Offset() != int64(len(small)) {
		t.Errorf("Offset = %d, want %d", nr.Offset(), len(small))
	}
	// Reading a directory's contents gives EOF.
	nr = NewReader(bytes.NewReader(small))
	nr.Next()
	if n, err := nr.Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Errorf("Read on directory = %d, %v; want 0, EOF", n, err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
