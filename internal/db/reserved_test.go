package db_test

import (
	"os"
	"path/filepath"
	"testing"

	"ferry/internal/db"
	"ferry/internal/localstore"
	"ferry/internal/nixtest"
)

func TestReserve(t *testing.T) {
	for _, tc := range []struct {
		name     string
		existing int64 // -1: no file
		size     int64
		want     int64
	}{
		{"new", -1, 1 << 20, 1 << 20},
		{"grow", 10, 1 << 20, 1 << 20},
		{"same", 1 << 20, 1 << 20, 1 << 20},
		// Nix opens without O_TRUNC and fallocates: a bigger file stays.
		{"bigger stays", 2 << 20, 1 << 20, 2 << 20},
		{"zero creates empty", -1, 0, 0},
		{"zero keeps", 4096, 0, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := db.ReservedPath(dir)
			if tc.existing >= 0 {
				if err := os.WriteFile(p, make([]byte, tc.existing), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := db.Reserve(dir, tc.size); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() != tc.want || st.Mode().Perm() != 0o600 {
				t.Errorf("size %d mode %v, want %d 0600", st.Size(), st.Mode().Perm(), tc.want)
			}
			if err := db.Unreserve(dir); err != nil {
				t.Fatal(err)
			}
			if err := db.Unreserve(dir); err != nil {
				t.Fatalf("second Unreserve: %v", err)
			}
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("reserved file still there: %v", err)
			}
		})
	}
}

// TestOpenReserves: opening a store makes db/reserved of the configured
// size, like Nix (8 MiB by default), and reopening recreates it.
func TestOpenReserves(t *testing.T) {
	for _, tc := range []struct {
		opt  int64
		want int64
	}{{0, 8 << 20}, {12345, 12345}, {-1, 0}} {
		root := t.TempDir()
		p := db.ReservedPath(filepath.Join(root, "nix/var/nix/db"))
		for i := 0; i < 2; i++ {
			s, err := localstore.Open(root, &localstore.Options{ReservedSize: tc.opt})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			st, err := os.Stat(p)
			if err != nil || st.Size() != tc.want {
				t.Fatalf("ReservedSize %d: reserved file %v, %v; want %d bytes", tc.opt, st, err, tc.want)
			}
			os.Remove(p)
		}
	}
}

// TestReservedLikeNix compares ferry's db/reserved with the one real Nix
// makes in a new store.
func TestReservedLikeNix(t *testing.T) {
	nixtest.RequireNix(t)
	ours, theirs := t.TempDir(), t.TempDir()
	s, err := localstore.Open(ours, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, stderr, err := nixOpen(t, theirs, "--verify"); err != nil {
		t.Fatalf("nix-store: %v\n%s", err, stderr)
	}
	a, err := os.Stat(db.ReservedPath(filepath.Join(ours, "nix/var/nix/db")))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.Stat(db.ReservedPath(filepath.Join(theirs, "nix/var/nix/db")))
	if err != nil {
		t.Fatal(err)
	}
	if a.Size() != b.Size() || a.Mode() != b.Mode() {
		t.Errorf("ferry: %d %v, nix: %d %v", a.Size(), a.Mode(), b.Size(), b.Mode())
	}
}
