package wire

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The handshake bytes seen on the wire from Nix 2.8.0 (docs/protocol.md §2.2).
func TestHandshakeBytes(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.WriteUint64(0x390c9deb)
	w.WriteUint64(0x207)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	want := unhex(t, "eb9d0c39 00000000 07020000 00000000")
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("got %x, want %x", buf.Bytes(), want)
	}
	r := NewReader(bytes.NewReader(unhex(t, "cbee5254 00000000 07020000 00000000")))
	if v, err := r.ReadInt(); err != nil || v != 0x5452eecb {
		t.Fatalf("magic: %x, %v", v, err)
	}
	if v, err := r.ReadInt(); err != nil || v != 0x207 {
		t.Fatalf("version: %x, %v", v, err)
	}
	if _, err := r.ReadInt(); err != io.EOF {
		t.Fatalf("at end: got %v, want io.EOF", err)
	}
}

// The QueryValidPaths reply shape from docs/protocol.md §3.1: a count, then
// 47-byte paths with 1 byte of padding each.
func TestStringSetLayout(t *testing.T) {
	paths := []string{
		"/nix/store/hca0aaaaaaaaaaaaaaaaaaaaaaaaaaaa-top",
		"/nix/store/n4ybaaaaaaaaaaaaaaaaaaaaaaaaaaaa-dep",
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.WriteStrings(paths)
	w.Flush()
	b := buf.Bytes()
	if len(b) != 8+2*(8+48) {
		t.Fatalf("length %d", len(b))
	}
	if !bytes.Equal(b[:16], unhex(t, "0200000000000000 2f00000000000000")) || b[8+8+47] != 0 {
		t.Fatalf("layout: %x", b)
	}
	if !bytes.Equal(b, AppendStrings(nil, paths)) {
		t.Fatal("AppendStrings differs from Writer")
	}
	got, err := NewReader(bytes.NewReader(b)).ReadStrings(10, 100)
	if err != nil || len(got) != 2 || got[0] != paths[0] || got[1] != paths[1] {
		t.Fatalf("read back %q, %v", got, err)
	}
}

func TestStringRoundTrip(t *testing.T) {
	for n := range 20 {
		s := strings.Repeat("x", n)
		b := AppendString(nil, s)
		if len(b)%8 != 0 || len(b) != 8+(n+7)/8*8 {
			t.Errorf("len %d: encoded %d bytes", n, len(b))
		}
		got, err := NewReader(bytes.NewReader(b)).ReadString(n)
		if err != nil || got != s {
			t.Errorf("len %d: got %q, %v", n, got, err)
		}
	}
	// Binary-safe.
	s := "a\x00b\xff"
	got, err := NewReader(bytes.NewReader(AppendString(nil, s))).ReadString(4)
	if err != nil || got != s {
		t.Errorf("binary: got %q, %v", got, err)
	}
}

func TestReadErrors(t *testing.T) {
	u := func(v uint64) []byte { return AppendUint64(nil, v) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	tests := []struct {
		name    string
		in      []byte
		read    func(r *Reader) error
		is      error  // errors.Is target, if any
		message string // exact message, if any
	}{
		{"int too large", u(1 + 1<<32), func(r *Reader) error { _, err := r.ReadInt(); return err }, nil,
			"serialised integer 4294967297 is too large for type 'j'"},
		{"int max ok", u(1<<32 - 1), func(r *Reader) error { _, err := r.ReadInt(); return err }, nil, ""},
		{"strict bool 2", u(2), func(r *Reader) error { _, err := r.ReadBool(); return err }, nil,
			"serialised integer 2 is too large for type 'b'"},
		{"lenient bool 2", u(2), func(r *Reader) error {
			v, err := r.ReadBoolLenient()
			if err == nil && !v {
				return errors.New("2 read as false")
			}
			return err
		}, nil, ""},
		{"lenient bool 2^32", u(1 << 32), func(r *Reader) error { _, err := r.ReadBoolLenient(); return err }, nil,
			"serialised integer 4294967296 is too large for type 'j'"},
		{"clean eof", nil, func(r *Reader) error { _, err := r.ReadUint64(); return err }, io.EOF, "EOF"},
		{"short int", []byte{1, 2, 3}, func(r *Reader) error { _, err := r.ReadUint64(); return err }, io.ErrUnexpectedEOF, ""},
		{"short string body", cat(u(5), []byte("ab")), func(r *Reader) error { _, err := r.ReadString(10); return err }, io.ErrUnexpectedEOF, ""},
		{"missing padding", cat(u(5), []byte("abcde")), func(r *Reader) error { _, err := r.ReadString(10); return err }, io.ErrUnexpectedEOF, ""},
		{"bad padding", cat(u(5), []byte("abcde\x00\x01\x00")), func(r *Reader) error { _, err := r.ReadString(10); return err }, ErrPadding,
			"read string: read padding: non-zero padding"},
		{"too long", u(11), func(r *Reader) error { _, err := r.ReadString(10); return err }, ErrTooLong, ""},
		{"huge length", u(1 << 63), func(r *Reader) error { _, err := r.ReadBytes(1 << 30); return err }, ErrTooLong, ""},
		{"huge count", u(1 << 62), func(r *Reader) error { _, err := r.ReadStrings(1000, 10); return err }, ErrTooLong, ""},
		{"list cut short", cat(u(2), AppendString(nil, "a")), func(r *Reader) error { _, err := r.ReadStrings(10, 10); return err }, io.ErrUnexpectedEOF, ""},
		{"big string cut short", cat(u(3<<20), make([]byte, 100)), func(r *Reader) error { _, err := r.ReadBytes(4 << 20); return err }, io.ErrUnexpectedEOF, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.read(NewReader(bytes.NewReader(tt.in)))
			if tt.is == nil && tt.message == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %q is not %v", err, tt.is)
			}
			if tt.message != "" && err.Error() != tt.message {
				t.Errorf("error %q, want %q", err, tt.message)
			}
		})
	}
}

// A Reader must consume exactly its items so that the next decoder on the
// same bufio.Reader starts at the right byte.
func TestNoOverread(t *testing.T) {
	b := AppendString(nil, "hello")
	b = append(b, "TRAILER"...)
	br := bufio.NewReader(bytes.NewReader(b))
	r := NewReader(br)
	if s, err := r.ReadString(5); err != nil || s != "hello" {
		t.Fatal(s, err)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "TRAILER" {
		t.Fatalf("rest %q", rest)
	}
}

func TestBytesReader(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.WriteBytesFrom(uint64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	w.WriteUint64(42)
	w.Flush()
	if !bytes.HasPrefix(buf.Bytes(), AppendString(nil, string(data))) {
		t.Fatal("WriteBytesFrom differs from AppendString")
	}

	r := NewReader(iotest.OneByteReader(bytes.NewReader(buf.Bytes())))
	br, err := r.OpenBytes(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if br.Len() != uint64(len(data)) {
		t.Fatalf("Len %d", br.Len())
	}
	got, err := io.ReadAll(br)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("body mismatch: %v", err)
	}
	if v, err := r.ReadUint64(); err != nil || v != 42 {
		t.Fatalf("next item: %d, %v", v, err)
	}

	// Discard, truncation, bad padding, limit.
	r = NewReader(bytes.NewReader(buf.Bytes()))
	br, _ = r.OpenBytes(1 << 20)
	if err := br.Discard(); err != nil {
		t.Fatal(err)
	}
	if v, _ := r.ReadUint64(); v != 42 {
		t.Fatal("Discard misplaced the stream")
	}
	br, _ = NewReader(bytes.NewReader(buf.Bytes()[:100])).OpenBytes(1 << 20)
	if _, err := io.ReadAll(br); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: %v", err)
	}
	bad := append(AppendUint64(nil, 1), 'x', 0, 0, 9, 0, 0, 0, 0)
	br, _ = NewReader(bytes.NewReader(bad)).OpenBytes(10)
	if _, err := io.ReadAll(br); !errors.Is(err, ErrPadding) {
		t.Fatalf("bad padding: %v", err)
	}
	if _, err := NewReader(bytes.NewReader(bad)).OpenBytes(0); !errors.Is(err, ErrTooLong) {
		t.Fatalf("limit: %v", err)
	}
	if err := NewWriter(io.Discard).WriteBytesFrom(10, strings.NewReader("abc")); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short source: %v", err)
	}
}

func TestNoEOF(t *testing.T) {
	if !errors.Is(NoEOF(io.EOF), io.ErrUnexpectedEOF) {
		t.Error("io.EOF not converted")
	}
	if NoEOF(nil) != nil || NoEOF(ErrPadding) != ErrPadding {
		t.Error("other errors changed")
	}
}

// FuzzReader decodes a sequence of items chosen by the input itself and
// checks that whatever decodes re-encodes to exactly the bytes consumed.
func FuzzReader(f *testing.F) {
	f.Add([]byte{})
	f.Add(append([]byte{0}, AppendUint64(nil, 7)...))
	f.Add(append([]byte{1}, AppendString(nil, "hello")...))
	f.Add(append([]byte{2}, AppendStrings(nil, []string{"a", "bcdefghij", ""})...))
	f.Add(append([]byte{3}, AppendUint64(nil, 1<<32)...))
	f.Add(append([]byte{4}, AppendUint64(nil, 2)...))
	f.Add(append([]byte{5}, AppendString(nil, "streamed blob")...))
	f.Add(append([]byte{1}, 3, 0, 0, 0, 0, 0, 0, 0, 'a', 'b', 'c', 0, 0, 1, 0, 0))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		op, data := in[0], in[1:]
		cr := &countingReader{r: bytes.NewReader(data)}
		r := NewReader(cr)
		var enc []byte
		var err error
		switch op % 6 {
		case 0:
			var v uint64
			v, err = r.ReadUint64()
			enc = AppendUint64(nil, v)
		case 1:
			var s string
			s, err = r.ReadString(64)
			enc = AppendString(nil, s)
		case 2:
			var ss []string
			ss, err = r.ReadStrings(8, 32)
			enc = AppendStrings(nil, ss)
		case 3:
			var v uint64
			v, err = r.ReadInt()
			if err == nil && v >= 1<<32 {
				t.Fatalf("ReadInt accepted %d", v)
			}
			enc = AppendUint64(nil, v)
		case 4:
			var v bool
			v, err = r.ReadBool()
			enc = AppendUint64(nil, map[bool]uint64{false: 0, true: 1}[v])
		case 5:
			var br *BytesReader
			br, err = r.OpenBytes(64)
			if err == nil {
				var body []byte
				body, err = io.ReadAll(br)
				enc = AppendString(nil, string(body))
			}
		}
		if err != nil {
			return
		}
		if !bytes.Equal(enc, data[:cr.n]) {
			t.Fatalf("consumed %x, re-encoded %x", data[:cr.n], enc)
		}
	})
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func BenchmarkReadString(b *testing.B) {
	enc := AppendString(nil, "/nix/store/hca0aaaaaaaaaaaaaaaaaaaaaaaaaaaa-top")
	rd := bytes.NewReader(enc)
	r := NewReader(rd)
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		rd.Reset(enc)
		if _, err := r.ReadString(1000); err != nil {
			b.Fatal(err)
		}
	}
}
