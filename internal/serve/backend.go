package serve

import (
	"context"
	"errors"
	"fmt"
	"io"

	"ferry/nix/derivation"
	"ferry/nix/nar"
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
// a store.Closurer, else computed from path infos (Closure), and builds go
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
	return Closure(ctx, s.RootedStore, paths, includeOutputs)
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

// Closure computes what Backend.QueryClosure returns from st's path infos,
// as Nix's computeFSClosure(paths, flipDirection=false, includeOutputs) does:
// with includeOutputs, each .drv in the closure is read (through its NAR) and
// its valid outputs are added with their closures.
func Closure(ctx context.Context, st store.Store, paths []storepath.Path, includeOutputs bool) ([]storepath.Path, error) {
	seen := map[storepath.Path]bool{}
	todo := append([]storepath.Path(nil), paths...)
	var out []storepath.Path
	for len(todo) > 0 {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		info, err := st.QueryPathInfo(ctx, p)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
		todo = append(todo, info.References...)
		if includeOutputs && p.IsDerivation() {
			drv, err := readDerivation(ctx, st, p)
			if err != nil {
				return nil, err
			}
			var outs []storepath.Path
			for _, o := range drv.OutputPaths() {
				outs = append(outs, o)
			}
			valid, err := st.QueryValidPaths(ctx, outs)
			if err != nil {
				return nil, err
			}
			todo = append(todo, valid...)
		}
	}
	return sortedSet(out), nil
}

// readDerivation reads a .drv file out of a store via its NAR (a single
// regular file).
func readDerivation(ctx context.Context, st store.Store, p storepath.Path) (*derivation.Derivation, error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(st.NarFromPath(ctx, p, pw)) }()
	defer pr.Close()
	nr := nar.NewReader(pr)
	h, err := nr.Next()
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", p, err)
	}
	if h.Type != nar.TypeRegular || h.Size > derivation.MaxSize {
		return nil, fmt.Errorf("read derivation %s: not a regular file of at most %d bytes", p, derivation.MaxSize)
	}
	data, err := io.ReadAll(nr)
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", p, err)
	}
	name, err := derivation.NameFromPath(p)
	if err != nil {
		return nil, err
	}
	return derivation.ParseIn(st.Dir(), data, name)
}
