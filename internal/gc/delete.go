package gc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// freed is what deleting a file with this stat frees, by Nix's rule
// (deletePath in util.cc): a non-directory with one link frees its size,
// and so does one with two, which is assumed to be a .links twin.
func freed(st fs.FileInfo) uint64 {
	if st.IsDir() {
		return 0
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Nlink > 2 {
		return 0
	}
	return uint64(st.Size())
}

// deleteTree removes path recursively, adding write permission to
// directories where that is needed (store directories are 0555), and
// returns the bytes freed. A missing path is not an error.
func deleteTree(path string) (uint64, error) {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("delete %s: %w", path, err)
	}
	var n uint64
	if st.IsDir() {
		if st.Mode().Perm()&0o700 != 0o700 {
			if err := os.Chmod(path, st.Mode().Perm()|0o700); err != nil {
				return 0, fmt.Errorf("delete %s: %w", path, err)
			}
		}
		ents, err := os.ReadDir(path)
		if err != nil {
			return 0, fmt.Errorf("delete %s: %w", path, err)
		}
		for _, e := range ents {
			m, err := deleteTree(filepath.Join(path, e.Name()))
			n += m
			if err != nil {
				return n, err
			}
		}
	} else {
		n = freed(st)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return n, fmt.Errorf("delete %s: %w", path, err)
	}
	return n, nil
}

// diskUsage is what deleteTree would free, without deleting.
func diskUsage(path string) (uint64, error) {
	var n uint64
	err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
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
		n += freed(st)
		return nil
	})
	return n, err
}

// removeUnusedLinks deletes the files in .links that only the .links
// directory still links to (gc.cc removeUnusedLinks).
func removeUnusedLinks(linksDir string) error {
	ents, err := os.ReadDir(linksDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete unused links: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(linksDir, e.Name())
		st, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Nlink == 1 {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("delete unused links: %w", err)
			}
		}
	}
	return nil
}
