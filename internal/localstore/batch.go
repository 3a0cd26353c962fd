package localstore

import (
	"context"
	"fmt"
	"io"

	"ferry/nix/storepath"
	"ferry/store"
)

// A Batch adds many objects from their NARs with one sync and one
// transaction per 256 paths, instead of one of each per path: the cost
// that dominates adding small paths when every one must be durable before
// it is registered.
//
// Add verifies each NAR exactly as AddToStoreNar does and leaves the object
// restored and canonicalised at a temporary name; Commit syncs the file
// system once (syncfs), then installs everything in reference order
// (installBatch: path locks, rename, directory sync, one transaction per
// chunk). Until Commit returns, nothing of the batch is valid, so a crash
// leaves only temporaries, which the next write or GC removes. Each object
// gets a temp root when it is added, so the GC leaves it and the paths it
// refers to alone while the batch is open.
//
// The serve protocol uses a Batch to acknowledge each path of a copy as
// soon as it is verified and to commit once, before the reply to the last
// path the client said it would send (internal/serve). A Batch is not safe
// for concurrent use.
type Batch struct {
	s     *Store
	pend  map[storepath.Path]*pending
	order []storepath.Path
	// valid are references found valid (and temp-rooted, so they stay
	// valid) by earlier Adds.
	valid map[storepath.Path]bool
	bytes uint64
}

// NewBatch starts an empty batch.
func (s *Store) NewBatch() *Batch {
	return &Batch{s: s, pend: map[storepath.Path]*pending{}, valid: map[storepath.Path]bool{}}
}

// Len is the number of objects waiting to be committed.
func (b *Batch) Len() int { return len(b.order) }

// Bytes is the total NAR size of the objects waiting to be committed.
func (b *Batch) Bytes() uint64 { return b.bytes }

// Has reports whether p waits in the batch.
func (b *Batch) Has(p storepath.Path) bool { return b.pend[p] != nil }

// Add verifies info's NAR from r and stages the object. Every reference
// must be the path itself, staged earlier in the batch, or valid (it gets
// a temp root first); otherwise, and for a NAR that does not match info,
// Add fails and stages nothing. A path staged already is skipped (its NAR
// is still read). Add does not ask whether info.Path is valid, as callers
// stage paths they just found missing; Commit drops any that another
// process has made valid meanwhile.
func (b *Batch) Add(ctx context.Context, info *store.PathInfo, r io.Reader) error {
	s := b.s
	if err := s.checkDir(info.Path); err != nil {
		return err
	}
	if b.pend[info.Path] != nil {
		return s.skipNar(info.Path, r)
	}
	var outside []storepath.Path
	for _, ref := range info.References {
		if ref != info.Path && b.pend[ref] == nil && !b.valid[ref] {
			if err := s.temps.Add(ctx, string(ref)); err != nil {
				return err
			}
			outside = append(outside, ref)
		}
	}
	if len(outside) > 0 {
		valid, err := s.QueryValidPaths(ctx, outside)
		if err != nil {
			return err
		}
		for _, v := range valid {
			b.valid[v] = true
		}
		if len(valid) != len(outside) {
			ok := map[storepath.Path]bool{}
			for _, v := range valid {
				ok[v] = true
			}
			for _, ref := range outside {
				if !ok[ref] {
					return fmt.Errorf("cannot add path '%s' because it references path '%s' which %w", info.Path, ref, store.ErrNotValid)
				}
			}
		}
	}
	p, err := s.prepareNar(ctx, info, r, false, false)
	if err != nil || p == nil {
		return err
	}
	b.pend[info.Path] = p
	b.order = append(b.order, info.Path)
	b.bytes += p.info.NarSize
	return nil
}

// Commit makes every staged object valid: one file system sync, then
// installation in reference order, 256 paths per transaction. On error
// the objects not yet installed are discarded; those installed stay valid
// (each complete, with its references).
func (b *Batch) Commit(ctx context.Context) error {
	if len(b.order) == 0 {
		return nil
	}
	defer b.Discard()
	s := b.s
	sorted, err := TopoSort(b.order, func(p storepath.Path) []storepath.Path { return b.pend[p].info.References })
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if !s.opts.NoSync {
		if err := syncfs(s.realDir); err != nil {
			return err
		}
	}
	for len(sorted) > 0 {
		n := min(importBatch, len(sorted))
		chunk := make([]*pending, n)
		for i, p := range sorted[:n] {
			chunk[i] = b.pend[p]
		}
		sorted = sorted[n:]
		err := s.installBatch(ctx, chunk)
		for _, p := range chunk {
			p.tmp = "" // installBatch moved or removed it
		}
		if err != nil {
			return fmt.Errorf("commit: %w", err)
		}
	}
	return nil
}

// Discard drops what is staged: the temporaries are deleted and nothing
// is registered.
func (b *Batch) Discard() {
	for _, p := range b.pend {
		if p.tmp != "" {
			deletePath(p.tmp)
		}
	}
	clear(b.pend)
	clear(b.valid)
	b.order = b.order[:0]
	b.bytes = 0
}
