package rewrite

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"ferry/nix/hash"
)

func TestWriter(t *testing.T) {
	// Written in every split, the result and the offsets are the same.
	in := "xxAAAAyyAAAAAAzzAAA"
	for split := 0; split <= len(in); split++ {
		var out bytes.Buffer
		w := &Writer{W: &out, From: []byte("AAAA"), To: []byte("BBBB")}
		io.WriteString(w, in[:split])
		io.WriteString(w, in[split:])
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := out.String(); got != "xxBBBByyBBBBAAzzAAA" {
			t.Errorf("split %d: %q", split, got)
		}
		if len(w.Matches) != 2 || w.Matches[0] != 2 || w.Matches[1] != 8 {
			t.Errorf("split %d: matches %v", split, w.Matches)
		}
	}
	var out bytes.Buffer
	w, flush := Chain(&out, [][2]string{{"ab", "cd"}, {"cd", "ef"}})
	io.WriteString(w, "abcdxx")
	if err := flush(); err != nil || out.String() != "efefxx" {
		t.Errorf("chain: %q %v", out.String(), err)
	}
}

func TestModuloHasher(t *testing.T) {
	mod := strings.Repeat("q", 32)
	m := NewModuloHasher(hash.SHA256, mod)
	io.WriteString(m, "pre "+mod+" post")
	got, err := m.Sum()
	if err != nil {
		t.Fatal(err)
	}
	want := hash.Sum(hash.SHA256, []byte("pre "+strings.Repeat("\x00", 32)+" post|4"))
	if !got.Equal(want) {
		t.Errorf("modulo hash %s, want %s", got, want)
	}
}
