package localstore

import (
	"context"
	"fmt"
	"io"
	"sync"

	"ferry/internal/storefs"
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
// system once (syncfs; the objects themselves when there are at most
// fsyncEach), then installs everything in reference order
// (installBatch: path locks, rename, directory sync, one transaction per
// chunk). Until Commit returns, nothing of the batch is valid, so a crash
// leaves only temporaries, which the next write or GC removes. Each object
// gets a temp root when it is added, so the GC leaves it and the paths it
// refers to alone while the batch is open.
//
// CommitAsync commits what is staged so far in the background while more
// is added: since every reference of a staged object is valid or staged
// before it, what was staged up to any moment can be installed on its own.
//
// The serve protocol uses a Batch to acknowledge each path of a copy as
// soon as it is verified and to commit before the reply to the last path
// the client said it would send (internal/serve). Add, Commit, CommitAsync
// and Discard must not be called concurrently with each other.
type Batch struct {
	s *Store

	mu sync.Mutex // guards the fields below against the background commit
	// pend are the objects staged and not yet installed, including those
	// of a commit in flight; order are those not handed to a commit yet.
	pend  map[storepath.Path]*pending
	order []storepath.Path
	bytes uint64 // NAR bytes of order
	// valid are references found valid (and temp-rooted, so they stay
	// valid) by earlier Adds, and the paths committed by the batch.
	valid    map[storepath.Path]bool
	inflight chan struct{} // closed when the background commit ends
	asyncErr error         // the background commit's failure
}

// NewBatch starts an empty batch.
func (s *Store) NewBatch() store.Batch {
	return &Batch{s: s, pend: map[storepath.Path]*pending{}, valid: map[storepath.Path]bool{}}
}

// Len is the number of staged objects not yet handed to a commit.
func (b *Batch) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.order)
}

// Bytes is the total NAR size of the objects Len counts.
func (b *Batch) Bytes() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bytes
}

// Has reports whether p is staged and not yet installed.
func (b *Batch) Has(p storepath.Path) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pend[p] != nil
}

// Add verifies info's NAR from r and stages the object. Every reference
// must be the path itself, staged earlier in the batch, or valid (it gets
// a temp root first); otherwise, and for a NAR that does not match info,
// Add fails and stages nothing. A path staged already is skipped (its NAR
// is still read). Add does not ask whether info.Path is valid, as callers
// stage paths they just found missing; Commit drops any that another
// process has made valid meanwhile. If a background commit failed, Add
// returns its error.
func (b *Batch) Add(ctx context.Context, info *store.PathInfo, r io.Reader) error {
	s := b.s
	if err := s.checkDir(info.Path); err != nil {
		return err
	}
	b.mu.Lock()
	err := b.asyncErr
	staged := b.pend[info.Path] != nil || b.valid[info.Path]
	var outside []storepath.Path
	for _, ref := range info.References {
		if ref != info.Path && b.pend[ref] == nil && !b.valid[ref] {
			outside = append(outside, ref)
		}
	}
	b.mu.Unlock()
	if err != nil {
		return err
	}
	if staged {
		return s.skipNar(info.Path, r)
	}
	if len(outside) > 0 {
		ok, err := s.rootValid(ctx, outside)
		if err != nil {
			return err
		}
		b.mu.Lock()
		for v := range ok {
			b.valid[v] = true
		}
		b.mu.Unlock()
		for _, ref := range outside {
			if !ok[ref] {
				return fmt.Errorf("cannot add path '%s' because it references path '%s' which %w", info.Path, ref, store.ErrNotValid)
			}
		}
	}
	p, err := s.prepareNar(ctx, info, r, false, false)
	if err != nil || p == nil {
		return err
	}
	b.mu.Lock()
	b.pend[info.Path] = p
	b.order = append(b.order, info.Path)
	b.bytes += p.info.NarSize
	b.mu.Unlock()
	return nil
}

// take hands what is staged and not yet committed to a commit.
func (b *Batch) take() []*pending {
	b.mu.Lock()
	defer b.mu.Unlock()
	items := make([]*pending, len(b.order))
	for i, p := range b.order {
		items[i] = b.pend[p]
	}
	b.order = nil
	b.bytes = 0
	return items
}

// committed records the end of a commit of items.
func (b *Batch) committed(items []*pending, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range items {
		delete(b.pend, p.info.Path)
		if err == nil {
			b.valid[p.info.Path] = true
		}
	}
	if err != nil && b.asyncErr == nil {
		b.asyncErr = err
	}
}

// wait waits for a background commit and returns the first failure of
// any.
func (b *Batch) wait() error {
	b.mu.Lock()
	done := b.inflight
	b.mu.Unlock()
	if done != nil {
		<-done
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.inflight = nil
	return b.asyncErr
}

// CommitAsync starts committing, in the background, everything staged so
// far, unless a background commit is still running (then it does nothing;
// a later call or Commit takes what is left).
func (b *Batch) CommitAsync(ctx context.Context) {
	b.mu.Lock()
	if b.inflight != nil {
		select {
		case <-b.inflight:
			b.inflight = nil
		default:
			b.mu.Unlock()
			return
		}
	}
	idle := len(b.order) == 0 || b.asyncErr != nil
	b.mu.Unlock()
	if idle {
		return
	}
	items := b.take()
	done := make(chan struct{})
	b.mu.Lock()
	b.inflight = done
	b.mu.Unlock()
	go func() {
		defer close(done)
		b.committed(items, b.s.commitPending(ctx, items))
	}()
}

// Commit makes every staged object valid: it waits for a background
// commit, then commits the rest (one file system sync, then installation
// in reference order, 256 paths per transaction). On error the objects
// not yet installed are discarded; those installed stay valid (each
// complete, with its references).
func (b *Batch) Commit(ctx context.Context) error {
	if err := b.wait(); err != nil {
		b.Discard()
		return err
	}
	items := b.take()
	err := b.s.commitPending(ctx, items)
	b.committed(items, err)
	return err
}

// fsyncEach is the largest commit that syncs its objects one by one
// rather than the whole file system at once.
const fsyncEach = 8

func (s *Store) commitPending(ctx context.Context, items []*pending) error {
	if len(items) == 0 {
		return nil
	}
	defer func() {
		for _, p := range items {
			if p.tmp != "" {
				storefs.Delete(p.tmp)
				p.tmp = ""
			}
		}
	}()
	byPath := make(map[storepath.Path]*pending, len(items))
	paths := make([]storepath.Path, len(items))
	for i, p := range items {
		byPath[p.info.Path] = p
		paths[i] = p.info.Path
	}
	sorted, err := store.TopoSort(paths, func(p storepath.Path) []storepath.Path { return byPath[p].info.References })
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if !s.opts.NoSync {
		if len(items) <= fsyncEach {
			// Few objects: sync just them (files and directories), so
			// that other writers' dirty data is not ours to wait for.
			for _, p := range items {
				if err := storefs.Canonicalise(p.tmp, true); err != nil {
					return fmt.Errorf("commit %s: %w", p.info.Path, err)
				}
			}
		} else if err := storefs.SyncFS(s.realDir); err != nil {
			return err
		}
	}
	for len(sorted) > 0 {
		n := min(importBatch, len(sorted))
		chunk := make([]*pending, n)
		for i, p := range sorted[:n] {
			chunk[i] = byPath[p]
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

// Discard drops what is staged and not committed: the temporaries are
// deleted and nothing is registered. It waits for a background commit.
func (b *Batch) Discard() {
	b.wait()
	for _, p := range b.take() {
		if p.tmp != "" {
			storefs.Delete(p.tmp)
		}
		b.mu.Lock()
		delete(b.pend, p.info.Path)
		b.mu.Unlock()
	}
}
