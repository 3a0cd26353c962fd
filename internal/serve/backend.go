package serve

import (
	"context"
	"errors"
	"io"

	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/store"
)

// Backend is the store a Server serves: a store.Store that can add temp
// roots, compute closures and build. NewStoreBackend turns any store with
// temp roots into a Backend. A Backend that is also a store.Importer or a
// store.Batcher is used as one (ImportPaths, the AddToStoreNar commands of a
// copy).
type Backend interface {
	store.Store
	store.TempRooter
	store.Closurer
	store.Builder
}

// RootedStore is a store that can add temp roots: what NewStoreBackend needs.
type RootedStore interface {
	store.Store
	store.TempRooter
}

// ErrNoBuilder is returned for build commands by a Backend without a Builder.
var ErrNoBuilder = errors.New("building is not supported by this store")

// NewStoreBackend makes a Backend of st: QueryClosure is st's own if st is
// a store.Closurer, else computed from path infos (store.Closure), and builds go
// to b, or fail with ErrNoBuilder if b is nil. The Backend is safe for
// concurrent use if st and b are.
func NewStoreBackend(st RootedStore, b store.Builder) Backend {
	return &storeBackend{RootedStore: st, b: b}
}

type storeBackend struct {
	RootedStore
	b store.Builder
}

// Unwrap returns the store the Backend was made of, so that the Server finds
// its optional capabilities (store.Importer, store.Batcher).
func (s *storeBackend) Unwrap() store.Store { return s.RootedStore }

// capability returns b's implementation of T, looking through
// NewStoreBackend's wrapper.
func capability[T any](b Backend) (T, bool) {
	if t, ok := b.(T); ok {
		return t, true
	}
	if w, ok := b.(interface{ Unwrap() store.Store }); ok {
		t, ok := w.Unwrap().(T)
		return t, ok
	}
	var zero T
	return zero, false
}

func (s *storeBackend) QueryClosure(ctx context.Context, paths []storepath.Path, includeOutputs bool) ([]storepath.Path, error) {
	if c, ok := s.RootedStore.(store.Closurer); ok {
		return c.QueryClosure(ctx, paths, includeOutputs)
	}
	return store.Closure(ctx, s.RootedStore, paths, includeOutputs)
}

func (s *storeBackend) BuildDerivation(ctx context.Context, drvPath storepath.Path, drv *derivation.Derivation, settings *store.BuildSettings, log io.Writer) (*store.BuildResult, error) {
	if s.b == nil {
		return nil, ErrNoBuilder
	}
	return s.b.BuildDerivation(ctx, drvPath, drv, settings, log)
}

func (s *storeBackend) BuildPaths(ctx context.Context, paths []DerivedPath, settings *store.BuildSettings, log io.Writer) ([]*store.BuildResult, error) {
	if s.b == nil {
		return nil, ErrNoBuilder
	}
	return s.b.BuildPaths(ctx, paths, settings, log)
}
