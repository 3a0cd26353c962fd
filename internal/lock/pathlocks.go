package lock

import (
	"context"
	"fmt"
	"os"
	"slices"
)

// PathLocks is a set of held path locks: an exclusive flock on
// "<path>.lock" for each physical path, taken in sorted order so that two
// lockers never deadlock (Nix's PathLocks::lockPaths, pathlocks.cc:82).
// It is not safe for concurrent use.
type PathLocks struct {
	held     []heldLock
	deletion bool
}

type heldLock struct {
	lockPath string
	f        *os.File
}

// LockPaths locks every physical path in paths (duplicates are fine).
// With wait false it returns ErrWouldBlock, holding nothing, as soon as
// one lock is taken by someone else.
//
// The deleted-lock-file protocol: a holder that releases with deletion
// enabled unlinks the lock file and writes "d" into it, so a waiter that
// then gets the lock on the unlinked file sees a non-empty file and
// starts over with a fresh one.
func LockPaths(ctx context.Context, paths []string, wait bool) (*PathLocks, error) {
	sorted := slices.Clone(paths)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	pl := &PathLocks{}
	for _, p := range sorted {
		lp := p + ".lock"
		for {
			f, err := OpenLockFile(lp)
			if err != nil {
				pl.Unlock()
				return nil, err
			}
			if wait {
				err = Flock(ctx, f, Exclusive)
			} else {
				var ok bool
				ok, err = TryFlock(f, Exclusive)
				if err == nil && !ok {
					f.Close()
					pl.Unlock()
					return nil, fmt.Errorf("lock %s: %w", p, ErrWouldBlock)
				}
			}
			if err != nil {
				f.Close()
				pl.Unlock()
				return nil, err
			}
			st, err := f.Stat()
			if err != nil {
				f.Close()
				pl.Unlock()
				return nil, fmt.Errorf("lock %s: %w", p, err)
			}
			if st.Size() != 0 {
				// A stale lock file: its holder deleted it.
				f.Close()
				continue
			}
			pl.held = append(pl.held, heldLock{lockPath: lp, f: f})
			break
		}
	}
	return pl, nil
}

// SetDeletion makes Unlock delete the lock files. Enable it only once the
// locked paths are valid, so that every later locker sees them valid.
func (pl *PathLocks) SetDeletion(on bool) { pl.deletion = on }

// Unlock releases every lock (deleting the lock files if SetDeletion was
// called). It is safe to call more than once.
func (pl *PathLocks) Unlock() error {
	if pl == nil {
		return nil
	}
	var first error
	for _, h := range pl.held {
		if pl.deletion {
			// Unlink first, then mark the file stale for anyone who
			// opened it before the unlink and is waiting on it.
			if err := os.Remove(h.lockPath); err != nil && !os.IsNotExist(err) && first == nil {
				first = fmt.Errorf("unlock %s: %w", h.lockPath, err)
			}
			h.f.Write([]byte("d"))
		}
		if err := h.f.Close(); err != nil && first == nil {
			first = err
		}
	}
	pl.held = nil
	return first
}
