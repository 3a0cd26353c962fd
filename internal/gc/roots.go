package gc

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"

	"ferry/nix/storepath"
)

// RootKind says where a root was found.
type RootKind int

const (
	// Permanent roots are symlinks (direct, or indirect through
	// gcroots/auto) and files under gcroots and profiles.
	Permanent RootKind = iota
	// Runtime roots are store paths a running process uses (/proc).
	Runtime
)

func (k RootKind) String() string {
	if k == Runtime {
		return "runtime"
	}
	return "permanent"
}

// Root is one valid store path kept alive by a root.
type Root struct {
	Path storepath.Path
	// Link is what roots Path: the symlink or file under gcroots or
	// profiles, or the /proc entry of a process.
	Link string
	Kind RootKind
}

// rootFinder looks for roots of one store. valid reports whether a store
// path is valid; only valid paths are roots.
type rootFinder struct {
	dir      storepath.Dir
	realDir  string
	stateDir string
	valid    func(storepath.Path) bool
	// deleteStale removes gcroots/auto links whose target is gone.
	deleteStale bool
	logf        func(format string, args ...any)
	roots       []Root
}

func (f *rootFinder) found(link, target string) {
	p, ok := toStorePath(f.dir, f.realDir, target)
	if !ok {
		return
	}
	if !f.valid(p) {
		f.logf("skipping invalid root from '%s' to '%s'", link, target)
		return
	}
	f.roots = append(f.roots, Root{Path: p, Link: link, Kind: Permanent})
}

func (f *rootFinder) inStore(target string) bool {
	_, ok := toStorePath(f.dir, f.realDir, target)
	return ok
}

// permanent scans gcroots recursively and profiles, as Nix 2.8's
// findRoots (gc.cc:220-290): gcroots/profiles, a symlink to the profiles
// directory made at store creation, is an indirect link to a directory
// and so is not followed; profiles are scanned on their own.
func (f *rootFinder) permanent() error {
	for _, d := range []string{"gcroots", "profiles"} {
		if err := f.scan(filepath.Join(f.stateDir, d)); err != nil {
			return err
		}
	}
	return nil
}

// scan looks at one entry of the roots tree.
func (f *rootFinder) scan(path string) error {
	err := f.scan1(path)
	// Like Nix, only permanent failures are skipped.
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.ENOTDIR) {
		f.logf("cannot read potential root '%s'", path)
		return nil
	}
	return err
}

func (f *rootFinder) scan1(path string) error {
	st, err := os.Lstat(path)
	if err != nil {
		return err
	}
	typ := st.Mode().Type()
	switch {
	case typ&fs.ModeDir != 0:
		ents, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := f.scan(filepath.Join(path, e.Name())); err != nil {
				return err
			}
		}
	case typ&fs.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		if f.inStore(target) {
			f.found(path, target)
			return nil
		}
		// An indirect root: a link to a link into the store, followed
		// exactly one level.
		st, err := os.Lstat(target)
		if errors.Is(err, fs.ErrNotExist) {
			auto := filepath.Join(f.stateDir, "gcroots", "auto") + "/"
			if strings.HasPrefix(path, auto) && f.deleteStale {
				f.logf("removing stale link from '%s' to '%s'", path, target)
				os.Remove(path)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if st.Mode().Type() != fs.ModeSymlink {
			return nil
		}
		target2, err := os.Readlink(target)
		if err != nil {
			return err
		}
		if !filepath.IsAbs(target2) {
			target2 = filepath.Join(filepath.Dir(target), target2)
		}
		if f.inStore(target2) {
			f.found(target, target2)
		}
	case typ == 0:
		// A regular file named like a store object roots that object.
		if p, err := f.dir.Join(filepath.Base(path)); err == nil && f.valid(p) {
			f.roots = append(f.roots, Root{Path: p, Link: path, Kind: Permanent})
		}
	}
	return nil
}

var mapsLine = regexp.MustCompile(`^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(/\S+)\s*$`)

// runtime finds the store paths running processes use (gc.cc:348
// findRuntimeRoots): the exe, cwd and fd links, the mapped files and the
// store paths in the environment of every process in procDir, and the
// kernel's helper commands.
//
// Nix matches the logical store directory only. For a chroot store
// ferry also matches its physical directory, since that is what a
// process running a program from it has open: a superset, so safe.
func (f *rootFinder) runtime(procDir string) {
	var envRes []*regexp.Regexp
	for _, d := range []string{string(f.dir), f.realDir} {
		envRes = append(envRes, regexp.MustCompile(regexp.QuoteMeta(d)+`/[0-9a-z]+[0-9a-zA-Z\+\-\._\?=]*`))
	}
	add := func(link, target string) {
		if p, ok := toStorePath(f.dir, f.realDir, target); ok && f.valid(p) {
			f.roots = append(f.roots, Root{Path: p, Link: link, Kind: Runtime})
		}
	}
	readLink := func(link string) {
		if t, err := os.Readlink(link); err == nil && filepath.IsAbs(t) {
			add(link, t)
		}
	}
	ents, _ := os.ReadDir(procDir)
	for _, e := range ents {
		if !isDigits(e.Name()) {
			continue
		}
		pd := filepath.Join(procDir, e.Name())
		readLink(filepath.Join(pd, "exe"))
		readLink(filepath.Join(pd, "cwd"))
		if fds, err := os.ReadDir(filepath.Join(pd, "fd")); err == nil {
			for _, fd := range fds {
				readLink(filepath.Join(pd, "fd", fd.Name()))
			}
		}
		if data, err := os.ReadFile(filepath.Join(pd, "maps")); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				if m := mapsLine.FindStringSubmatch(line); m != nil {
					add(filepath.Join(pd, "maps"), m[1])
				}
			}
		}
		if data, err := os.ReadFile(filepath.Join(pd, "environ")); err == nil {
			for _, re := range envRes {
				for _, m := range re.FindAll(data, -1) {
					add(filepath.Join(pd, "environ"), string(m))
				}
			}
		}
	}
	for _, k := range []string{"modprobe", "fbsplash", "poweroff_cmd"} {
		file := filepath.Join(procDir, "sys", "kernel", k)
		if data, err := os.ReadFile(file); err == nil {
			add(file, string(bytes.TrimSpace(data)))
		}
	}
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// sortRoots orders roots by path, then link, dropping exact duplicates.
func sortRoots(rs []Root) []Root {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].Path != rs[j].Path {
			return rs[i].Path < rs[j].Path
		}
		if rs[i].Link != rs[j].Link {
			return rs[i].Link < rs[j].Link
		}
		return rs[i].Kind < rs[j].Kind
	})
	out := rs[:0]
	for i, r := range rs {
		if i > 0 && r == rs[i-1] {
			continue
		}
		out = append(out, r)
	}
	return out
}
