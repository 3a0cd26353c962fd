package serve

import (
	"context"
	"io"

	"ferry/internal/localstore"
	"ferry/nix/storepath"
	"ferry/store"
)

// Importer is an optional Backend capability: a store that imports a whole
// export stream itself (for ImportPaths), e.g. all or nothing. Import must
// read r only up to the stream's end marker; the Server hands it a
// *bufio.Reader shared with the rest of the session so that a reader that
// buffers can use it directly.
type Importer interface {
	Import(ctx context.Context, r io.Reader) ([]storepath.Path, error)
}

// Batcher is an optional Backend capability: a store that can stage many
// verified paths and commit them at once (localstore.Batch). The Server
// uses it for the AddToStoreNar commands of a copy (see addToStoreNar).
type Batcher interface {
	NewBatch() Batch
}

// Batch stages paths added from their NARs until Commit makes them all
// valid; Discard drops them. Add has AddToStoreNar's checks, with paths
// staged earlier counting as valid references.
type Batch interface {
	Add(ctx context.Context, info *store.PathInfo, r io.Reader) error
	Commit(ctx context.Context) error
	// CommitAsync starts committing what is staged so far in the
	// background; Commit waits for it.
	CommitAsync(ctx context.Context)
	Discard()
	Len() int
	Bytes() uint64
}

// NewLocalBackend returns a Backend over the local store st: closures come
// from its database (localstore.Store.QueryClosure), ImportPaths uses its
// all-or-nothing Import, and builds go to b, or fail with ErrNoBuilder if b
// is nil.
//
// The serve command opens st for one session and closes it when Serve
// returns; closing it removes the session's temp roots file, which is how a
// session's roots are released whatever way it ends.
func NewLocalBackend(st *localstore.Store, b Builder) Backend {
	return &localBackend{storeBackend: storeBackend{RootedStore: st, b: b}, st: st}
}

type localBackend struct {
	storeBackend
	st *localstore.Store
}

// NewBatch makes the local backend a Batcher.
func (l *localBackend) NewBatch() Batch { return l.st.NewBatch() }

func (l *localBackend) QueryClosure(ctx context.Context, paths []storepath.Path, includeOutputs bool) ([]storepath.Path, error) {
	return l.st.QueryClosure(ctx, paths, includeOutputs)
}

func (l *localBackend) Import(ctx context.Context, r io.Reader) ([]storepath.Path, error) {
	return l.st.Import(ctx, r)
}
