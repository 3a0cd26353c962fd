package machines

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"ferry/internal/lock"
)

// Load is Nix 2.8's current-load directory (src/build-remote/
// build-remote.cc@2.8.0): "<stateDir>/current-load", holding main-lock,
// one lock file per machine slot, "<escaped URI>-<slot>", and one upload
// lock per machine, "<escaped URI>.upload-lock", the escaped URI being
// Machine.URI with every "/" replaced by "_". Every lock is a BSD flock
// (src/libstore/pathlocks.cc@2.8.0 lockFile), exclusive, on a file opened
// O_RDWR|O_CREAT|O_CLOEXEC with mode 0600, so ferry and Nix processes see
// each other's slots. A slot is busy while any process (this one
// included, through another Slot) holds its lock.
type Load struct {
	dir string
}

// OpenLoad uses stateDir's current-load directory, creating it with mode
// 0777 (less the umask) as build-remote does. stateDir is the client
// store's state directory: for a local store rooted at DIR,
// DIR/nix/var/nix; for /nix, /nix/var/nix (Nix: LocalFSStore::stateDir,
// else settings.nixStateDir). stateDir itself must exist.
func OpenLoad(stateDir string) (*Load, error) {
	dir := filepath.Join(stateDir, "current-load")
	if err := os.Mkdir(dir, 0o777); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	if fi, err := os.Stat(dir); err != nil {
		return nil, err
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	return &Load{dir: dir}, nil
}

// Dir is the current-load directory.
func (l *Load) Dir() string { return l.dir }

// EscapeURI is build-remote's escapeUri: every "/" replaced by "_".
func EscapeURI(uri string) string { return strings.ReplaceAll(uri, "/", "_") }

// SlotFile is the lock file of slot i of m, as build-remote's
// openSlotLock names it.
func (l *Load) SlotFile(m *Machine, i int) string {
	return filepath.Join(l.dir, EscapeURI(m.URI)+"-"+strconv.Itoa(i))
}

// UploadFile is m's upload lock file.
func (l *Load) UploadFile(m *Machine) string {
	return filepath.Join(l.dir, EscapeURI(m.URI)+".upload-lock")
}

// Slot is a held slot lock: one of the machine's MaxJobs builds.
type Slot struct {
	Machine *Machine
	// Index is the slot number; Load is how many of the machine's other
	// slots were busy when it was taken (Nix's load).
	Index, Load int
	f           *os.File
}

// Release gives the slot back. Releasing twice is a no-op.
func (s *Slot) Release() error {
	if s == nil || s.f == nil {
		return nil
	}
	err := s.f.Close() // closing the only descriptor drops the flock
	s.f = nil
	return err
}

// withMain runs fn holding main-lock, which build-remote holds (blocking)
// around its whole scan of the slots.
func (l *Load) withMain(fn func() error) error {
	f, err := lock.OpenLockFile(filepath.Join(l.dir, "main-lock"))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := lock.Flock(context.Background(), f, lock.Exclusive); err != nil {
		return err
	}
	return fn()
}

// probe tries every slot of m as build-remote does: it keeps the first
// free one locked and counts the busy ones. The caller holds main-lock.
func (l *Load) probe(m *Machine) (*Slot, int, error) {
	var free *Slot
	busy := 0
	for i := 0; i < int(m.MaxJobs); i++ {
		f, err := lock.OpenLockFile(l.SlotFile(m, i))
		if err != nil {
			free.Release()
			return nil, 0, err
		}
		ok, err := lock.TryFlock(f, lock.Exclusive)
		if err != nil {
			f.Close()
			free.Release()
			return nil, 0, err
		}
		switch {
		case !ok:
			busy++
			f.Close()
		case free == nil:
			free = &Slot{Machine: m, Index: i, f: f}
		default:
			f.Close()
		}
	}
	if free != nil {
		free.Load = busy
	}
	return free, busy, nil
}

// touch sets the slot file's times to now, as build-remote's futimens on
// the chosen slot.
func touch(s *Slot) error {
	now := time.Now()
	return os.Chtimes(s.f.Name(), now, now)
}

// TryAcquire takes a free slot of m without waiting for one: nil when
// every slot is busy (or m has none). It holds main-lock while it looks,
// as Nix does, so a concurrent build-remote sees either the slot taken or
// free, never a probe.
func (l *Load) TryAcquire(m *Machine) (*Slot, error) {
	var slot *Slot
	err := l.withMain(func() error {
		s, _, err := l.probe(m)
		if err != nil || s == nil {
			return err
		}
		if err := touch(s); err != nil {
			s.Release()
			return err
		}
		slot = s
		return nil
	})
	return slot, err
}

// Used counts m's busy slots, by anyone, the way build-remote computes a
// machine's load: a slot whose lock cannot be taken at once. It holds
// main-lock while it probes.
func (l *Load) Used(m *Machine) (int, error) {
	var n int
	err := l.withMain(func() error {
		s, busy, err := l.probe(m)
		s.Release()
		n = busy
		return err
	})
	return n, err
}

// Select chooses among ms as build-remote.cc@2.8.0 does, under main-lock:
// of the machines that CanBuild(system, required) and have a free slot,
// the lowest load/SpeedFactor in integer division (Nix 2.8; later Nix
// divides floats), then the higher SpeedFactor, then the lower load, then
// the first listed. It returns the chosen machine's slot, held, or nil;
// rightType reports whether any machine could build it at all (Nix
// replies "postpone" when one could but all are busy and the build can't
// run locally, else "decline"). Disabled machines are the caller's to
// leave out of ms.
func (l *Load) Select(ms []*Machine, system string, required []string) (slot *Slot, rightType bool, err error) {
	err = l.withMain(func() error {
		var best *Slot
		for _, m := range ms {
			if !m.CanBuild(system, required) {
				continue
			}
			rightType = true
			s, load, err := l.probe(m)
			if err != nil {
				best.Release()
				return err
			}
			if s == nil {
				continue
			}
			better := best == nil
			if !better {
				bm := best.Machine
				a, b := uint32(load)/m.SpeedFactor, uint32(best.Load)/bm.SpeedFactor
				better = a < b || a == b && (m.SpeedFactor > bm.SpeedFactor || m.SpeedFactor == bm.SpeedFactor && load < best.Load)
			}
			if better {
				best.Release()
				best = s
			} else {
				s.Release()
			}
		}
		if best == nil {
			return nil
		}
		if err := touch(best); err != nil {
			best.Release()
			return err
		}
		slot = best
		return nil
	})
	return slot, rightType, err
}

// UploadLock is a held upload lock.
type UploadLock struct{ f *os.File }

// Release gives the upload lock back. Releasing twice is a no-op.
func (u *UploadLock) Release() error {
	if u == nil || u.f == nil {
		return nil
	}
	err := u.f.Close()
	u.f = nil
	return err
}

// UploadLock takes m's upload lock, which build-remote holds while it
// copies a build's inputs to the machine, waiting until ctx is done. Nix
// 2.8 waits 15 minutes and then goes on without it ("somebody is hogging
// the upload lock"); a caller that wants that gives a context with that
// timeout and goes on when this fails with context.DeadlineExceeded.
func (l *Load) UploadLock(ctx context.Context, m *Machine) (*UploadLock, error) {
	f, err := lock.OpenLockFile(l.UploadFile(m))
	if err != nil {
		return nil, err
	}
	if err := lock.Flock(ctx, f, lock.Exclusive); err != nil {
		f.Close()
		return nil, err
	}
	return &UploadLock{f: f}, nil
}

// UploadWait is how long build-remote waits for a machine's upload lock
// (build-remote.cc@2.8.0) before it goes on without it.
const UploadWait = 15 * time.Minute

// UploadLockWait is UploadLock as build-remote takes it: waiting at most
// wait (UploadWait when zero), then going on without the lock (a nil
// *UploadLock, whose Release does nothing) and hogged true, for the
// caller to say "somebody is hogging the upload lock".
func (l *Load) UploadLockWait(ctx context.Context, m *Machine, wait time.Duration) (ul *UploadLock, hogged bool, err error) {
	if wait <= 0 {
		wait = UploadWait
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	ul, err = l.UploadLock(wctx, m)
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return nil, true, nil
	}
	return ul, false, err
}
