package localstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/store"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
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

func TestResolve(t *testing.T) {
	for _, k := range []string{"FERRY_STORE", "NIX_REMOTE", "NIX_STORE_DIR", "NIX_STORE", "NIX_STATE_DIR", "NIX_LOG_DIR"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	t.Setenv("XDG_DATA_HOME", "/xdg")
	chroot := func(root string) Layout { return RootLayout(root) }
	for _, tt := range []struct {
		uri      string
		want     Layout
		features []string
		warn     string
	}{
		{uri: "/some/dir", want: chroot("/some/dir")},
		{uri: "/some/dir/", want: chroot("/some/dir")},
		{uri: "local", want: Layout{Dir: "/nix/store", RealDir: "/nix/store", StateDir: "/nix/var/nix", LogDir: "/nix/var/log/nix"}},
		{uri: "daemon", want: Layout{Dir: "/nix/store", RealDir: "/nix/store", StateDir: "/nix/var/nix", LogDir: "/nix/var/log/nix"}},
		{uri: "/", want: chroot("/")},
		{uri: "local?root=/r", want: chroot("/r")},
		// The path wins over root=, as in Nix's openFromNonUri.
		{uri: "/d?root=/r", want: chroot("/d")},
		// store= changes the logical directory only: the objects of a
		// chroot store stay in root/nix/store (local-fs-store.hh@2.8.0).
		{uri: "/r?store=/l", want: Layout{Dir: "/l", RealDir: "/r/nix/store", StateDir: "/r/nix/var/nix", LogDir: "/r/nix/var/log/nix", Root: "/r"}},
		{uri: "local?store=/l&state=/s&log=/g", want: Layout{Dir: "/l", RealDir: "/l", StateDir: "/s", LogDir: "/g"}},
		{uri: "local?store=/l/&real=/p//q", want: Layout{Dir: "/l", RealDir: "/p/q", StateDir: "/nix/var/nix", LogDir: "/nix/var/log/nix"}},
		{uri: "/r?system-features=kvm%20big&require-sigs=false&priority=10&trusted=1", want: chroot("/r"), features: []string{"kvm", "big"}},
		{uri: "/r?read-only=true", want: chroot("/r"), warn: "unknown setting 'read-only'"},
	} {
		r, err := ResolveString(tt.uri)
		if err != nil {
			t.Errorf("Resolve(%q): %v", tt.uri, err)
			continue
		}
		if diff := cmp.Diff(tt.want, r.Layout); diff != "" {
			t.Errorf("Resolve(%q) (-want +got):\n%s", tt.uri, diff)
		}
		if !slices.Equal(r.Options.SystemFeatures, tt.features) {
			t.Errorf("Resolve(%q): features %q, want %q", tt.uri, r.Options.SystemFeatures, tt.features)
		}
		if w := strings.Join(r.Warnings, "\n"); !strings.Contains(w, tt.warn) || (tt.warn == "") != (w == "") {
			t.Errorf("Resolve(%q): warnings %q, want %q", tt.uri, w, tt.warn)
		}
	}
	for uri, msg := range map[string]string{
		"foo":                        "don't know how to open Nix store 'foo'",
		"/r?store=rel":               "not an absolute path: 'rel'",
		"/r?state=":                  "setting 'state' cannot be empty",
		"/r?require-sigs=maybe":      "Boolean setting 'require-sigs' has invalid value 'maybe'",
		"/r?priority=high":           "setting 'priority' has invalid value 'high'",
		"ssh://host":                 "not a local store",
		"local?store=/a%2":           "invalid URI parameter",
		"/r?store=/nix/store&real=x": "not an absolute path: 'x'",
	} {
		if _, err := ResolveString(uri); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("Resolve(%q): %v, want %q", uri, err, msg)
		}
	}

	// The environment, as Nix's settings read it.
	t.Setenv("NIX_STORE_DIR", "/e/store/")
	t.Setenv("NIX_STATE_DIR", "/e/state")
	t.Setenv("NIX_LOG_DIR", "/e/log")
	r, err := ResolveString("local")
	fatalIf(t, err)
	if diff := cmp.Diff(Layout{Dir: "/e/store", RealDir: "/e/store", StateDir: "/e/state", LogDir: "/e/log"}, r.Layout); diff != "" {
		t.Errorf("local with NIX_*_DIR (-want +got):\n%s", diff)
	}
	// A chroot store keeps the logical directory from the environment but
	// its state under its root, as Nix's does.
	r, err = ResolveString("/r")
	fatalIf(t, err)
	if diff := cmp.Diff(Layout{Dir: "/e/store", RealDir: "/r/nix/store", StateDir: "/r/nix/var/nix", LogDir: "/r/nix/var/log/nix", Root: "/r"}, r.Layout); diff != "" {
		t.Errorf("/r with NIX_*_DIR (-want +got):\n%s", diff)
	}
	// With no --store: the store with no root if its state directory is
	// named, as Nix's; else the default one if writable, else the
	// per-user store.
	r, err = ResolveString("")
	fatalIf(t, err)
	if r.Layout.Root != "" || r.Layout.StateDir != "/e/state" {
		t.Errorf("default with NIX_STATE_DIR: %+v", r)
	}
	os.Unsetenv("NIX_STATE_DIR")
	r, err = ResolveString("")
	fatalIf(t, err)
	if unix.Access("/nix/var/nix", unix.R_OK|unix.W_OK) != nil && (r.Layout.Root != "/xdg/ferry" || !strings.Contains(r.Why, "/nix/var/nix is not writable")) {
		t.Errorf("default with an unwritable state dir: %+v", r)
	}
	state := t.TempDir()
	t.Setenv("NIX_STATE_DIR", state)
	r, err = ResolveString("auto")
	fatalIf(t, err)
	if r.Layout.Root != "" || r.Layout.StateDir != state || r.Layout.Dir != "/e/store" {
		t.Errorf("default with a writable state dir: %+v", r)
	}
	t.Setenv("FERRY_STORE", "/env/store?store=/x")
	r, err = ResolveString("")
	fatalIf(t, err)
	if r.Layout.Root != "/env/store" || r.Layout.Dir != "/x" || r.Why != "FERRY_STORE=/env/store?store=/x" {
		t.Errorf("FERRY_STORE: %+v", r)
	}
	// NIX_REMOTE is Nix's default store URI; FERRY_STORE comes first.
	t.Setenv("NIX_REMOTE", "local?root=/nr")
	if r, err = ResolveString(""); err != nil || r.Layout.Root != "/env/store" {
		t.Errorf("FERRY_STORE and NIX_REMOTE: %+v, %v", r, err)
	}
	os.Unsetenv("FERRY_STORE")
	if r, err = ResolveString("auto"); err != nil || r.Layout.Root != "/nr" || r.Why != "NIX_REMOTE=local?root=/nr" {
		t.Errorf("NIX_REMOTE: %+v, %v", r, err)
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
