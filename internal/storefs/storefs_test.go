package storefs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"ferry/internal/nixtest"
)

// xattrDir returns a directory whose file system holds a list of user.*
// extended attribute names longer than 4096 bytes on one file: the test's
// TempDir if it can (ext4 can't: all of a file's attributes must fit in
// one block), else one in /dev/shm (tmpfs can, since Linux 6.6). Where
// neither can, the test is skipped, or fails under CI.
func xattrDir(t *testing.T) string {
	t.Helper()
	var errs []error
	for _, parent := range []string{"", "/dev/shm"} {
		dir, err := os.MkdirTemp(parent, "storefs-xattr-")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t.Cleanup(func() { Delete(dir) })
		f := filepath.Join(dir, "probe")
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := setLongXattrs(f, 5000); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", dir, err))
			continue
		}
		os.Remove(f)
		return dir
	}
	nixtest.Need(t, fmt.Errorf("no file system here holds more than 4096 bytes of extended attribute names: %w", errors.Join(errs...)))
	return ""
}

// setLongXattrs gives p user.* attributes with long names until the
// list of names (each with its NUL) is longer than n bytes, and returns
// the names.
func setLongXattrs(p string, n int) ([]string, error) {
	var names []string
	total := 0
	for i := 0; total <= n; i++ {
		name := fmt.Sprintf("user.ferry-%03d-%s", i, strings.Repeat("x", 180))
		if err := unix.Lsetxattr(p, name, []byte(fmt.Sprint("value ", i)), 0); err != nil {
			return nil, fmt.Errorf("set extended attribute %d of %s: %w", i, p, err)
		}
		names = append(names, name)
		total += len(name) + 1
	}
	return names, nil
}

// listAll lists p's attributes independently of listXattrs.
func listAll(t *testing.T, p string) []string {
	t.Helper()
	buf := make([]byte, 1<<16) // XATTR_LIST_MAX
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatal(err)
	}
	return strings.FieldsFunc(string(buf[:n]), func(r rune) bool { return r == 0 })
}

// TestRemoveXattrsLongList is the edge the 4096-byte buffer missed: with
// a longer list Llistxattr failed with ERANGE and nothing was removed.
func TestRemoveXattrsLongList(t *testing.T) {
	dir := xattrDir(t)
	f := filepath.Join(dir, "file")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	names, err := setLongXattrs(f, 20000)
	if err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, f); len(got) != len(names) {
		t.Fatalf("listed %d attributes, set %d", len(got), len(names))
	}
	if err := RemoveXattrs(f); err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, f); len(got) != 0 {
		t.Errorf("%d attributes left, e.g. %s", len(got), got[0])
	}
}

// TestCanonicaliseRemovesLongXattrs puts long lists on a directory and
// the file in it: Canonicalise leaves neither any attribute.
func TestCanonicaliseRemovesLongXattrs(t *testing.T) {
	root := filepath.Join(xattrDir(t), "obj")
	sub := filepath.Join(root, "sub")
	f := filepath.Join(sub, "file")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{root, sub, f} {
		if _, err := setLongXattrs(p, 6000); err != nil {
			t.Fatal(err)
		}
	}
	if err := Canonicalise(root, true); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{root, sub, f} {
		if got := listAll(t, p); len(got) != 0 {
			t.Errorf("%s: %d attributes left, e.g. %s", p, len(got), got[0])
		}
	}
}

// TestCanonicaliseModes checks Nix 2.8's rule on files and directories
// alike: 0444 and 0555 stay; anything else becomes 0555 if the owner's x
// bit is set and 0444 if not, so a directory without it is 0444, not
// 0555. (internal/build and internal/localstore compare whole trees with
// what nix-build and nix-store --add leave.)
func TestCanonicaliseModes(t *testing.T) {
	root := filepath.Join(t.TempDir(), "obj")
	type entry struct {
		rel        string
		dir        bool
		mode, want os.FileMode // want is the permission bits after
	}
	entries := []entry{
		{"", true, 0o755, 0o555},
		{"d755", true, 0o755, 0o555},
		{"d755/file", false, 0o644, 0o444},
		{"d700", true, 0o700, 0o555},
		{"d700/exe", false, 0o700, 0o555},
		{"d777", true, 0o777, 0o555},
		{"d555", true, 0o555, 0o555},
		{"d100", true, 0o100, 0o555},
		{"d600", true, 0o600, 0o444}, // empty: searching it isn't needed
		{"d400", true, 0o400, 0o444},
		{"d444", true, 0o444, 0o444},
		{"f600", false, 0o600, 0o444},
		{"f666", false, 0o666, 0o444},
		{"f755", false, 0o755, 0o555},
		{"f111", false, 0o111, 0o555},
		{"f444", false, 0o444, 0o444},
		{"f555", false, 0o555, 0o555},
		{"setuid", false, 0o4755 | os.ModeSetuid, 0o555},
		{"sticky", false, 0o644 | os.ModeSticky, 0o444},
		{"setgid", false, 0o2644 | os.ModeSetgid, 0o444},
	}
	// Create everything writable, then set the modes, deepest first.
	for _, e := range entries {
		p := filepath.Join(root, e.rel)
		var err error
		if e.dir {
			err = os.MkdirAll(p, 0o755)
		} else {
			err = os.WriteFile(p, []byte(e.rel), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("d755/file", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	for i := len(entries) - 1; i >= 0; i-- {
		e := entries[i]
		if err := os.Chmod(filepath.Join(root, e.rel), e.mode&os.ModePerm|e.mode&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
			t.Fatal(err)
		}
	}
	if err := Canonicalise(root, false); err != nil {
		t.Fatal(err)
	}
	uid := os.Geteuid()
	for _, e := range append(entries, entry{rel: "link"}) {
		p := filepath.Join(root, e.rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mtim.Sec != 1 || st.Mtim.Nsec != 0 {
			t.Errorf("%q: mtime %d.%09d, want 1", e.rel, st.Mtim.Sec, st.Mtim.Nsec)
		}
		if int(st.Uid) != uid {
			t.Errorf("%q: owner %d, want %d", e.rel, st.Uid, uid)
		}
		if e.rel == "link" {
			if st.Mode&unix.S_IFMT != unix.S_IFLNK {
				t.Errorf("link: not a symlink any more")
			}
			continue
		}
		if got := os.FileMode(st.Mode & 0o7777); got != e.want {
			t.Errorf("%q (mode %o before): mode %o, want %o", e.rel, e.mode&os.ModePerm, got, e.want)
		}
	}
	// A second run changes nothing and still succeeds.
	if err := Canonicalise(root, true); err != nil {
		t.Fatal(err)
	}
}

func TestCanonicaliseUnsupportedType(t *testing.T) {
	root := t.TempDir()
	fifo := filepath.Join(root, "pipe")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Skip(err)
	}
	err := Canonicalise(root, false)
	if want := fmt.Sprintf("file '%s' has an unsupported type", fifo); err == nil || err.Error() != want {
		t.Errorf("Canonicalise = %v, want %q", err, want)
	}
}

func TestDeleteReadOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "obj")
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.MkdirAll(filepath.Join(dir, "closed"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "f"), []byte("12345"), 0o444)
	os.WriteFile(filepath.Join(dir, "closed", "h"), []byte("1234567"), 0o444)
	os.WriteFile(filepath.Join(dir, "g"), []byte("123"), 0o444)
	os.Link(filepath.Join(dir, "g"), filepath.Join(t.TempDir(), "g2"))
	os.Symlink("f", filepath.Join(dir, "sub", "l"))
	os.Chmod(filepath.Join(dir, "sub"), 0o555)
	os.Chmod(filepath.Join(dir, "closed"), 0o444) // as Canonicalise leaves a directory without x
	os.Chmod(dir, 0o555)
	du, err := DiskUsage(dir)
	if err != nil && os.Geteuid() == 0 {
		t.Fatal(err)
	}
	n, err := Delete(dir)
	if err != nil {
		t.Fatal(err)
	}
	// f (5) + h (7) + g (3, two links) + l (1, the symlink's size).
	if n != 16 {
		t.Errorf("freed %d, want 16", n)
	}
	if os.Geteuid() == 0 && du != 16 {
		t.Errorf("disk usage %d, want 16", du)
	}
	if _, err := os.Lstat(dir); !os.IsNotExist(err) {
		t.Errorf("still there: %v", err)
	}
	if n, err := Delete(dir); n != 0 || err != nil {
		t.Errorf("deleting a missing path: %d, %v", n, err)
	}
}

func TestSync(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	if err := os.WriteFile(f, []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{f, dir} {
		if err := Sync(p); err != nil {
			t.Error(err)
		}
	}
	if err := SyncFS(dir); err != nil {
		t.Error(err)
	}
	err := Sync(filepath.Join(dir, "missing"))
	if err == nil || !strings.HasPrefix(err.Error(), "sync ") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Sync(missing) = %v", err)
	}
}
