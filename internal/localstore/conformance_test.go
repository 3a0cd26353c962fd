package localstore_test

import (
	"testing"

	"ferry/internal/localstore"
	"ferry/internal/storetest"
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
