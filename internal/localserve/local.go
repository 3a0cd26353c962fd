// Package localserve binds the local store and the builder to what a serve
// session needs (serve.Backend), so that the protocol package itself depends
// on nothing but the store vocabulary. The local store is a store.Closurer
// (closures from its database), a store.Importer (all-or-nothing
// ImportPaths) and a store.Batcher (a copy's AddToStoreNar commands staged
// and committed together) by itself; this package adds the builder:
// internal/build with the machine's settings and each client's limits.
package localserve

import (
	"context"

	"ferry/internal/localstore"
	"ferry/internal/serve"
	"ferry/internal/settings"
)

// NewBackend returns the Backend of a serve session over the local store
// st. Builds run with the machine's settings s (nil means
// settings.Default()) and the limits each client sends; autoGC, if not nil,
// is build.Options.AutoGC (min-free and max-free while builds run).
//
// The serve command opens st for one session and closes it when Serve
// returns; closing it removes the session's temp roots file, which is how a
// session's roots are released whatever way it ends.
func NewBackend(st *localstore.Store, s *settings.Settings, autoGC func(context.Context)) serve.Backend {
	return serve.NewStoreBackend(st, NewBuilder(st, s, autoGC))
}
