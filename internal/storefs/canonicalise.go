package storefs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// IgnoredXattrs are the extended attributes Canonicalise leaves in place:
// the default of Nix 2.8's ignored-acls setting, attributes that even root
// cannot remove.
var IgnoredXattrs = []string{"security.selinux", "system.nfs4_acl"}

// mtimeStore is the modification time of everything in the store, one
// second into the epoch.
const mtimeStore = 1

// Canonicalise gives the tree at root the metadata of a store object, as
// Nix 2.8's canonicalisePathMetaData (local-store.cc, without a build
// user) does, a directory before its entries:
//
//   - it must hold only regular files, directories and symlinks;
//   - every extended attribute is removed but IgnoredXattrs, symlinks'
//     too;
//   - a file or directory whose mode is neither 0444 nor 0555 gets 0555
//     if its owner may execute (for a directory, search) it and 0444 if
//     not, which clears the write, setuid, setgid and sticky bits. A
//     directory is not forced to 0555: one without the owner's x bit ends
//     up 0444, as Nix leaves it;
//   - the modification time becomes 1, symlinks' included (the access
//     time keeps its seconds);
//   - an entry owned by another user is given to the effective user and
//     group (lchown).
//
// With sync, every regular file and directory is also fsynced, a
// directory after its entries.
func Canonicalise(root string, sync bool) error {
	return canonicalise(root, sync, os.Geteuid(), os.Getegid())
}

func canonicalise(p string, sync bool, uid, gid int) error {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return fmt.Errorf("canonicalise %s: %w", p, err)
	}
	typ := st.Mode & unix.S_IFMT
	if typ != unix.S_IFREG && typ != unix.S_IFDIR && typ != unix.S_IFLNK {
		return fmt.Errorf("file '%s' has an unsupported type", p)
	}
	if err := RemoveXattrs(p); err != nil {
		return err
	}
	if typ != unix.S_IFLNK {
		if m := st.Mode &^ unix.S_IFMT; m != 0o444 && m != 0o555 {
			want := uint32(0o444)
			if st.Mode&unix.S_IXUSR != 0 {
				want = 0o555
			}
			if err := unix.Chmod(p, want); err != nil {
				return fmt.Errorf("change mode of %s to %o: %w", p, want, err)
			}
		}
	}
	if st.Mtim.Sec != mtimeStore || st.Mtim.Nsec != 0 {
		ts := []unix.Timespec{{Sec: st.Atim.Sec}, {Sec: mtimeStore}}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("change modification time of %s: %w", p, err)
		}
	}
	if int(st.Uid) != uid {
		if err := unix.Lchown(p, uid, gid); err != nil {
			return fmt.Errorf("change owner of %s to %d: %w", p, uid, err)
		}
	}
	if typ == unix.S_IFDIR {
		ents, err := os.ReadDir(p)
		if err != nil {
			return fmt.Errorf("canonicalise %s: %w", p, err)
		}
		for _, e := range ents {
			if err := canonicalise(filepath.Join(p, e.Name()), sync, uid, gid); err != nil {
				return err
			}
		}
	}
	if sync && typ != unix.S_IFLNK {
		return Sync(p)
	}
	return nil
}

// RemoveXattrs removes every extended attribute of p (not following a
// symlink) but IgnoredXattrs, however long the list of names is. A file
// system without extended attributes has none to remove.
func RemoveXattrs(p string) error {
	names, err := listXattrs(p)
	if err != nil {
		return err
	}
	for _, name := range names {
		if ignoredXattr(name) {
			continue
		}
		if err := unix.Lremovexattr(p, name); err != nil {
			return fmt.Errorf("remove extended attribute %s of %s: %w", name, p, err)
		}
	}
	return nil
}

// listXattrs returns the names of p's extended attributes. The list is
// read into a small buffer first; when it is longer (ERANGE), its size is
// asked for and the read repeated, as often as the list keeps growing in
// between.
func listXattrs(p string) ([]string, error) {
	var small [1024]byte
	buf := small[:]
	for {
		n, err := unix.Llistxattr(p, buf)
		switch {
		case err == nil:
			return splitNames(buf[:n]), nil
		case errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.ENODATA):
			return nil, nil
		case !errors.Is(err, unix.ERANGE):
			return nil, fmt.Errorf("list extended attributes of %s: %w", p, err)
		}
		size, err := unix.Llistxattr(p, nil)
		if err != nil {
			return nil, fmt.Errorf("list extended attributes of %s: %w", p, err)
		}
		// Room for the list to have grown a little since.
		buf = make([]byte, size+size/8+256)
	}
}

func splitNames(b []byte) []string {
	var names []string
	for name := range strings.SplitSeq(string(b), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	return names
}

func ignoredXattr(name string) bool {
	for _, n := range IgnoredXattrs {
		if name == n {
			return true
		}
	}
	return false
}
