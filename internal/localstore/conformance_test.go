package localstore_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"ferry/internal/localstore"
	"ferry/internal/storetest"
	"ferry/nix/storepath"
	"ferry/store"
)

func TestConformance(t *testing.T) {
	open := func(t *testing.T, root string) store.Store {
		st, err := localstore.Open(root, nil)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	storetest.Run(t, &storetest.Harness{Open: open, Reopen: open})
}

// The same suite on a store whose logical directory is not /nix/store
// (a URI's store=): every path and hash is computed against it, and real
// Nix's GC, opened the same way, honours the store's temp roots.
func TestConformanceLogicalDir(t *testing.T) {
	dir := storepath.Dir(filepath.Join(t.TempDir(), "logical", "store"))
	open := func(t *testing.T, root string) store.Store {
		st, err := store.Open(context.Background(), root+"?store="+string(dir), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := st.(*localstore.Store); !ok {
			t.Fatalf("%T", st)
		}
		return st
	}
	storetest.Run(t, &storetest.Harness{Open: open, Reopen: open, Dir: dir})
	if _, err := os.Stat(string(dir)); !os.IsNotExist(err) {
		t.Errorf("the logical store directory was created on disk: %v", err)
	}
}
