package gc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

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
