package serve

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"sync"

	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/store"
)

// memStore is a minimal in-memory Backend for the fuzz target and the
// protocol tests that need no disk; interop tests use the real local store.
type memStore struct {
	mu    sync.Mutex // guards the fields below
	infos map[storepath.Path]*store.PathInfo
	nars  map[storepath.Path][]byte
	roots map[storepath.Path]bool
	// maxNar bounds what AddToStoreNar reads, to keep the fuzzer's memory
	// bounded.
	maxNar int64
	// hang makes BuildDerivation block until its context is cancelled.
	hang bool
}

func newMemStore() *memStore {
	return &memStore{
		infos:  map[storepath.Path]*store.PathInfo{},
		nars:   map[storepath.Path][]byte{},
		roots:  map[storepath.Path]bool{},
		maxNar: 1 << 20,
	}
}

func (m *memStore) Dir() storepath.Dir { return storepath.DefaultDir }

func (m *memStore) QueryPathInfo(ctx context.Context, p storepath.Path) (*store.PathInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	info, ok := m.infos[p]
	if !ok {
		return nil, fmt.Errorf("path '%s' %w", p, store.ErrNotValid)
	}
	return info, nil
}

func (m *memStore) QueryValidPaths(ctx context.Context, ps []storepath.Path) ([]storepath.Path, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []storepath.Path
	for _, p := range ps {
		if m.infos[p] != nil {
			out = append(out, p)
		}
	}
	return out, nil
}

func (m *memStore) NarFromPath(ctx context.Context, p storepath.Path, w io.Writer) error {
	m.mu.Lock()
	data, ok := m.nars[p]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("path '%s' %w", p, store.ErrNotValid)
	}
	_, err := w.Write(data)
	return err
}

func (m *memStore) AddToStoreNar(ctx context.Context, info *store.PathInfo, nar io.Reader) error {
	data, err := io.ReadAll(io.LimitReader(nar, m.maxNar))
	if err != nil {
		return err
	}
	if uint64(len(data)) != info.NarSize {
		return fmt.Errorf("size mismatch importing path '%s'", info.Path)
	}
	if got := hash.Sum(hash.SHA256, data); !got.Equal(info.NarHash) {
		return fmt.Errorf("hash mismatch importing path '%s'; specified: %s, got: %s", info.Path, info.NarHash, got)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.infos[info.Path] != nil {
		return nil
	}
	for _, r := range info.References {
		if r != info.Path && m.infos[r] == nil {
			return fmt.Errorf("path '%s' %w", r, store.ErrNotValid)
		}
	}
	c := *info
	m.infos[info.Path] = &c
	m.nars[info.Path] = data
	return nil
}

func (m *memStore) AddTempRoot(ctx context.Context, p storepath.Path) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.roots[p] = true
	return nil
}

func (m *memStore) Close() error { return nil }

func (m *memStore) QueryClosure(ctx context.Context, ps []storepath.Path, includeOutputs bool) ([]storepath.Path, error) {
	return store.Closure(ctx, m, ps, includeOutputs)
}

// BuildDerivation "builds" by failing unless every input is valid, and then
// reports every output built (without creating it): enough to test the
// protocol.
func (m *memStore) BuildDerivation(ctx context.Context, drvPath storepath.Path, drv *derivation.Derivation, settings *store.BuildSettings, log io.Writer) (*store.BuildResult, error) {
	for _, p := range drv.InputSrcs {
		if _, err := m.QueryPathInfo(ctx, p); err != nil {
			return &store.BuildResult{Status: store.MiscFailure, ErrorMsg: fmt.Sprintf("dependency '%s' of '%s' does not exist, and substitution is disabled", p, drvPath)}, nil
		}
	}
	if m.hang {
		<-ctx.Done()
	}
	if ctx.Err() != nil {
		return &store.BuildResult{Status: store.MiscFailure, ErrorMsg: "interrupted"}, nil
	}
	return &store.BuildResult{Status: store.Built, TimesBuilt: 1, BuiltOutputs: drv.OutputPaths()}, nil
}

func (m *memStore) BuildPaths(ctx context.Context, ps []DerivedPath, settings *store.BuildSettings, log io.Writer) ([]*store.BuildResult, error) {
	var out []*store.BuildResult
	for _, p := range ps {
		if _, err := m.QueryPathInfo(ctx, p.Path); err != nil {
			out = append(out, &store.BuildResult{Status: store.MiscFailure, ErrorMsg: err.Error()})
			continue
		}
		out = append(out, &store.BuildResult{Status: store.AlreadyValid})
	}
	return out, nil
}

// narOf returns the NAR of a regular file holding data, with its info.
func narOf(p storepath.Path, data string, refs ...storepath.Path) ([]byte, *store.PathInfo) {
	var b bytes.Buffer
	writeNAR(&b, data)
	sum := sha256.Sum256(b.Bytes())
	h, _ := hash.New(hash.SHA256, sum[:])
	return b.Bytes(), &store.PathInfo{Path: p, NarHash: h, NarSize: uint64(b.Len()), References: refs}
}

func writeNAR(w io.Writer, data string) {
	if err := narDumpBytes(w, []byte(data)); err != nil {
		panic(err)
	}
}

var narDumpBytes = nar.DumpBytes
