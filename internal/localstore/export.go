package localstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"ferry/internal/storefs"
	"ferry/nix/export"
	"ferry/nix/storepath"
	"ferry/store"
)

// Export writes paths, which must all be valid, as a nix-store --export
// stream to w (store.Export: references first, every NAR checked against
// its registered hash as it is written).
func (s *Store) Export(ctx context.Context, w io.Writer, paths []storepath.Path) error {
	return store.Export(ctx, s, w, paths)
}

// importBatch is how many imported paths are locked and registered in one
// transaction.
const importBatch = 256

// Import reads a nix-store --export stream from r and adds its paths,
// returning them in stream order (as nix-store --import prints them).
//
// An import is all or nothing with respect to the stream: every NAR is
// restored to a temporary name and verified against its structure, and
// canonicalised, while the stream is read; nothing is registered unless
// the whole stream, up to its end marker, is well formed and every
// reference is valid already or imported by the same stream. Only then
// are the paths synced and installed, references first, in batches of up
// to 256 paths, each batch under its path locks in one transaction. (Nix
// 2.8 instead registers path by path as the stream goes.) A crash or a
// database failure during that last phase can leave some batches
// registered; each registered path is complete with its references.
// Already valid paths are skipped.
func (s *Store) Import(ctx context.Context, r io.Reader) ([]storepath.Path, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	er := export.NewReader(br, &export.ReaderOptions{StoreDir: s.Dir()})
	var (
		order []storepath.Path
		pend  = map[storepath.Path]*pending{}
	)
	cleanup := func() {
		for _, p := range pend {
			if p.tmp != "" {
				storefs.Delete(p.tmp)
			}
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			cleanup()
			return nil, err
		}
		err := er.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			cleanup()
			return nil, fmt.Errorf("import: %w", err)
		}
		tmp, narHash, narSize, err := s.restoreTemp(ctx, er, nil)
		if err != nil {
			cleanup()
			return nil, fmt.Errorf("import: %w", err)
		}
		ei, err := er.Info()
		if err != nil {
			storefs.Delete(tmp)
			cleanup()
			return nil, fmt.Errorf("import: %w", err)
		}
		order = append(order, ei.Path)
		if pend[ei.Path] != nil {
			storefs.Delete(tmp) // the same path twice: keep the first
			continue
		}
		if err := storefs.Canonicalise(tmp, false); err != nil {
			storefs.Delete(tmp)
			cleanup()
			return nil, fmt.Errorf("import %s: %w", ei.Path, err)
		}
		pend[ei.Path] = &pending{tmp: tmp, info: &store.PathInfo{
			Path:       ei.Path,
			Deriver:    ei.Deriver,
			NarHash:    narHash,
			NarSize:    narSize,
			References: ei.References,
		}}
	}
	defer cleanup()

	// Every reference must be in the stream or valid; protect the valid
	// ones, then check them.
	var outside []storepath.Path
	for _, p := range pend {
		for _, ref := range p.info.References {
			if pend[ref] == nil {
				outside = append(outside, ref)
			}
		}
	}
	isValid, err := s.rootValid(ctx, outside)
	if err != nil {
		return nil, err
	}
	for _, p := range pend {
		for _, ref := range p.info.References {
			if pend[ref] == nil && !isValid[ref] {
				return nil, fmt.Errorf("import: cannot add path '%s' because it references path '%s' which %w", p.info.Path, ref, store.ErrNotValid)
			}
		}
	}
	items := make([]*pending, 0, len(pend))
	for _, p := range pend {
		items = append(items, p)
	}
	if err := s.commitPending(ctx, items); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return order, nil
}
