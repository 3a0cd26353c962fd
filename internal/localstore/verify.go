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
	// NAR hash (with checkContents).
	Modified []storepath.Path
	// Messages describe each problem, in Nix's words where it has them.
	Messages []string
}

// OK reports whether the store was found consistent: nothing missing
// that could not be invalidated, nothing modified.
func (r *VerifyReport) OK() bool {
	return len(r.Missing) == len(r.Invalidated) && len(r.Modified) == 0
}

// Verify checks the store like nix-store --verify: every valid path must
// exist on disk (missing ones without referrers are invalidated); with
// checkContents every path's NAR is hashed and compared with the
// database, and a missing NAR size is filled in. With repair, a missing
// path that still has referrers is reported as not repairable (ferry has
// no substituters), as are modified ones. The GC lock is held shared
// throughout, as Nix does, so no GC runs meanwhile.
func (s *Store) Verify(ctx context.Context, checkContents, repair bool) (*VerifyReport, error) {
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
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if _, err := os.Lstat(s.RealPath(p)); err != nil {
			rep.Missing = append(rep.Missing, p)
			err := s.InvalidatePath(ctx, p)
			switch {
			case err == nil:
				rep.Invalidated = append(rep.Invalidated, p)
				rep.Messages = append(rep.Messages, fmt.Sprintf("path '%s' disappeared, removing from database...", p))
			case errors.Is(err, ErrPathInUse):
				msg := fmt.Sprintf("path '%s' disappeared, but it still has valid referrers!", p)
				if repair {
					msg += " (cannot repair: no substituters)"
				}
				rep.Messages = append(rep.Messages, msg)
			default:
				return nil, err
			}
			continue
		}
		if !checkContents {
			continue
		}
		info, err := s.QueryPathInfo(ctx, p)
		if errors.Is(err, store.ErrNotValid) {
			continue // collected meanwhile
		}
		if err != nil {
			return nil, err
		}
		ch := &countingHash{h: sha256.New()}
		if err := nar.Dump(ch, s.RealPath(p)); err != nil {
			rep.Modified = append(rep.Modified, p)
			rep.Messages = append(rep.Messages, fmt.Sprintf("path '%s' cannot be read: %v", p, err))
			continue
		}
		got := hash.FromHasher(hash.SHA256, ch.h)
		if !got.Equal(info.NarHash) {
			rep.Modified = append(rep.Modified, p)
			msg := fmt.Sprintf("path '%s' was modified! expected hash '%s', got '%s'", p,
				info.NarHash.Encode(hash.Nix32, true), got.Encode(hash.Nix32, true))
			if repair {
				msg += " (cannot repair: no substituters)"
			}
			rep.Messages = append(rep.Messages, msg)
			continue
		}
		if info.NarSize == 0 {
			info.NarSize = ch.n
			if err := s.db.Write(ctx, func(tx *db.Tx) error { return tx.UpdatePathInfo(info) }); err != nil {
				return nil, err
			}
		}
	}
	return rep, nil
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
