package db

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/store"
)

func openTemp(t *testing.T) (*DB, string) {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "db.sqlite")
	d, err := Open(p, &Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, p
}

func mustPath(t *testing.T, s string) storepath.Path {
	t.Helper()
	p, err := storepath.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRoundTrip(t *testing.T) {
	d, _ := openTemp(t)
	ctx := context.Background()
	a := mustPath(t, "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")
	b := mustPath(t, "/nix/store/xl3jbiq4g9jnqn8yp9y4cski5n3ylk1q-foo.txt")
	drv := mustPath(t, "/nix/store/84fz0000000000000000000000000000-top.drv")
	h := hash.Sum(hash.SHA256, []byte("x"))
	ca, _ := storepath.ParseContentAddress("fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw")
	infos := []*store.PathInfo{
		{Path: a, NarHash: h, NarSize: 120, CA: ca},
		{Path: b, NarHash: h, References: []storepath.Path{a, b}, Deriver: drv, Ultimate: true, Sigs: []string{"k:1", "k:2"}},
	}
	err := d.Write(ctx, func(tx *Tx) error {
		ids := map[storepath.Path]int64{}
		for _, in := range infos {
			id, err := tx.RegisterValidPath(in)
			if err != nil {
				return err
			}
			ids[in.Path] = id
		}
		for _, in := range infos {
			for _, r := range in.References {
				if err := tx.AddReference(ids[in.Path], ids[r]); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = d.Read(ctx, func(tx *Tx) error {
		got, err := tx.QueryPathInfo(b)
		if err != nil {
			return err
		}
		if got.NarHash != h || !got.Ultimate || got.Deriver != drv || len(got.Sigs) != 2 || len(got.References) != 2 || got.NarSize != 0 {
			t.Errorf("got %+v", got)
		}
		got, err = tx.QueryPathInfo(a)
		if err != nil {
			return err
		}
		if got.CA != ca || got.NarSize != 120 {
			t.Errorf("got %+v", got)
		}
		refs, err := tx.QueryReferrers(a)
		if err != nil || len(refs) != 1 || refs[0] != b {
			t.Errorf("referrers %v %v", refs, err)
		}
		p, ok, err := tx.QueryPathFromHashPart(storepath.DefaultDir, a.HashPart())
		if err != nil || !ok || p != a {
			t.Errorf("hash part: %v %v %v", p, ok, err)
		}
		_, err = tx.QueryPathInfo(drv)
		if !errors.Is(err, store.ErrNotValid) {
			t.Errorf("want not valid, got %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Invalidating a still-referenced path fails; b (self-ref) can go.
	if err := d.Write(ctx, func(tx *Tx) error { return tx.InvalidatePath(a) }); err == nil {
		t.Error("invalidating a referenced path succeeded")
	}
	if err := d.Write(ctx, func(tx *Tx) error { return tx.InvalidatePath(b) }); err != nil {
		t.Error(err)
	}
	if err := d.Write(ctx, func(tx *Tx) error { return tx.InvalidatePath(a) }); err != nil {
		t.Error(err)
	}
}

// TestSchemaMatchesNix compares sqlite_master with a database made by
// real Nix, when sqlite3 and nix-store are installed.
func TestSchemaMatchesNix(t *testing.T) {
	for _, tool := range []string{"sqlite3", "nix-store"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("missing %s", tool)
			}
			t.Skip(tool, " missing")
		}
	}
	_, ours := openTemp(t)
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("x"), 0o644)
	cmd := exec.Command("nix-store", "--store", filepath.Join(dir, "s"), "--add", f)
	cmd.Env = append(os.Environ(), "NIX_CONFIG=build-users-group =\nsubstituters =", "HOME="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nix-store: %v\n%s", err, out)
	}
	dump := func(p string) string {
		out, err := exec.Command("sqlite3", p, "select type, name, tbl_name, sql from sqlite_master order by name; pragma journal_mode; pragma page_size; pragma user_version;").CombinedOutput()
		if err != nil {
			t.Fatalf("sqlite3: %v\n%s", err, out)
		}
		return string(out)
	}
	theirs := filepath.Join(dir, "s/nix/var/nix/db/db.sqlite")
	if a, b := dump(ours), dump(theirs); a != b {
		t.Errorf("schema differs:\nferry:\n%s\nnix:\n%s", a, b)
	}
	if !strings.Contains(Schema(), "create table if not exists ValidPaths") {
		t.Error("schema text")
	}
}
