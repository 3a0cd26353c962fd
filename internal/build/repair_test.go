package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/localstore"
	"ferry/internal/nixtest"
	"ferry/internal/storefs"
	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/rewrite"
	"ferry/nix/storepath"
	"ferry/store"
)

// repairFixture is a store with built derivations to damage:
// lib (outputs out and dev, referring to themselves and each other),
// user (referring to lib's out) and random (a different output each build).
type repairFixture struct {
	st                 *localstore.Store
	libDrv             storepath.Path
	lib, dev, user, rd storepath.Path
}

func newRepairFixture(t *testing.T) *repairFixture {
	t.Helper()
	st := openStore(t)
	ctx := context.Background()
	lib := makeDrv(t, st, drvSpec{name: "repair-lib", outputs: []string{"out", "dev"},
		script: `mkdir $out $dev; echo lib > $out/lib; echo $out > $out/self; echo $dev > $out/dev-ref; echo dev > $dev/file; mkdir $out/sub; echo x > $out/sub/x; ln -s lib $out/link`})
	libDrv := addDrv(t, st, lib)
	user := makeDrv(t, st, drvSpec{name: "repair-user", inputs: map[storepath.Path][]string{libDrv: {"out"}},
		script: "echo " + string(lib.Outputs["out"].Path) + " > $out"})
	userDrv := addDrv(t, st, user)
	random := makeDrv(t, st, drvSpec{name: "repair-random", script: `cat /proc/sys/kernel/random/uuid > $out`})
	randomDrv := addDrv(t, st, random)
	results, err := BuildGraph(ctx, st, []storepath.Path{userDrv, randomDrv}, 2, &Options{Settings: testSettings()})
	must(t, err)
	for p, r := range results {
		if r.Status != store.Built {
			t.Fatalf("build %s: %v %s", p, r.Status, r.ErrorMsg)
		}
	}
	return &repairFixture{st: st, libDrv: libDrv, lib: lib.Outputs["out"].Path, dev: lib.Outputs["dev"].Path,
		user: user.Outputs["out"].Path, rd: random.Outputs["out"].Path}
}

// verifyRepair runs verify --check-contents --repair with RepairPath.
func verifyRepair(t *testing.T, st *localstore.Store) *localstore.VerifyReport {
	t.Helper()
	opts := &Options{Settings: testSettings()}
	rep, err := st.VerifyWith(context.Background(), &localstore.VerifyOptions{
		CheckContents: true,
		Repair:        func(ctx context.Context, p storepath.Path) error { return RepairPath(ctx, st, p, opts) },
	})
	must(t, err)
	return rep
}

// nixVerifies checks with real Nix that the store is consistent.
func nixVerifies(t *testing.T, st *localstore.Store) {
	t.Helper()
	nixtest.Nix(t, nil, "nix-store", "--store", st.Root(), "--verify", "--check-contents")
}

// damage makes the regular file rel of p writable and changes it.
func damage(t *testing.T, st *localstore.Store, p storepath.Path, rel string) {
	t.Helper()
	f := filepath.Join(st.RealPath(p), rel)
	must(t, os.Chmod(f, 0o644))
	data, err := os.ReadFile(f)
	must(t, err)
	data[0] ^= 0x20
	must(t, os.WriteFile(f, data, 0o644))
}

// narHashOf hashes p's files.
func narHashOf(t *testing.T, st *localstore.Store, p storepath.Path) hash.Hash {
	t.Helper()
	h := sha256.New()
	must(t, nar.Dump(h, st.RealPath(p)))
	return hash.FromHasher(hash.SHA256, h)
}

// noLeftovers checks that a repair left nothing in the store directory
// but store paths: no temporaries, no scratch outputs.
func noLeftovers(t *testing.T, st *localstore.Store) {
	t.Helper()
	ents, err := os.ReadDir(st.RealDir())
	must(t, err)
	ctx := context.Background()
	for _, e := range ents {
		name := e.Name()
		if name == ".links" || strings.HasSuffix(name, ".lock") {
			continue
		}
		p, err := st.Dir().Join(name)
		if err != nil {
			t.Errorf("leftover %s", name)
			continue
		}
		if ok, _ := st.IsValidPath(ctx, p); !ok {
			t.Errorf("leftover invalid path %s", name)
		}
	}
}

func contains(ps []storepath.Path, p storepath.Path) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

func TestRepair(t *testing.T) {
	nixtest.RequireNix(t)
	requireSandbox(t)
	ctx := context.Background()

	t.Run("modified", func(t *testing.T) {
		f := newRepairFixture(t)
		st := f.st
		before, err := st.QueryPathInfo(ctx, f.lib)
		must(t, err)
		damage(t, st, f.lib, "lib")
		rep := verifyRepair(t, st)
		if !rep.OK() || !contains(rep.Modified, f.lib) || !contains(rep.Repaired, f.lib) {
			t.Fatalf("report %+v", rep)
		}
		if data, _ := os.ReadFile(filepath.Join(st.RealPath(f.lib), "lib")); string(data) != "lib\n" {
			t.Errorf("lib is %q", data)
		}
		if self, _ := os.ReadFile(filepath.Join(st.RealPath(f.lib), "self")); string(self) != string(f.lib)+"\n" {
			t.Errorf("self-reference not rewritten back: %q", self)
		}
		fi, err := os.Lstat(filepath.Join(st.RealPath(f.lib), "lib"))
		must(t, err)
		if fi.Mode().Perm() != 0o444 || fi.ModTime().Unix() != 1 {
			t.Errorf("not canonical: %v %v", fi.Mode(), fi.ModTime())
		}
		after, err := st.QueryPathInfo(ctx, f.lib)
		must(t, err)
		if !after.NarHash.Equal(before.NarHash) || after.NarSize != before.NarSize ||
			strings.Join(pathStrings(after.References), " ") != strings.Join(pathStrings(before.References), " ") || after.Deriver != f.libDrv {
			t.Errorf("info changed:\nbefore %+v\nafter  %+v", before, after)
		}
		noLeftovers(t, st)
		nixVerifies(t, st)
		// Nothing left to repair: the rebuild is not run again.
		res, err := Repair(ctx, st, f.libDrv, mustReadDrv(t, st, f.libDrv), &Options{Settings: testSettings()})
		if err != nil || res.Status != store.AlreadyValid || res.TimesBuilt != 0 {
			t.Errorf("repair of good outputs: %+v %v", res, err)
		}
	})

	t.Run("missing with referrers", func(t *testing.T) {
		f := newRepairFixture(t)
		st := f.st
		_, err := storefs.Delete(st.RealPath(f.lib))
		must(t, err)
		rep := verifyRepair(t, st)
		if !rep.OK() || len(rep.Missing) != 1 || !contains(rep.Repaired, f.lib) || len(rep.Invalidated) != 0 {
			t.Fatalf("report %+v", rep)
		}
		if got := strings.Join(rep.Messages, "\n"); !strings.Contains(got, "path '"+string(f.lib)+"' disappeared, but it still has valid referrers!") {
			t.Errorf("messages %q", got)
		}
		if ok, _ := st.IsValidPath(ctx, f.lib); !ok {
			t.Errorf("%s not valid", f.lib)
		}
		noLeftovers(t, st)
		nixVerifies(t, st)
	})

	t.Run("non-deterministic", func(t *testing.T) {
		f := newRepairFixture(t)
		st := f.st
		before, err := st.QueryPathInfo(ctx, f.rd)
		must(t, err)
		damage(t, st, f.rd, "")
		rep := verifyRepair(t, st)
		if !rep.OK() || !contains(rep.Repaired, f.rd) {
			t.Fatalf("report %+v", rep)
		}
		after, err := st.QueryPathInfo(ctx, f.rd)
		must(t, err)
		if after.NarHash.Equal(before.NarHash) {
			t.Errorf("the rebuild made the same output: %s", after.NarHash)
		}
		if got := narHashOf(t, st, f.rd); !got.Equal(after.NarHash) {
			t.Errorf("database has %s, files %s", after.NarHash, got)
		}
		noLeftovers(t, st)
		nixVerifies(t, st)
	})

	t.Run("no deriver", func(t *testing.T) {
		st := openStore(t)
		info, err := st.AddText(ctx, "plain", []byte("plain text\n"), nil)
		must(t, err)
		damage(t, st, info.Path, "")
		err = RepairPath(ctx, st, info.Path, &Options{Settings: testSettings()})
		if want := "cannot repair path '" + string(info.Path) + "'"; err == nil || err.Error() != want {
			t.Errorf("RepairPath: %v, want %s", err, want)
		}
		rep := verifyRepair(t, st)
		if rep.OK() || len(rep.Repaired) != 0 || !strings.Contains(strings.Join(rep.Messages, "\n"), "cannot repair path '"+string(info.Path)+"'") {
			t.Errorf("report %+v", rep)
		}
	})

	t.Run("deriver not valid", func(t *testing.T) {
		st := openStore(t)
		d := makeDrv(t, st, drvSpec{name: "in-memory", script: "echo hi > $out"})
		dp := drvPathOf(t, st, d)
		res, err := Build(ctx, st, dp, d, &Options{Settings: testSettings(), InMemory: true})
		if err != nil || res.Status != store.Built {
			t.Fatalf("build %+v %v", res, err)
		}
		out := d.Outputs["out"].Path
		damage(t, st, out, "")
		err = RepairPath(ctx, st, out, &Options{Settings: testSettings()})
		if want := "cannot repair path '" + string(out) + "'"; err == nil || err.Error() != want {
			t.Errorf("RepairPath: %v, want %s", err, want)
		}
	})

	t.Run("failing rebuild", func(t *testing.T) {
		f := newRepairFixture(t)
		st := f.st
		damage(t, st, f.lib, "lib")
		broken, _ := os.ReadFile(filepath.Join(st.RealPath(f.lib), "lib"))
		// Without /bin/sh in the sandbox the builder can't start.
		s := testSettings()
		s.SandboxPaths = nil
		err := RepairPath(ctx, st, f.lib, &Options{Settings: s})
		if err == nil {
			t.Fatal("repair without a builder succeeded")
		}
		if data, _ := os.ReadFile(filepath.Join(st.RealPath(f.lib), "lib")); string(data) != string(broken) {
			t.Errorf("a failed repair changed the path: %q", data)
		}
		noLeftovers(t, st)
	})
}

func mustReadDrv(t *testing.T, st *localstore.Store, p storepath.Path) *derivation.Derivation {
	t.Helper()
	d, err := st.ReadDerivation(context.Background(), p)
	must(t, err)
	return d
}

func pathStrings(ps []storepath.Path) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = string(p)
	}
	return out
}

func TestHashRewriter(t *testing.T) {
	from, to := "0123456789abcdfghijklmnpqrsvwxyz", "zyxwvsrqpnmlkjihgfdcba9876543210"
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"none", "nothing to see here"},
		{"whole", from},
		{"middle", "/nix/store/" + from + "-name and more"},
		{"twice", from + from + "x" + from},
		{"prefix only", from[:31]},
		{"split", strings.Repeat("a", 100) + from + strings.Repeat("b", 100)},
	}
	rng := rand.New(rand.NewSource(1))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := strings.ReplaceAll(tt.in, from, to)
			for range 20 {
				var out bytes.Buffer
				rw := &rewrite.Writer{W: &out, From: []byte(from), To: []byte(to)}
				in := []byte(tt.in)
				for len(in) > 0 {
					n := 1 + rng.Intn(len(in))
					if _, err := rw.Write(in[:n]); err != nil {
						t.Fatal(err)
					}
					in = in[n:]
				}
				must(t, rw.Flush())
				if out.String() != want {
					t.Fatalf("got %q, want %q", out.String(), want)
				}
			}
		})
	}
}
