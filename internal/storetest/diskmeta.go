package storetest

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// DiskMeta describes every entry of the tree at root as a store leaves it
// on disk: type, permission bits (with setuid, setgid and sticky), mtime
// and the size of its extended attribute list, one sorted line per entry.
// Tests compare what ferry leaves with what Nix leaves.
func DiskMeta(t testing.TB, root string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		xattrs, _ := unix.Llistxattr(p, nil)
		lines = append(lines, fmt.Sprintf("%s type=%o mode=%04o mtime=%d.%09d xattrs=%d",
			rel, st.Mode&unix.S_IFMT, st.Mode&0o7777, st.Mtim.Sec, st.Mtim.Nsec, xattrs))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
