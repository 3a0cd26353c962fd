package gc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"ferry/internal/localstore"
	"ferry/internal/lock"
	"ferry/internal/nixtest"
	"ferry/nix/storepath"
)

func openStore(t testing.TB, root string) *localstore.Store {
	t.Helper()
	s, err := localstore.Open(root, &localstore.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// builder opens root in a separate Store whose temp roots go away with
// it: paths added through it are not kept by this process's temp roots
// once it is closed (the temp roots file lives while any Store of the
// process on root is open, so no other may be open meanwhile).
func build(t testing.TB, root string, fn func(s *localstore.Store)) {
	t.Helper()
	s, err := localstore.Open(root, &localstore.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	fn(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func addText(t testing.TB, s *localstore.Store, name, content string, refs ...storepath.Path) storepath.Path {
	t.Helper()
	info, err := s.AddText(context.Background(), name, []byte(content), refs)
	if err != nil {
		t.Fatal(err)
	}
	return info.Path
}

func mustParse(t testing.TB, s string) storepath.Path {
	t.Helper()
	p, err := storepath.Parse(strings.TrimSpace(s))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func valid(t testing.TB, s *localstore.Store, p storepath.Path) bool {
	t.Helper()
	ok, err := s.IsValidPath(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func exists(s *localstore.Store, p storepath.Path) bool {
	_, err := os.Lstat(s.RealPath(p))
	return err == nil
}

func TestAutoRootPath(t *testing.T) {
	// Made by nix-store --add-root /tmp/myroot (2.8.0). docs/store.md
	// §6.5 gives 5fga4282d24hnp8cpp00k0ygls67rdh3, which real Nix does
	// not produce.
	got := filepath.Base(AutoRootPath("/x", "/tmp/myroot"))
	if got != "3abp5lcynjkdk978spzz40xcp16kxa95" {
		t.Errorf("AutoRootPath = %s", got)
	}
}

func TestToStorePath(t *testing.T) {
	const h = "19mw70w8drkgn53791gs2mwvyl34s5v6"
	tests := []struct {
		in   string
		want string
	}{
		{"/nix/store/" + h + "-a.txt", "/nix/store/" + h + "-a.txt"},
		{"/nix/store/" + h + "-a/bin/sh", "/nix/store/" + h + "-a"},
		{"/r/nix/store/" + h + "-a/lib", "/nix/store/" + h + "-a"},
		{"/nix/store/" + h + "-a.txt.lock", "/nix/store/" + h + "-a.txt.lock"},
		{"/nix/store/.links/x", ""},
		{"/nix/store", ""},
		{"/nix/storex/" + h + "-a", ""},
		{"/other/" + h + "-a", ""},
		{"garbage", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, ok := toStorePath(storepath.DefaultDir, "/r/nix/store", tt.in)
			if string(p) != tt.want || ok != (tt.want != "") {
				t.Errorf("toStorePath(%q) = %q, %v; want %q", tt.in, p, ok, tt.want)
			}
		})
	}
}

// TestServerProtocol talks to the gc-socket by hand: every line is
// answered "1", garbage too, and the hash part of a store path, given in
// the logical or the physical store directory, becomes a temp root.
func TestServerProtocol(t *testing.T) {
	state := t.TempDir()
	r := newRoots()
	srv, err := startServer(state, storepath.DefaultDir, "/r/nix/store", r)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.close()
	st, err := os.Stat(lock.GCSocketPath(state))
	if err != nil || st.Mode().Perm() != 0o666 {
		t.Fatalf("socket: %v %v", st, err)
	}
	c, err := net.Dial("unix", lock.GCSocketPath(state))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const h1, h2 = "19mw70w8drkgn53791gs2mwvyl34s5v6", "3jb89w1q3xcj2sfly0g7h4w91iv5xs4z"
	for _, line := range []string{"/nix/store/" + h1 + "-a.txt", "garbage", "/r/nix/store/" + h2 + "-b/x"} {
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(b[:]); err != nil || b[0] != '1' {
			t.Fatalf("after %q: %q, %v", line, b, err)
		}
	}
	if !r.has(h1) || !r.has(h2) || len(r.temp) != 2 {
		t.Errorf("temp roots = %v", r.temp)
	}
	// An overlong line ends the connection without an answer.
	c.Write(bytes.Repeat([]byte("x"), maxRootLine+10))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if n, err := c.Read(b[:]); n != 0 || err == nil {
		t.Errorf("overlong line answered %q, %v", b[:n], err)
	}
}

// TestServerWaitsForDeletion: a client asking for the path being deleted
// gets its "1" only when the deletion ends.
func TestServerWaitsForDeletion(t *testing.T) {
	r := newRoots()
	const h = "19mw70w8drkgn53791gs2mwvyl34s5v6"
	if !r.begin(h) {
		t.Fatal("begin refused")
	}
	done := make(chan struct{})
	go func() {
		r.add(h)
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("add returned during the deletion")
	case <-time.After(50 * time.Millisecond):
	}
	r.end()
	<-done
	if r.begin(h) {
		t.Error("begin accepted a temp root")
	}
}

type fixture struct {
	root string
	s    *localstore.Store
	// live and dead paths the plan must classify.
	live, dead []storepath.Path
	// strays are non-path names that must be deleted.
	strays []string
}

// newFixture builds a store with roots of every kind, written partly by
// real Nix and partly by ferry.
func newFixture(t *testing.T) *fixture {
	nixtest.RequireNix(t)
	root := t.TempDir()
	work := t.TempDir()
	// Let Nix create the store, so its layout (gcroots/profiles) is Nix's.
	os.WriteFile(filepath.Join(work, "nixfile"), []byte("from nix\n"), 0o644)
	os.WriteFile(filepath.Join(work, "nixgarbage"), []byte("nix garbage\n"), 0o644)
	nixLive := mustParse(t, nixtest.Line(t, "nix-store", "--store", root, "--add", filepath.Join(work, "nixfile")))
	nixDead := mustParse(t, nixtest.Line(t, "nix-store", "--store", root, "--add", filepath.Join(work, "nixgarbage")))
	drv := mustParse(t, nixtest.Line(t, "nix-instantiate", "--store", root, "-E",
		`derivation { name = "d"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo"]; src = builtins.toFile "src" "x"; }`))
	drvSrc := mustParse(t, nixtest.Line(t, "nix-store", "--store", root, "-q", "--references", drv.String()))

	f := &fixture{root: root}
	var top, dep, itop, idep, prof, fileRoot, g1, g2, g3 storepath.Path
	var lockName string
	build(t, root, func(s *localstore.Store) {
		state := s.StateDir()

		dep = addText(t, s, "dep", "dep")
		top = addText(t, s, "top", "top "+dep.String(), dep)
		os.Symlink(top.String(), filepath.Join(state, "gcroots", "direct"))

		idep = addText(t, s, "idep", "idep")
		itop = addText(t, s, "itop", "itop "+idep.String(), idep)
		if _, err := AddRoot(context.Background(), s, filepath.Join(work, "result"), itop); err != nil {
			t.Fatal(err)
		}

		prof = addText(t, s, "profile", "profile")
		os.MkdirAll(filepath.Join(state, "profiles", "per-user", "u"), 0o755)
		os.Symlink(prof.String(), filepath.Join(state, "profiles", "per-user", "u", "p-1-link"))

		fileRoot = addText(t, s, "fileroot", "fileroot")
		os.WriteFile(filepath.Join(state, "gcroots", fileRoot.Base()), nil, 0o644)

		os.Symlink(nixLive.String(), filepath.Join(state, "gcroots", "nixlive"))
		// A stale indirect root and a root pointing at an invalid path.
		os.MkdirAll(filepath.Join(state, "gcroots", "auto"), 0o755)
		os.Symlink(filepath.Join(work, "gone"), filepath.Join(state, "gcroots", "auto", "stale"))
		os.Symlink("/nix/store/00000000000000000000000000000000-nope", filepath.Join(state, "gcroots", "invalid"))

		g1 = addText(t, s, "g1", "g1")
		g2 = addText(t, s, "g2", "g2 "+g1.String(), g1)
		g3 = addText(t, s, "g3", "g3 "+g2.String()+dep.String(), g2, dep)

		// Leftovers: a stale lock file, a dead ferry temp entry, a dead Nix
		// spool directory.
		lockName = g1.Base() + ".lock"
		os.WriteFile(filepath.Join(s.RealDir(), lockName), nil, 0o600)
		os.Mkdir(filepath.Join(s.RealDir(), localstore.TempPrefix+"999999999-1"), 0o755)
		os.Mkdir(filepath.Join(s.RealDir(), "add-999999999-3"), 0o755)
		f.strays = []string{localstore.TempPrefix + "999999999-1", "add-999999999-3"}
	})
	f.s = openStore(t, root)
	f.live = []storepath.Path{top, dep, itop, idep, prof, fileRoot, nixLive}
	f.dead = []storepath.Path{g1, g2, g3, nixDead, drv, drvSrc, mustParse(t, "/nix/store/"+lockName)}
	return f
}

func sortedStrings[T ~string](ps []T) []string {
	var out []string
	for _, p := range ps {
		out = append(out, string(p))
	}
	sort.Strings(out)
	return out
}

// deadNames is the plan as nix-store --gc --print-dead prints it: every
// entry, store path or not.
func deadNames(c *Collection) []string {
	var out []string
	for _, e := range c.Dead {
		out = append(out, e.String())
	}
	sort.Strings(out)
	return out
}

func TestCollect(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	s := f.s

	// The plan agrees with nix-store --gc --print-dead on the same store.
	c, err := Plan(ctx, s, &Options{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	gotDead := deadNames(c)
	want := sortedStrings(f.dead)
	for _, n := range f.strays {
		want = append(want, "/nix/store/"+n)
	}
	sort.Strings(want)
	if strings.Join(gotDead, "\n") != strings.Join(want, "\n") {
		t.Errorf("dead:\n%s\nwant:\n%s", strings.Join(gotDead, "\n"), strings.Join(want, "\n"))
	}
	for _, p := range f.live {
		if !contains(c.Live, p) {
			t.Errorf("%s is not live", p)
		}
	}
	// Referrers are deleted before their references.
	pos := map[storepath.Path]int{}
	for i, e := range c.Dead {
		pos[e.Path] = i
	}
	if !(pos[f.dead[2]] < pos[f.dead[1]] && pos[f.dead[1]] < pos[f.dead[0]]) {
		t.Errorf("deletion order: %v", c.Dead)
	}
	dry, err := Execute(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.Deleted) != len(c.Dead) || dry.BytesFreed == 0 {
		t.Errorf("dry run: %d deleted of %d, %d bytes", len(dry.Deleted), len(c.Dead), dry.BytesFreed)
	}
	for _, p := range f.dead {
		if !exists(s, p) {
			t.Errorf("dry run deleted %s", p)
		}
	}

	if _, err := os.Lstat(filepath.Join(s.StateDir(), "gcroots", "auto", "stale")); err != nil {
		t.Errorf("dry run removed a stale auto root: %v", err)
	}
	nixDead := strings.Fields(string(nixtest.Nix(t, nil, "nix-store", "--store", f.root, "--gc", "--print-dead")))
	sort.Strings(nixDead)
	if strings.Join(nixDead, "\n") != strings.Join(gotDead, "\n") {
		t.Errorf("nix-store --print-dead:\n%s\nferry:\n%s", strings.Join(nixDead, "\n"), strings.Join(gotDead, "\n"))
	}
	nixLive := strings.Fields(string(nixtest.Nix(t, nil, "nix-store", "--store", f.root, "--gc", "--print-live")))
	for _, p := range f.live {
		if !containsString(nixLive, p.String()) {
			t.Errorf("nix does not consider %s live", p)
		}
	}
	// Nix 2.8's print-dead deletes non-path entries; put them back.
	for _, n := range f.strays {
		os.Mkdir(filepath.Join(s.RealDir(), n), 0o755)
	}

	c, res, err := Collect(ctx, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Kept) != 0 || len(res.Deleted) != len(f.dead)+len(f.strays) {
		t.Errorf("deleted %v, kept %v", res.Deleted, res.Kept)
	}
	for _, p := range f.dead {
		if valid(t, s, p) || exists(s, p) {
			t.Errorf("%s survived", p)
		}
	}
	for _, p := range f.live {
		if !valid(t, s, p) || !exists(s, p) {
			t.Errorf("%s was collected", p)
		}
	}
	for _, n := range f.strays {
		if _, err := os.Lstat(filepath.Join(s.RealDir(), n)); err == nil {
			t.Errorf("%s survived", n)
		}
	}
	if _, err := os.Lstat(filepath.Join(s.StateDir(), "gcroots", "auto", "stale")); err == nil {
		t.Error("stale auto root kept")
	}
	if _, err := os.Lstat(lock.GCSocketPath(s.StateDir())); err != nil {
		t.Errorf("socket file: %v", err)
	}
	if !strings.HasPrefix(res.Summary(false), "9 store paths deleted, 0.00 MiB freed") {
		t.Errorf("summary %q", res.Summary(false))
	}
	_ = c
	nixtest.Nix(t, nil, "nix-store", "--store", f.root, "--verify", "--check-contents")
	// Nothing more to collect, by Nix's account either.
	if out := nixtest.Nix(t, nil, "nix-store", "--store", f.root, "--gc", "--print-dead"); len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("nix still finds garbage: %s", out)
	}
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func TestDeleteSpecific(t *testing.T) {
	nixtest.RequireNix(t)
	ctx := context.Background()
	root := t.TempDir()
	var a, c, d storepath.Path
	build(t, root, func(s *localstore.Store) {
		a = addText(t, s, "a", "a")
		b := addText(t, s, "b", "b "+a.String(), a)
		os.Symlink(b.String(), filepath.Join(s.StateDir(), "gcroots", "b"))
		c = addText(t, s, "c", "c")
		d = addText(t, s, "d", "d "+c.String(), c)
	})
	s := openStore(t, root)

	if _, err := Plan(ctx, s, &Options{Paths: []storepath.Path{a}}); !errors.Is(err, ErrAlive) {
		t.Errorf("deleting a live path: %v", err)
	}
	if _, err := Plan(ctx, s, &Options{Paths: []storepath.Path{c}}); !errors.Is(err, ErrAlive) {
		t.Errorf("deleting a referenced path: %v", err)
	}
	_, res, err := Collect(ctx, s, &Options{Paths: []storepath.Path{d}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deleted) != 1 || valid(t, s, d) || !valid(t, s, c) {
		t.Errorf("deleted %v", res.Deleted)
	}
}

func TestMaxFreed(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	build(t, root, func(s *localstore.Store) {
		for i := 0; i < 5; i++ {
			addText(t, s, "f", strings.Repeat("x", 1000+i))
		}
	})
	s := openStore(t, root)
	_, res, err := Collect(ctx, s, &Options{MaxFreed: 1500, NoRuntimeRoots: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.LimitReached || len(res.Deleted) != 2 {
		t.Errorf("deleted %d, freed %d, limit %v", len(res.Deleted), res.BytesFreed, res.LimitReached)
	}
	all, _ := s.QueryAllValidPaths(ctx)
	if len(all) != 3 {
		t.Errorf("%d paths left", len(all))
	}
}

// FuzzSocketLine feeds arbitrary gc-socket lines to the parser the
// server uses: it never panics, and what it accepts is a hash part.
func FuzzSocketLine(f *testing.F) {
	f.Add("/nix/store/19mw70w8drkgn53791gs2mwvyl34s5v6-a.txt")
	f.Add("/r/nix/store/19mw70w8drkgn53791gs2mwvyl34s5v6-a/bin/../x")
	f.Add("/nix/store/../etc/passwd")
	f.Add("garbage")
	f.Add("/nix/store/")
	f.Fuzz(func(t *testing.T, line string) {
		h, ok := hashPartOf(storepath.DefaultDir, "/r/nix/store", line)
		if ok && len(h) != storepath.HashLen {
			t.Errorf("hash part %q of %q", h, line)
		}
	})
}

// TestServerLongPath: a state directory too deep for sun_path still gets
// its socket, bound through the directory's descriptor.
func TestServerLongPath(t *testing.T) {
	state := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	srv, err := startServer(state, storepath.DefaultDir, "/r/nix/store", newRoots())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.close()
	d, err := os.Open(filepath.Dir(lock.GCSocketPath(state)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c, err := net.Dial("unix", fmt.Sprintf("/proc/self/fd/%d/socket", d.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x\n"))
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil || b[0] != '1' {
		t.Errorf("%q %v", b, err)
	}
}
