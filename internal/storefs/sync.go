package storefs

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Sync fsyncs the regular file or directory p.
func Sync(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	return nil
}

// SyncFS flushes the whole file system holding p (syncfs): one call
// instead of an fsync per file when many objects were written.
func SyncFS(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("sync file system of %s: %w", p, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync file system of %s: %w", p, err)
	}
	return nil
}
