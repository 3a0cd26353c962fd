package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/store"
)

// NewRelayBackend makes a Backend of any store st, which the URI uri names:
// what `ferry serve --store URI` serves when the store is not local (an
// ssh:// store, so a session relays to another serve process, and chains of
// ssh hops work). It uses what st offers:
//
//   - temp roots: st's store.Locker and store.TempRooter. A locked
//     QueryValidPaths (and, with --write, every QueryValidPaths, as the
//     Server does for any store) becomes st's QueryValidPathsLocked, so an
//     ssh store takes the roots on the far end (lock=1 there), held for as
//     long as st is open, i.e. for the session. Nix 2.8's relay does not:
//     LegacySSHStore has no addTempRoot (Store::addTempRoot is a no-op in
//     2.8.0:src/libstore/store-api.hh) and always queries with lock=0
//     (2.8.0:src/libstore/legacy-ssh-store.cc). A path st has already
//     rooted in this session is not rooted again, so the far end sees one
//     locked query of a copy's paths, then the uploads.
//   - path infos in one request (store.PathInfoQuerier), closures
//     (store.Closurer, else from path infos) and builds (store.Builder, else
//     ErrNoBuilder).
//   - store.Importer and store.Batcher, through Unwrap, as for a local store.
//
// Every error from st is prefixed with uri, so that the client's message
// names the far store; the far side's own stderr reaches the session's log
// through st (the ssh store passes it on behind "host> ").
//
// A store without temp roots is served without them (the Server's
// AddTempRoot calls do nothing), as Nix does for stores that do not
// support garbage collection.
func NewRelayBackend(st store.Store, uri string) Backend {
	return &relayBackend{st: st, uri: uri, rooted: map[storepath.Path]bool{}}
}

type relayBackend struct {
	st  store.Store
	uri string

	mu     sync.Mutex
	rooted map[storepath.Path]bool // paths st holds temp roots for
}

var (
	_ Backend               = (*relayBackend)(nil)
	_ store.Locker          = (*relayBackend)(nil)
	_ store.PathInfoQuerier = (*relayBackend)(nil)
)

// Unwrap returns the relayed store, for the optional capabilities the
// backend does not implement itself (store.Importer, store.Batcher).
func (r *relayBackend) Unwrap() store.Store { return r.st }

// named prefixes err with the store's URI.
func (r *relayBackend) named(err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	return &relayError{uri: r.uri, err: err}
}

// relayError is an error of the relayed store, naming it.
type relayError struct {
	uri string
	err error
}

func (e *relayError) Error() string { return e.uri + ": " + e.err.Error() }
func (e *relayError) Unwrap() error { return e.err }

func (r *relayBackend) Dir() storepath.Dir { return r.st.Dir() }

func (r *relayBackend) Close() error { return r.named(r.st.Close()) }

func (r *relayBackend) QueryPathInfo(ctx context.Context, p storepath.Path) (*store.PathInfo, error) {
	info, err := r.st.QueryPathInfo(ctx, p)
	return info, r.named(err)
}

// QueryPathInfos is st's own where it has one (one request over ssh), else
// one QueryPathInfo per path.
func (r *relayBackend) QueryPathInfos(ctx context.Context, paths []storepath.Path) ([]*store.PathInfo, error) {
	if q, ok := r.st.(store.PathInfoQuerier); ok {
		infos, err := q.QueryPathInfos(ctx, paths)
		return infos, r.named(err)
	}
	var infos []*store.PathInfo
	for _, p := range paths {
		info, err := r.st.QueryPathInfo(ctx, p)
		if errors.Is(err, store.ErrNotValid) {
			continue
		}
		if err != nil {
			return nil, r.named(err)
		}
		infos = append(infos, info)
	}
	return infos, nil
}

func (r *relayBackend) QueryValidPaths(ctx context.Context, paths []storepath.Path) ([]storepath.Path, error) {
	valid, err := r.st.QueryValidPaths(ctx, paths)
	return valid, r.named(err)
}

// QueryValidPathsLocked roots paths in st and queries them in one step if
// st is a store.Locker, else roots each (AddTempRoot) and then queries.
func (r *relayBackend) QueryValidPathsLocked(ctx context.Context, paths []storepath.Path) ([]storepath.Path, error) {
	l, ok := r.st.(store.Locker)
	if !ok {
		for _, p := range paths {
			if err := r.AddTempRoot(ctx, p); err != nil {
				return nil, err
			}
		}
		return r.QueryValidPaths(ctx, paths)
	}
	valid, err := l.QueryValidPathsLocked(ctx, paths)
	if err != nil {
		return nil, r.named(err)
	}
	r.mu.Lock()
	for _, p := range paths {
		r.rooted[p] = true
	}
	r.mu.Unlock()
	return valid, nil
}

// AddTempRoot roots p in st, unless this session already has: with st's
// TempRooter, else with a locked query of p; a store with neither cannot
// root, and the call does nothing.
func (r *relayBackend) AddTempRoot(ctx context.Context, p storepath.Path) error {
	r.mu.Lock()
	done := r.rooted[p]
	r.mu.Unlock()
	if done {
		return nil
	}
	var err error
	switch st := r.st.(type) {
	case store.TempRooter:
		err = st.AddTempRoot(ctx, p)
	case store.Locker:
		_, err = st.QueryValidPathsLocked(ctx, []storepath.Path{p})
	default:
		return nil
	}
	if err != nil {
		return r.named(err)
	}
	r.mu.Lock()
	r.rooted[p] = true
	r.mu.Unlock()
	return nil
}

func (r *relayBackend) NarFromPath(ctx context.Context, p storepath.Path, w io.Writer) error {
	return r.named(r.st.NarFromPath(ctx, p, w))
}

func (r *relayBackend) AddToStoreNar(ctx context.Context, info *store.PathInfo, nar io.Reader) error {
	return r.named(r.st.AddToStoreNar(ctx, info, nar))
}

func (r *relayBackend) QueryClosure(ctx context.Context, paths []storepath.Path, includeOutputs bool) ([]storepath.Path, error) {
	var c []storepath.Path
	var err error
	if cl, ok := r.st.(store.Closurer); ok {
		c, err = cl.QueryClosure(ctx, paths, includeOutputs)
	} else {
		c, err = store.Closure(ctx, r.st, paths, includeOutputs)
	}
	return c, r.named(err)
}

func (r *relayBackend) builder() (store.Builder, error) {
	b, ok := r.st.(store.Builder)
	if !ok {
		return nil, fmt.Errorf("%s: %w", r.uri, ErrNoBuilder)
	}
	return b, nil
}

func (r *relayBackend) BuildDerivation(ctx context.Context, drvPath storepath.Path, drv *derivation.Derivation, settings *store.BuildSettings, log io.Writer) (*store.BuildResult, error) {
	b, err := r.builder()
	if err != nil {
		return nil, err
	}
	res, err := b.BuildDerivation(ctx, drvPath, drv, settings, log)
	return res, r.named(err)
}

func (r *relayBackend) BuildPaths(ctx context.Context, paths []DerivedPath, settings *store.BuildSettings, log io.Writer) ([]*store.BuildResult, error) {
	b, err := r.builder()
	if err != nil {
		return nil, err
	}
	res, err := b.BuildPaths(ctx, paths, settings, log)
	return res, r.named(err)
}
