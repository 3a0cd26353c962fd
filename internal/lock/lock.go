// Package lock owns the locks a Nix-compatible store takes on disk
// (docs/store.md §6): BSD flock(2) locks, never POSIX ones, so that ferry
// and real Nix see each other's locks.
//
//   - Flock/OpenLockFile: the primitive (pathlocks.cc lockFile, openLockFile).
//   - PathLocks: per-path "<path>.lock" files with the deleted-lock-file
//     protocol, taken in sorted order (§6.2).
//   - BigLock: db/big-lock, held shared for a store's lifetime.
//   - GC lock: gc.lock, shared around a temp-root write, exclusive for GC.
//   - TempRoots: var/nix/temproots/<pid> and the 2.8 gc-socket handshake
//     (§6.3, §6.4); ReadTempRoots is the GC's side of the file protocol.
//
// Every function here works on physical paths.
package lock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// Mode is a flock mode.
type Mode int

// The modes of Flock.
const (
	Unlock    Mode = iota // LOCK_UN
	Shared                // LOCK_SH
	Exclusive             // LOCK_EX
)

func (m Mode) op() int {
	switch m {
	case Shared:
		return syscall.LOCK_SH
	case Exclusive:
		return syscall.LOCK_EX
	}
	return syscall.LOCK_UN
}

// ErrWouldBlock is returned by non-waiting lock attempts that would block.
var ErrWouldBlock = errors.New("lock is held by another process")

// OpenLockFile opens (creating, mode 0600) a lock file the way Nix does:
// O_RDWR|O_CREAT|O_CLOEXEC.
func OpenLockFile(path string) (*os.File, error) {
	// A plain open: os.OpenFile's poller set-up costs five system calls
	// per lock, noticeable when adding many small paths.
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CREAT|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// TryFlock applies mode to f without blocking and reports whether it got
// the lock.
func TryFlock(f *os.File, mode Mode) (bool, error) {
	for {
		err := syscall.Flock(int(f.Fd()), mode.op()|syscall.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return false, nil
		}
		return false, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
}

// Flock applies mode to f, waiting until it can. A context that can be
// cancelled is honoured by polling, since a blocking flock cannot be
// interrupted; a context that can't (context.Background) blocks in the
// kernel.
func Flock(ctx context.Context, f *os.File, mode Mode) error {
	ok, err := TryFlock(f, mode)
	if err != nil || ok {
		return err
	}
	if ctx.Done() == nil {
		for {
			err := syscall.Flock(int(f.Fd()), mode.op())
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("lock %s: %w", f.Name(), err)
			}
			return nil
		}
	}
	delay := time.Millisecond
	for {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("lock %s: %w", f.Name(), ctx.Err())
		case <-t.C:
		}
		ok, err := TryFlock(f, mode)
		if err != nil || ok {
			return err
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}

// BigLock is db/big-lock held shared: every store handle holds it for its
// lifetime, and a schema change takes it exclusive (§6.1).
type BigLock struct{ f *os.File }

// AcquireBigLock opens path and locks it in mode (Shared normally).
func AcquireBigLock(ctx context.Context, path string, mode Mode) (*BigLock, error) {
	f, err := OpenLockFile(path)
	if err != nil {
		return nil, err
	}
	if err := Flock(ctx, f, mode); err != nil {
		f.Close()
		return nil, err
	}
	return &BigLock{f: f}, nil
}

// TryBigLock is AcquireBigLock in mode without waiting: nil when another
// process holds a conflicting lock.
func TryBigLock(path string, mode Mode) (*BigLock, error) {
	f, err := OpenLockFile(path)
	if err != nil {
		return nil, err
	}
	ok, err := TryFlock(f, mode)
	if err != nil || !ok {
		f.Close()
		return nil, err
	}
	return &BigLock{f: f}, nil
}

// Downgrade turns an exclusive big lock into a shared one. flock
// conversions are not atomic, which is harmless here: the exclusive phase
// only initialises an empty store.
func (b *BigLock) Downgrade(ctx context.Context) error { return Flock(ctx, b.f, Shared) }

// Release closes the lock file, dropping the lock.
func (b *BigLock) Release() error {
	if b == nil || b.f == nil {
		return nil
	}
	err := b.f.Close()
	b.f = nil
	return err
}
