package localstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"ferry/internal/db"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/store"
)

// ErrPathInUse is returned by InvalidatePath for a path that other valid
// paths still refer to.
var ErrPathInUse = errors.New("is in use")

func (s *Store) checkDir(p storepath.Path) error {
	if p == "" || p.Dir() != s.Dir() {
		return fmt.Errorf("path '%s' is not in the store directory %s: %w", p, s.Dir(), storepath.ErrInvalid)
	}
	return nil
}

// QueryPathInfo returns what the database knows about p, or an error
// wrapping store.ErrNotValid.
func (s *Store) QueryPathInfo(ctx context.Context, p storepath.Path) (*store.PathInfo, error) {
	if err := s.checkDir(p); err != nil {
		return nil, err
	}
	var info *store.PathInfo
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		var err error
		info, err = tx.QueryPathInfo(p)
		return err
	})
	return info, err
}

// IsValidPath reports whether p is registered.
func (s *Store) IsValidPath(ctx context.Context, p storepath.Path) (bool, error) {
	var ok bool
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		var err error
		ok, err = tx.IsValid(p)
		return err
	})
	return ok, err
}

// QueryValidPaths returns the valid ones of paths, in the order given.
func (s *Store) QueryValidPaths(ctx context.Context, paths []storepath.Path) ([]storepath.Path, error) {
	var valid []storepath.Path
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		var err error
		valid, err = tx.ValidAmong(paths)
		return err
	})
	if err != nil {
		return nil, err
	}
	// In the order given, as the interface promises.
	return store.InOrder(paths, valid), nil
}

// QueryValidPathsLocked temp-roots paths, then reports which are valid (in
// the order given): rooted before the query, a path reported valid stays
// valid (a GC leaves it alone) for as long as the Store is open.
func (s *Store) QueryValidPathsLocked(ctx context.Context, paths []storepath.Path) ([]storepath.Path, error) {
	roots := make([]string, len(paths))
	for i, p := range paths {
		roots[i] = string(p)
	}
	if err := s.temps.AddMany(ctx, roots); err != nil {
		return nil, err
	}
	return s.QueryValidPaths(ctx, paths)
}

// rootValid is QueryValidPathsLocked as a set.
func (s *Store) rootValid(ctx context.Context, paths []storepath.Path) (map[storepath.Path]bool, error) {
	valid, err := s.QueryValidPathsLocked(ctx, paths)
	if err != nil {
		return nil, err
	}
	set := make(map[storepath.Path]bool, len(valid))
	for _, p := range valid {
		set[p] = true
	}
	return set, nil
}

// QueryAllValidPaths returns every valid path, sorted.
func (s *Store) QueryAllValidPaths(ctx context.Context) ([]storepath.Path, error) {
	var out []storepath.Path
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		var err error
		out, err = tx.QueryValidPaths()
		return err
	})
	return out, err
}

// QueryReferences returns the sorted references of the valid path p.
func (s *Store) QueryReferences(ctx context.Context, p storepath.Path) ([]storepath.Path, error) {
	info, err := s.QueryPathInfo(ctx, p)
	if err != nil {
		return nil, err
	}
	return info.References, nil
}

// QueryReferrers returns the sorted valid paths that refer to p (p itself
// if it refers to itself). An invalid p has none.
func (s *Store) QueryReferrers(ctx context.Context, p storepath.Path) ([]storepath.Path, error) {
	var out []storepath.Path
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		var err error
		out, err = tx.QueryReferrers(p)
		return err
	})
	return out, err
}

// QueryDeriver returns the recorded deriver of the valid path p, or "".
func (s *Store) QueryDeriver(ctx context.Context, p storepath.Path) (storepath.Path, error) {
	info, err := s.QueryPathInfo(ctx, p)
	if err != nil {
		return "", err
	}
	return info.Deriver, nil
}

// QueryValidDerivers returns the valid derivations that have p as a
// statically known output (the DerivationOutputs table).
func (s *Store) QueryValidDerivers(ctx context.Context, p storepath.Path) ([]storepath.Path, error) {
	var out []storepath.Path
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		var err error
		out, err = tx.QueryValidDerivers(p)
		return err
	})
	return out, err
}

// QueryDerivationOutputs returns the recorded outputs of the valid
// derivation drv, by output name.
func (s *Store) QueryDerivationOutputs(ctx context.Context, drv storepath.Path) (map[string]storepath.Path, error) {
	var out map[string]storepath.Path
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		id, ok, err := tx.PathID(drv)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("path '%s' %w", drv, store.ErrNotValid)
		}
		out, err = tx.QueryDerivationOutputs(id)
		return err
	})
	return out, err
}

// QueryPathFromHashPart returns the valid path with the given 32-character
// hash part, and false if there is none.
func (s *Store) QueryPathFromHashPart(ctx context.Context, hashPart string) (storepath.Path, bool, error) {
	var p storepath.Path
	var ok bool
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		var err error
		p, ok, err = tx.QueryPathFromHashPart(s.Dir(), hashPart)
		return err
	})
	return p, ok, err
}

// QueryClosure returns the sorted closure of paths under references (Nix's
// computeFSClosure). With includeOutputs, the valid outputs of every
// derivation in the closure, and their closures, are included too (as
// nix-store -qR --include-outputs). Every path given must be valid.
func (s *Store) QueryClosure(ctx context.Context, paths []storepath.Path, includeOutputs bool) ([]storepath.Path, error) {
	var out []storepath.Path
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		var err error
		if !includeOutputs {
			// The walk in one recursive query.
			for _, p := range paths {
				if ok, err := tx.IsValid(p); err != nil {
					return err
				} else if !ok {
					return fmt.Errorf("path '%s' %w", p, store.ErrNotValid)
				}
			}
			out, err = tx.QueryClosure(paths)
			return err
		}
		out, err = store.WalkClosure(paths, func(p storepath.Path) ([]storepath.Path, error) {
			id, ok, err := tx.PathID(p)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, fmt.Errorf("path '%s' %w", p, store.ErrNotValid)
			}
			next, err := tx.QueryReferences(id)
			if err != nil || !includeOutputs || !p.IsDerivation() {
				return next, err
			}
			outs, err := tx.QueryDerivationOutputs(id)
			if err != nil {
				return nil, err
			}
			for _, o := range outs {
				if ok, err := tx.IsValid(o); err != nil {
					return nil, err
				} else if ok {
					next = append(next, o)
				}
			}
			return next, nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// NarFromPath writes the NAR of the valid path p to w.
func (s *Store) NarFromPath(ctx context.Context, p storepath.Path, w io.Writer) error {
	if _, err := s.QueryPathInfo(ctx, p); err != nil {
		return err
	}
	if err := nar.Dump(w, s.RealPath(p)); err != nil {
		return fmt.Errorf("dump %s: %w", p, err)
	}
	return nil
}

// InvalidatePath removes p from the database (not from disk) in one
// transaction, refusing with ErrPathInUse if a valid path other than p
// itself refers to it (Nix's invalidatePathChecked). The garbage collector
// calls it before deleting p's files. An invalid p is not an error.
func (s *Store) InvalidatePath(ctx context.Context, p storepath.Path) error {
	return s.db.Write(ctx, func(tx *db.Tx) error {
		ok, err := tx.IsValid(p)
		if err != nil || !ok {
			return err
		}
		refs, err := tx.QueryReferrers(p)
		if err != nil {
			return err
		}
		for _, r := range refs {
			if r != p {
				return fmt.Errorf("cannot delete path '%s' because it %w by '%s'", p, ErrPathInUse, r)
			}
		}
		return tx.InvalidatePath(p)
	})
}
