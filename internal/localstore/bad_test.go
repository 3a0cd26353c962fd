package localstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/store"
)

func narOf(t testing.TB, content string) []byte {
	var b bytes.Buffer
	fatalIf(t, nar.DumpBytes(&b, []byte(content)))
	return b.Bytes()
}

// assertNothingNew checks that the store holds exactly want valid paths and
// no temporaries or unregistered objects.
func assertClean(t *testing.T, s *Store, want int) {
	t.Helper()
	all, err := s.QueryAllValidPaths(context.Background())
	fatalIf(t, err)
	if len(all) != want {
		t.Errorf("%d valid paths, want %d: %v", len(all), want, all)
	}
	valid := map[string]bool{}
	for _, p := range all {
		valid[p.Base()] = true
	}
	ents, _ := os.ReadDir(s.RealDir())
	for _, e := range ents {
		n := e.Name()
		if n == ".links" || strings.HasSuffix(n, ".lock") {
			continue
		}
		if !valid[n] {
			t.Errorf("unregistered entry %s left in the store", n)
		}
	}
}

func TestAddToStoreNarRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	good := narOf(t, "contents")
	p := fakePath("bad", "bad")
	base := store.PathInfo{Path: p, NarHash: hash.Sum(hash.SHA256, good), NarSize: uint64(len(good))}
	textHash := hash.Sum(hash.SHA256, []byte("contents"))
	tests := []struct {
		name string
		info func() *store.PathInfo
		nar  []byte
		want string
	}{
		{"hash mismatch", func() *store.PathInfo { i := base; i.NarHash = hash.Sum(hash.SHA256, []byte("x")); return &i }, good, "hash mismatch"},
		{"size mismatch", func() *store.PathInfo { i := base; i.NarSize++; return &i }, good, "size mismatch"},
		{"missing reference", func() *store.PathInfo {
			i := base
			i.References = []storepath.Path{fakePath("nope", "nope")}
			return &i
		}, good, "is not valid"},
		{"truncated nar", func() *store.PathInfo { i := base; return &i }, good[:len(good)-9], "truncated"},
		{"malformed nar", func() *store.PathInfo { i := base; return &i }, append([]byte("garbage!"), good[8:]...), "not a NAR"},
		{"no hash", func() *store.PathInfo { i := base; i.NarHash = hash.Hash{}; return &i }, good, "sha256 NAR hash is required"},
		{"wrong ca", func() *store.PathInfo {
			i := base
			i.CA = storepath.ContentAddress{Method: storepath.Text, Hash: hash.Sum(hash.SHA256, []byte("other"))}
			return &i
		}, good, "ca hash mismatch"},
		{"ca for another path", func() *store.PathInfo {
			i := base
			i.CA = storepath.ContentAddress{Method: storepath.Text, Hash: textHash}
			return &i
		}, good, "gives path"},
		{"outside the store dir", func() *store.PathInfo { i := base; i.Path = "/gnu/store/00000000000000000000000000000000-x"; return &i }, good, "not in the store directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.AddToStoreNar(ctx, tt.info(), bytes.NewReader(tt.nar))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			assertClean(t, s, 0)
		})
	}
	// And the good one goes in.
	fatalIf(t, s.AddToStoreNar(ctx, &base, bytes.NewReader(good)))
	assertClean(t, s, 1)
	// Adding it again consumes the NAR and succeeds.
	r := bytes.NewReader(append(append([]byte{}, good...), "trailer"...))
	fatalIf(t, s.AddToStoreNar(ctx, &base, r))
	if r.Len() != len("trailer") {
		t.Errorf("NAR not consumed exactly: %d left", r.Len())
	}
}

func TestImportRefusesBadStreams(t *testing.T) {
	ctx := context.Background()
	stream, paths := makeStream("imp", 4, 50)
	var missingRef bytes.Buffer
	{
		// A stream whose first path refers to something neither valid nor
		// in the stream: drop the first path of a chain.
		full, _ := makeStream("chain", 3, 50)
		src := openStore(t, t.TempDir())
		_, err := src.Import(ctx, bytes.NewReader(full))
		fatalIf(t, err)
		_, ps := makeStream("chain", 3, 50)
		fatalIf(t, src.Export(ctx, &missingRef, ps[1:]))
	}
	badPath := bytes.Replace(stream, []byte("/nix/store/"), []byte("/nix/stor3/"), 1)
	tests := []struct {
		name   string
		stream []byte
	}{
		{"truncated in a NAR", stream[:100]},
		{"truncated in the first metadata", stream[:200]},
		{"truncated before the end marker", stream[:len(stream)-8]},
		{"truncated in the metadata", stream[:len(stream)-40]},
		{"garbage", []byte("this is not an export stream at all......")},
		{"malformed path", badPath},
		{"missing reference", missingRef.Bytes()},
		{"empty", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			got, err := s.Import(ctx, bytes.NewReader(tt.stream))
			if err == nil {
				t.Fatalf("import succeeded: %v", got)
			}
			t.Log(err)
			assertClean(t, s, 0)
		})
	}
	s := openStore(t, t.TempDir())
	got, err := s.Import(ctx, bytes.NewReader(stream))
	fatalIf(t, err)
	if len(got) != len(paths) {
		t.Fatalf("imported %v", got)
	}
	assertClean(t, s, len(paths))
	// Importing again is a no-op.
	_, err = s.Import(ctx, bytes.NewReader(stream))
	fatalIf(t, err)
	assertClean(t, s, len(paths))
}

func TestInvalidatePath(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	a, err := s.AddText(ctx, "a", []byte("a"), nil)
	fatalIf(t, err)
	b, err := s.AddText(ctx, "b", []byte("b"+string(a.Path)), []storepath.Path{a.Path})
	fatalIf(t, err)
	if err := s.InvalidatePath(ctx, a.Path); !errors.Is(err, ErrPathInUse) {
		t.Fatalf("invalidating a referenced path: %v", err)
	}
	fatalIf(t, s.InvalidatePath(ctx, b.Path))
	fatalIf(t, s.InvalidatePath(ctx, a.Path))
	if _, err := s.QueryPathInfo(ctx, a.Path); !errors.Is(err, store.ErrNotValid) {
		t.Fatalf("still valid: %v", err)
	}
	// Verify notices files whose paths vanish and ones that changed.
	c, err := s.AddText(ctx, "c", []byte("c"), nil)
	fatalIf(t, err)
	d, err := s.AddText(ctx, "d", []byte("d"), nil)
	fatalIf(t, err)
	os.Remove(s.RealPath(c.Path))
	os.Chmod(s.RealPath(d.Path), 0o644)
	os.WriteFile(s.RealPath(d.Path), []byte("D"), 0o644)
	rep, err := s.Verify(ctx, true, false)
	fatalIf(t, err)
	if len(rep.Invalidated) != 1 || rep.Invalidated[0] != c.Path || len(rep.Modified) != 1 || rep.Modified[0] != d.Path || rep.OK() {
		t.Fatalf("verify: %+v", rep)
	}
}

func TestSelect(t *testing.T) {
	t.Setenv("FERRY_STORE", "")
	t.Setenv("XDG_DATA_HOME", "/xdg")
	for _, tt := range []struct{ flag, want string }{
		{"/some/dir", "/some/dir"},
		{"local", "/"},
		{"/", "/"},
		{"local?root=/r", "/r"},
		{"ssh://host", ""},
	} {
		if got, why := Select(tt.flag); got != tt.want || why == "" {
			t.Errorf("Select(%q) = %q, %q; want %q", tt.flag, got, why, tt.want)
		}
	}
	t.Setenv("FERRY_STORE", "/env/store")
	if got, _ := Select(""); got != "/env/store" {
		t.Errorf("FERRY_STORE: %q", got)
	}
	t.Setenv("FERRY_STORE", "")
	got, why := Select("")
	if got != "/" && got != filepath.Join("/xdg", "ferry") {
		t.Errorf("default: %q (%s)", got, why)
	}
}

func TestParseTempName(t *testing.T) {
	for name, want := range map[string]int{".ferry-tmp-12-3": 12, ".ferry-tmp-x-3": 0, "abc": 0, ".ferry-tmp-5": 0} {
		pid, ok := ParseTempName(name)
		if pid != want || ok != (want != 0) {
			t.Errorf("%s: %d %v", name, pid, ok)
		}
	}
}
