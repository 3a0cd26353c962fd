package build

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// canonicalise is Nix's canonicalisePathMetaData for a build output
// (docs/store.md §7.1): only regular files, directories and symlinks;
// extended attributes removed (but the ones Nix ignores); permissions
// 0444 or 0555; mtime 1, symlinks included; owned by the effective user.
// Parents are fixed before their children.
func canonicalise(root string) error {
	uid, gid := os.Geteuid(), os.Getegid()
	var walk func(p string) error
	walk = func(p string) error {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("canonicalise %s: %w", p, err)
		}
		typ := st.Mode & unix.S_IFMT
		switch typ {
		case unix.S_IFREG, unix.S_IFDIR, unix.S_IFLNK:
		default:
			return fmt.Errorf("file '%s' has an unsupported type", p)
		}
		if typ != unix.S_IFLNK {
			if err := dropXattrs(p); err != nil {
				return err
			}
			if m := st.Mode & 0o7777; m != 0o444 && m != 0o555 {
				want := uint32(0o444)
				if st.Mode&unix.S_IXUSR != 0 {
					want = 0o555
				}
				if err := unix.Chmod(p, want); err != nil {
					return fmt.Errorf("canonicalise %s: %w", p, err)
				}
			}
		}
		if st.Mtim.Sec != 1 || st.Mtim.Nsec != 0 {
			ts := []unix.Timespec{{Sec: st.Atim.Sec}, {Sec: 1}}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("canonicalise %s: %w", p, err)
			}
		}
		if int(st.Uid) != uid || int(st.Gid) != gid {
			if err := unix.Lchown(p, uid, gid); err != nil {
				return fmt.Errorf("canonicalise %s: %w", p, err)
			}
		}
		if typ != unix.S_IFDIR {
			return nil
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			return fmt.Errorf("canonicalise %s: %w", p, err)
		}
		for _, e := range ents {
			if err := walk(filepath.Join(p, e.Name())); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(root)
}

func dropXattrs(p string) error {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz <= 0 {
		return nil // none, or not supported by the file system
	}
	buf := make([]byte, sz)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return nil
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if name == "" || name == "security.selinux" || name == "system.nfs4_acl" {
			continue
		}
		if err := unix.Lremovexattr(p, name); err != nil {
			return fmt.Errorf("remove extended attribute '%s' of '%s': %w", name, p, err)
		}
	}
	return nil
}

// deleteTree removes p recursively, first making directories writable so
// that read-only trees (canonicalised outputs, builder-made dirs) go too.
// A missing p is not an error.
func deleteTree(p string) error {
	if err := os.RemoveAll(p); err == nil {
		return nil
	}
	filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(q, 0o700)
		}
		return nil
	})
	if err := os.RemoveAll(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", p, err)
	}
	return nil
}

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
