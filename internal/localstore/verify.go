package localstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"

	"ferry/internal/db"
	"ferry/internal/lock"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/store"
)

// VerifyReport is the outcome of Verify.
type VerifyReport struct {
	// Missing are valid paths whose files are gone.
	Missing []storepath.Path
	// Invalidated are missing paths that were removed from the database
	// because nothing referred to them (Nix does this too).
	Invalidated []storepath.Path
	// Modified are paths whose contents no longer hash to the database's
	// NAR hash (with checkContents), or could not be read.
	Modified []storepath.Path
	// Repaired are missing or modified paths that the repairer put back:
	// each exists again and its contents hash to the database's NAR hash.
	Repaired []storepath.Path
	// Messages describe each problem, in Nix's words where it has them.
	Messages []string
}

// OK reports whether the store was found consistent, or made so: every
// missing path invalidated or repaired, every modified path repaired.
func (r *VerifyReport) OK() bool {
	return len(r.Missing)+len(r.Modified) == len(r.Invalidated)+len(r.Repaired)
}

// VerifyOptions configure VerifyWith. A nil *VerifyOptions checks that
// every valid path exists and repairs nothing.
type VerifyOptions struct {
	// CheckContents also hashes every valid path and compares the NAR
	// hash with the database's (nix-store --verify --check-contents).
	CheckContents bool
	// Repair, if not nil, is called for each missing path that still has
	// valid referrers and each modified path (Nix's LocalStore::repairPath).
	// It must leave the path valid, at its name, with contents that hash
	// to the database's NAR hash (which it may update), or return an error
	// saying why it could not; the error's text goes to Messages as is.
	// It is called with the GC lock held shared, so it must not wait for
	// a garbage collection. Nil reports the paths without repairing them.
	Repair func(ctx context.Context, p storepath.Path) error
}

// Verify is VerifyWith without a repairer: with repair, every damaged
// path is reported as "cannot repair path" (Nix's message when a path has
// no substitute and no valid deriver to rebuild).
func (s *Store) Verify(ctx context.Context, checkContents, repair bool) (*VerifyReport, error) {
	opts := &VerifyOptions{CheckContents: checkContents}
	if repair {
		opts.Repair = func(_ context.Context, p storepath.Path) error {
			return fmt.Errorf("cannot repair path '%s'", p)
		}
	}
	return s.VerifyWith(ctx, opts)
}

// VerifyWith checks the store like Nix 2.8's LocalStore::verifyStore
// (nix-store --verify [--check-contents] [--repair]), in two rounds,
// each a plan (what is wrong) and then its execution:
//
//  1. Every valid path must exist on disk. A missing path is invalidated
//     when nothing valid refers to it; its missing referrers are handled
//     first, so a missing chain is invalidated whole, as Nix's verifyPath
//     does. A missing path that still has valid referrers is repaired.
//  2. With CheckContents, every path found in round 1 is hashed and
//     compared with the database; a missing NAR size is filled in. Modified
//     paths are repaired: each is hashed again first (an earlier repair,
//     rebuilding a derivation with several outputs, may have fixed it).
//
// A repaired path is hashed once more and only counts as repaired if it
// now matches the database. The GC lock is held shared throughout, as Nix
// does, so no GC runs meanwhile.
func (s *Store) VerifyWith(ctx context.Context, opts *VerifyOptions) (*VerifyReport, error) {
	if opts == nil {
		opts = &VerifyOptions{}
	}
	gcl, err := openGCLock(ctx, s.stateDir)
	if err != nil {
		return nil, err
	}
	defer gcl.Close()
	paths, err := s.QueryAllValidPaths(ctx)
	if err != nil {
		return nil, err
	}
	rep := &VerifyReport{}

	// Round 1: existence.
	missing := map[storepath.Path]bool{}
	var present []storepath.Path
	for _, p := range paths {
		if _, err := os.Lstat(s.RealPath(p)); err != nil {
			missing[p] = true
			rep.Missing = append(rep.Missing, p)
		} else {
			present = append(present, p)
		}
	}
	var stuck []storepath.Path // missing, with valid referrers
	done := map[storepath.Path]bool{}
	var visit func(p storepath.Path) error
	visit = func(p storepath.Path) error {
		if done[p] {
			return nil
		}
		done[p] = true
		if err := ctx.Err(); err != nil {
			return err
		}
		refs, err := s.QueryReferrers(ctx, p)
		if err != nil {
			return err
		}
		for _, r := range refs {
			if r != p && missing[r] {
				if err := visit(r); err != nil {
					return err
				}
			}
		}
		err = s.InvalidatePath(ctx, p)
		switch {
		case err == nil:
			rep.Invalidated = append(rep.Invalidated, p)
			rep.Messages = append(rep.Messages, fmt.Sprintf("path '%s' disappeared, removing from database...", p))
		case errors.Is(err, ErrPathInUse):
			rep.Messages = append(rep.Messages, fmt.Sprintf("path '%s' disappeared, but it still has valid referrers!", p))
			stuck = append(stuck, p)
		default:
			return err
		}
		return nil
	}
	for _, p := range rep.Missing {
		if err := visit(p); err != nil {
			return nil, err
		}
	}
	if opts.Repair != nil {
		for _, p := range stuck {
			if err := s.repairOne(ctx, opts.Repair, p, rep); err != nil {
				return nil, err
			}
		}
	}
	if !opts.CheckContents {
		return rep, nil
	}

	// Round 2: contents.
	var modified []storepath.Path
	for _, p := range present {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		info, err := s.QueryPathInfo(ctx, p)
		if errors.Is(err, store.ErrNotValid) {
			continue // collected meanwhile
		}
		if err != nil {
			return nil, err
		}
		got, size, err := s.hashPath(p)
		if err != nil {
			modified = append(modified, p)
			rep.Messages = append(rep.Messages, fmt.Sprintf("path '%s' cannot be read: %v", p, err))
			continue
		}
		if !got.Equal(info.NarHash) {
			modified = append(modified, p)
			rep.Messages = append(rep.Messages, fmt.Sprintf("path '%s' was modified! expected hash '%s', got '%s'", p,
				info.NarHash.Encode(hash.Nix32, true), got.Encode(hash.Nix32, true)))
			continue
		}
		if info.NarSize == 0 {
			info.NarSize = size
			if err := s.db.Write(ctx, func(tx *db.Tx) error { return tx.UpdatePathInfo(info) }); err != nil {
				return nil, err
			}
		}
	}
	rep.Modified = modified
	if opts.Repair == nil {
		return rep, nil
	}
	for _, p := range modified {
		if ok, err := s.contentsGood(ctx, p); err != nil {
			return nil, err
		} else if ok {
			rep.Repaired = append(rep.Repaired, p)
			rep.Messages = append(rep.Messages, fmt.Sprintf("path '%s' was repaired with another output of its deriver", p))
			continue
		}
		if err := s.repairOne(ctx, opts.Repair, p, rep); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// repairOne calls repair for p and records the outcome; only a cancelled
// ctx is returned as an error, a failed repair is a message.
func (s *Store) repairOne(ctx context.Context, repair func(context.Context, storepath.Path) error, p storepath.Path, rep *VerifyReport) error {
	if err := repair(ctx, p); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rep.Messages = append(rep.Messages, err.Error())
		return nil
	}
	ok, err := s.contentsGood(ctx, p)
	if err != nil {
		return err
	}
	if !ok {
		rep.Messages = append(rep.Messages, fmt.Sprintf("path '%s' is still damaged after its repair", p))
		return nil
	}
	rep.Repaired = append(rep.Repaired, p)
	rep.Messages = append(rep.Messages, fmt.Sprintf("path '%s' repaired", p))
	return nil
}

// contentsGood reports whether p is valid, present, and hashes to its
// database NAR hash (Nix's Worker::pathContentsGood).
func (s *Store) contentsGood(ctx context.Context, p storepath.Path) (bool, error) {
	info, err := s.QueryPathInfo(ctx, p)
	if errors.Is(err, store.ErrNotValid) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	got, _, err := s.hashPath(p)
	if err != nil {
		return false, nil
	}
	return got.Equal(info.NarHash), nil
}

// hashPath is the SHA-256 and size of p's NAR.
func (s *Store) hashPath(p storepath.Path) (hash.Hash, uint64, error) {
	ch := &countingHash{h: sha256.New()}
	if err := nar.Dump(ch, s.RealPath(p)); err != nil {
		return hash.Hash{}, 0, err
	}
	return hash.FromHasher(hash.SHA256, ch.h), ch.n, nil
}

func openGCLock(ctx context.Context, stateDir string) (*os.File, error) {
	f, err := lock.OpenLockFile(lock.GCLockPath(stateDir))
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	if err := lock.Flock(ctx, f, lock.Shared); err != nil {
		f.Close()
		return nil, fmt.Errorf("verify: %w", err)
	}
	return f, nil
}
