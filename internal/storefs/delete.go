package storefs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Delete removes the tree at p as Nix 2.8's deletePath (util.cc) does:
// entries first, giving a directory the owner's read, write and search
// bits where it lacks them (store directories are 0555 or 0444), so that
// read-only trees go too, also for a user other than root. It returns the
// bytes freed by Nix's rule (Freed). A missing p is not an error.
func Delete(p string) (freed uint64, err error) {
	st, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("delete %s: %w", p, err)
	}
	if st.IsDir() {
		if st.Mode().Perm()&0o700 != 0o700 {
			if err := os.Chmod(p, st.Mode().Perm()|0o700); err != nil {
				return 0, fmt.Errorf("delete %s: %w", p, err)
			}
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			return 0, fmt.Errorf("delete %s: %w", p, err)
		}
		for _, e := range ents {
			n, err := Delete(filepath.Join(p, e.Name()))
			freed += n
			if err != nil {
				return freed, err
			}
		}
	} else {
		freed = Freed(st)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return freed, fmt.Errorf("delete %s: %w", p, err)
	}
	return freed, nil
}

// Freed is what deleting a file with this Lstat frees, by Nix's rule: a
// non-directory with one link frees its size, and so does one with two,
// which is assumed to be a .links twin.
func Freed(st fs.FileInfo) uint64 {
	if st.IsDir() {
		return 0
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Nlink > 2 {
		return 0
	}
	return uint64(st.Size())
}

// DiskUsage is what Delete(p) would free, without deleting.
func DiskUsage(p string) (uint64, error) {
	var n uint64
	err := filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		n += Freed(st)
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("measure %s: %w", p, err)
	}
	return n, nil
}
