package db

import (
	"errors"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DefaultReservedSize is Nix's gc-reserved-space default: 8 MiB.
const DefaultReservedSize = 8 << 20

// ReservedPath is db/reserved of dbDir: space held back so that SQLite
// can still open the database, and the garbage collector run, on a full
// disk.
func ReservedPath(dbDir string) string { return filepath.Join(dbDir, "reserved") }

// Reserve makes dbDir's reserved file size bytes long, as Nix 2.8 does
// each time it opens a local store: when the file is missing or has
// another size it is opened (created 0600, never truncated) and
// posix_fallocate'd to size; a size of zero or less only creates it.
// Nix ignores every error here ("don't care about errors"), so callers
// may too: a full disk must not stop a store from opening.
func Reserve(dbDir string, size int64) error {
	p := ReservedPath(dbDir)
	if st, err := os.Stat(p); err == nil && st.Size() == size {
		return nil
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if size <= 0 {
		return nil
	}
	// posix_fallocate with mode 0; on a filesystem without fallocate,
	// write the bytes as glibc's emulation (and Nix's fallback) does.
	err = unix.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		err = fill(f, size)
	}
	return err
}

func fill(f *os.File, size int64) error {
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = 'X'
	}
	for off := int64(0); off < size; {
		n := int64(len(buf))
		if size-off < n {
			n = size - off
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// Unreserve deletes dbDir's reserved file, as a deleting garbage
// collection does first thing (gc.cc, LocalStore::collectGarbage). A
// missing file is fine.
func Unreserve(dbDir string) error {
	err := os.Remove(ReservedPath(dbDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
