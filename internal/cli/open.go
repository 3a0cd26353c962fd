package cli

import (
	"context"
	"fmt"

	"ferry/internal/localstore"
	"ferry/internal/settings"
	"ferry/store"

	// Store implementations register their URI schemes with store.Open.
	_ "ferry/internal/sshstore"
)

// openStore opens the store uri names, whatever kind it is, through
// store.Open: the one place that resolves a store URI. lazy lets a remote
// store's first request share the handshake's round trip
// (store.OpenOptions.LazyHandshake): for commands that make one right away.
func openStore(ctx context.Context, e *Env, conf *settings.Settings, uri string, lazy bool) (store.Store, error) {
	return store.Open(ctx, uri, storeOptions(e, conf, lazy))
}

// storeOptions are the options openStore opens a store with.
func storeOptions(e *Env, conf *settings.Settings, lazy bool) *store.OpenOptions {
	opts := &store.OpenOptions{Log: e.Stderr, Verbose: e.Verbose, ConnectTimeout: e.ConnectTimeout, LazyHandshake: lazy}
	if conf != nil {
		opts.ReservedSize = conf.ReservedSize
		if conf.ReservedSize <= 0 {
			opts.ReservedSize = -1 // Nix's 0: an empty file
		}
	}
	return opts
}

// openConfiguredStore opens the store chosen by --store, FERRY_STORE or
// the defaults, which must be local: what is asked of it (building, GC,
// verifying, adding files) needs the store's own disk. Its db/reserved
// file gets conf's gc-reserved-space.
func openConfiguredStore(ctx context.Context, e *Env, conf *settings.Settings) (*localstore.Store, error) {
	st, err := openStore(ctx, e, conf, e.Store, true)
	if err != nil {
		return nil, err
	}
	local, ok := st.(*localstore.Store)
	if !ok {
		st.Close()
		return nil, store.Unsupported(e.Store, "do this: it needs a local store")
	}
	return local, nil
}

// withStore runs f on the selected local store, opened with nix.conf's
// settings, and closes it.
func withStore(ctx context.Context, e *Env, f func(*localstore.Store) error) error {
	conf, err := settings.Load(nil)
	if err != nil {
		return err
	}
	return withConfiguredStore(ctx, e, conf, f)
}

// withConfiguredStore is withStore with settings already loaded.
func withConfiguredStore(ctx context.Context, e *Env, conf *settings.Settings, f func(*localstore.Store) error) error {
	st, err := openConfiguredStore(ctx, e, conf)
	if err != nil {
		return err
	}
	return closeAfter(st, f(st))
}

// withAnyStore runs f on the selected store of any kind (local, ssh://).
func withAnyStore(ctx context.Context, e *Env, f func(store.Store) error) error {
	conf, err := settings.Load(nil)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, e, conf, e.Store, true)
	if err != nil {
		return err
	}
	return closeAfter(st, f(st))
}

// closeAfter closes st and returns err, or the close error if err is nil.
func closeAfter(st store.Store, err error) error {
	if cerr := st.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close store: %w", cerr)
	}
	return err
}
