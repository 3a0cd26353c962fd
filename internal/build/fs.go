package build

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// makeBuildDir creates <parent>/<prefix>-<n> with mode 0700, n counting
// from 0 (Nix's createTempDir).
func makeBuildDir(parent, prefix string) (string, error) {
	for n := 0; ; n++ {
		p := filepath.Join(parent, fmt.Sprintf("%s-%d", prefix, n))
		err := os.Mkdir(p, 0o700)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, fs.ErrExist) || n > 1<<20 {
			return "", fmt.Errorf("create build directory: %w", err)
		}
	}
}

// statUID is the owner of a file from its Lstat.
func statUID(fi fs.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}
