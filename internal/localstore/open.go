package localstore

import (
	"context"
	"fmt"
	"io"
	"sort"

	"ferry/internal/db"
	"ferry/nix/storepath"
	"ferry/store"
)

func init() { store.Register("local", openURI) }

// openURI opens the local store a URI names (store.Open): a directory,
// "local", "/", "auto" or "" as Select resolves them, and "local?root=DIR".
func openURI(ctx context.Context, u *store.URI, opts *store.OpenOptions) (store.Store, error) {
	spec := u.Path
	for k := range u.Params {
		if k != "root" || u.Path != "local" {
			return nil, fmt.Errorf("open store %q: unknown store parameter %q", u.Raw, k)
		}
		spec = u.Raw
	}
	root, why := Select(spec)
	if root == "" {
		return nil, fmt.Errorf("open store %q: %s", u.Raw, why)
	}
	if opts.Verbose && opts.Log != nil {
		fmt.Fprintf(opts.Log, "using store %s (%s)\n", root, why)
	}
	return Open(root, &Options{ReservedSize: opts.ReservedSize})
}

var (
	_ store.Locker          = (*Store)(nil)
	_ store.PathInfoQuerier = (*Store)(nil)
	_ store.MultiAdder      = (*Store)(nil)
	_ store.Closurer        = (*Store)(nil)
	_ store.Importer        = (*Store)(nil)
	_ store.Batcher         = (*Store)(nil)
)

// QueryPathInfos returns the infos of the valid ones among paths, in two
// queries whatever their number.
func (s *Store) QueryPathInfos(ctx context.Context, paths []storepath.Path) ([]*store.PathInfo, error) {
	for _, p := range paths {
		if err := s.checkDir(p); err != nil {
			return nil, err
		}
	}
	var infos []*store.PathInfo
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		var err error
		infos, err = tx.QueryPathInfos(paths)
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Path < infos[j].Path })
	return infos, nil
}

// AddToStoreNars stages infos in one Batch (each NAR verified as it
// arrives) and commits them together: one sync and one transaction per 256
// paths. If a path fails, the ones staged before it are still committed,
// so they are valid and a later copy need not send them again; added is
// called for each path once it is valid.
func (s *Store) AddToStoreNars(ctx context.Context, infos []*store.PathInfo, nars store.NarSource, added func(*store.PathInfo)) error {
	b := s.NewBatch()
	var staged []*store.PathInfo
	var addErr error
	for _, info := range infos {
		if addErr = addOne(ctx, b, info, nars); addErr != nil {
			break
		}
		staged = append(staged, info)
		if b.Len() >= store.BatchAsyncPaths || b.Bytes() >= store.BatchAsyncBytes {
			b.CommitAsync(ctx)
		}
	}
	// Whatever was staged whole is made valid even after a failure or an
	// interrupt: it is complete, and its references are valid or staged.
	if err := b.Commit(context.WithoutCancel(ctx)); err != nil {
		b.Discard()
		return err
	}
	if added != nil {
		for _, info := range staged {
			added(info)
		}
	}
	return addErr
}

// addOne streams one path's NAR from nars into b.
func addOne(ctx context.Context, b store.Batch, info *store.PathInfo, nars store.NarSource) error {
	pr := nars.Open(ctx, info)
	err := b.Add(ctx, info, pr)
	if err == nil {
		// The NAR must end where the batch stopped reading.
		if n, _ := io.Copy(io.Discard, pr); n > 0 {
			err = fmt.Errorf("add %s: %d bytes after the NAR", info.Path, n)
		}
	}
	pr.CloseWithError(fmt.Errorf("add %s: stopped reading", info.Path))
	return err
}
