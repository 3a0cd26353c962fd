package store

import (
	"context"
	"io"
	"strings"

	"ferry/nix/derivation"
	"ferry/nix/storepath"
)

// The optional capabilities of a store. A caller asks for one with a type
// assertion and falls back to the plain Store methods where a store lacks
// it; the serve protocol's server and client, ferry copy and the CLI are
// written against these interfaces only, so none of them depends on how a
// store is implemented.

// Closurer is a store that computes closures itself (in its database, or
// in one request to a remote).
type Closurer interface {
	// QueryClosure returns the closure of paths under references
	// (computeFSClosure, paths included) and, with includeOutputs, the
	// valid outputs of every derivation in it together with their
	// closures, sorted as a StorePathSet. An invalid path among paths is
	// an error wrapping ErrNotValid.
	QueryClosure(ctx context.Context, paths []storepath.Path, includeOutputs bool) ([]storepath.Path, error)
}

// Locker is a store that answers "which of these are valid?" and protects
// the valid ones from garbage collection in the same step, for as long as
// the store handle is open. It closes the window in which a collector
// could delete a path between the answer and its use (the copy-versus-GC
// race, docs/protocol.md §3.1): over the serve protocol it is
// QueryValidPaths with lock=1.
type Locker interface {
	QueryValidPathsLocked(ctx context.Context, paths []storepath.Path) ([]storepath.Path, error)
}

// Substituter is a Locker that can first substitute the missing paths
// from its own substituters (over the serve protocol, QueryValidPaths
// with substitute=1: Nix's builders-use-substitutes).
type Substituter interface {
	QueryValidPathsLockedSubstitute(ctx context.Context, paths []storepath.Path) ([]storepath.Path, error)
}

// PathInfoQuerier is a store that returns many path infos in one step.
type PathInfoQuerier interface {
	// QueryPathInfos returns the infos of the valid ones among paths, in
	// any order.
	QueryPathInfos(ctx context.Context, paths []storepath.Path) ([]*PathInfo, error)
}

// NarSource writes the NAR of info.Path to w. It is how a caller hands a
// store the contents of the paths it adds in bulk.
type NarSource func(ctx context.Context, info *PathInfo, w io.Writer) error

// Open runs src for info in a goroutine and returns the reading end of the
// NAR it writes; src's error reaches the reader. The caller closes it,
// which stops src if it has not finished.
func (src NarSource) Open(ctx context.Context, info *PathInfo) *io.PipeReader {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(src(ctx, info, pw)) }()
	return pr
}

// ReaderSource is the NarSource of one path whose NAR is read from r.
func ReaderSource(r io.Reader) NarSource {
	return func(_ context.Context, _ *PathInfo, w io.Writer) error {
		_, err := io.Copy(w, r)
		return err
	}
}

// MultiAdder is a store that adds many paths in one pipelined step: it
// does not wait for one path to be accepted before it takes the next.
type MultiAdder interface {
	// AddToStoreNars adds infos, which are in topological order (every
	// reference before its referrers, or already valid), reading each
	// one's NAR from nars exactly once, in order. added, if not nil, is
	// called as each path has been accepted. Every path that was accepted
	// before an error is valid and complete; the others are not valid.
	AddToStoreNars(ctx context.Context, infos []*PathInfo, nars NarSource, added func(*PathInfo)) error
}

// MultiDumper is a store that streams the NARs of many paths in one
// pipelined step.
type MultiDumper interface {
	// NarsFromPaths calls fn with each path's NAR, in order. fn must read
	// the NAR to its end (or return an error) before the next is
	// produced.
	NarsFromPaths(ctx context.Context, paths []storepath.Path, fn func(p storepath.Path, nar io.Reader) error) error
}

// Importer is a store that imports a whole export stream itself (for
// ImportPaths), all or nothing. Import must read r only up to the stream's
// end marker: the serve protocol's session goes on after it.
type Importer interface {
	Import(ctx context.Context, r io.Reader) ([]storepath.Path, error)
}

// Batcher is a store that can stage many verified paths and commit them
// at once (one sync, one transaction).
type Batcher interface {
	NewBatch() Batch
}

// BatchAsyncPaths and BatchAsyncBytes are how much a copy stages in a
// Batch before it starts committing in the background (CommitAsync).
const (
	BatchAsyncPaths = 256
	BatchAsyncBytes = 64 << 20
)

// Batch stages paths added from their NARs until Commit makes them all
// valid; Discard drops them. Add has AddToStoreNar's checks, with paths
// staged earlier counting as valid references. A Batch is used by one
// goroutine at a time.
type Batch interface {
	Add(ctx context.Context, info *PathInfo, r io.Reader) error
	Commit(ctx context.Context) error
	// CommitAsync starts committing what is staged so far in the
	// background; Commit waits for it.
	CommitAsync(ctx context.Context)
	Discard()
	Len() int
	Bytes() uint64
}

// InOrder returns the members of set in the order of paths, each once:
// how QueryValidPaths returns what a store reported as a set.
func InOrder(paths, set []storepath.Path) []storepath.Path {
	in := make(map[storepath.Path]bool, len(set))
	for _, p := range set {
		in[p] = true
	}
	out := make([]storepath.Path, 0, len(set))
	for _, p := range paths {
		if in[p] {
			out = append(out, p)
			delete(in, p)
		}
	}
	return out
}

// DerivedPath is one element of a BuildPaths request: an opaque store
// path, or a .drv path with the outputs wanted ("drv!out1,out2").
type DerivedPath struct {
	Path    storepath.Path
	Outputs []string // nil for an opaque path
}

// String prints p as Nix's parsePathWithOutputs reads it.
func (p DerivedPath) String() string {
	if p.Outputs == nil {
		return string(p.Path)
	}
	return string(p.Path) + "!" + strings.Join(p.Outputs, ",")
}

// Builder is a store that can build.
type Builder interface {
	// BuildDerivation builds drv, a BasicDerivation received in memory
	// (no InputDrvs; its .drv file need not exist) whose store path would
	// be drvPath. Its input sources must be valid. Builder output goes to
	// log. A build that fails returns a result with a failure status; an
	// error means the build could not be attempted. Cancelling ctx kills
	// the build.
	BuildDerivation(ctx context.Context, drvPath storepath.Path, drv *derivation.Derivation, settings *BuildSettings, log io.Writer) (*BuildResult, error)
	// BuildPaths realises paths (derivations present in the store with
	// the outputs wanted, or opaque paths that must be valid) and returns
	// one result per path.
	BuildPaths(ctx context.Context, paths []DerivedPath, settings *BuildSettings, log io.Writer) ([]*BuildResult, error)
}
