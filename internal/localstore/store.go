// Package localstore is a Nix-compatible store on disk: the tree of store
// objects, the SQLite database and the locks, laid out exactly as Nix 2.8
// lays them out, so that ferry and real Nix can work on the same store at
// the same time (docs/store.md §5 to §7).
//
// A store is opened with a Layout, Nix's LocalFSStoreConfig: a logical
// store directory, which every path and hash is computed against, and the
// physical store, state and log directories. Open takes the common case, a
// physical root directory: root "/" is the machine's /nix; any other root
// keeps its objects in <root>/nix/store and its state in <root>/nix/var/nix,
// while its logical store directory stays /nix/store, so every path and
// hash is the one a normal Nix store has (Nix's "--store /some/dir", a
// chroot store). OpenURI (open.go) reads a store URI's parameters and
// Nix's environment variables into a Layout as Nix 2.8 does.
//
// README.md in this directory states the locking order and the crash
// safety invariants every write path follows.
package localstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"ferry/internal/db"
	"ferry/internal/lock"
	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/store"
)

// Options configure Open. A nil *Options means the defaults.
type Options struct {
	// NoSync skips the fsync of added files and directories before they
	// are renamed into place and registered (the zero value syncs).
	// Without syncing, a crash of the process still leaves no incomplete
	// valid path, but a crash of the machine may.
	NoSync bool
	// ReservedSize is the size of db/reserved (nix.conf
	// gc-reserved-space), which Open creates and a deleting garbage
	// collection removes first, so that there is room to run on a full
	// disk. Zero means Nix's default, db.DefaultReservedSize (8 MiB); a
	// negative value reserves nothing (an empty file, as Nix makes with
	// gc-reserved-space = 0).
	ReservedSize int64
	// SystemFeatures, when not nil, are the features builds in this store
	// may require, replacing nix.conf's system-features (the store
	// parameter system-features=, as Nix's machines file sets it).
	SystemFeatures []string
	// RequireSigs, when not nil, replaces nix.conf's require-sigs for
	// paths copied into this store (the store parameter require-sigs=).
	RequireSigs *bool
}

// Layout says where a local store keeps its parts: Nix's
// LocalFSStoreConfig (src/libstore/local-fs-store.hh@2.8.0).
type Layout struct {
	// Dir is the logical store directory: what every path and hash names.
	Dir storepath.Dir
	// RealDir is the physical store directory, where the objects are.
	RealDir string
	// StateDir holds db, gcroots, profiles, temproots and gc.lock.
	StateDir string
	// LogDir holds build logs, in drvs/.
	LogDir string
	// Root is the directory of a chroot store (Nix's root=), "" if none:
	// the default of the other directories, and how messages name it.
	Root string
}

// RootLayout is the layout of the chroot store at root, as Open uses it:
// logical /nix/store, objects in root/nix/store, state in root/nix/var/nix
// and logs in root/nix/var/log/nix. Root "/" is the machine's own store.
func RootLayout(root string) Layout {
	return Layout{
		Dir:      storepath.DefaultDir,
		RealDir:  filepath.Join(root, "nix/store"),
		StateDir: filepath.Join(root, "nix/var/nix"),
		LogDir:   filepath.Join(root, "nix/var/log/nix"),
		Root:     root,
	}
}

// name is how messages name the store: its root, else its logical store
// directory and, if different, where it lies.
func (l *Layout) name() string {
	switch {
	case l.Root != "":
		return l.Root
	case l.RealDir != string(l.Dir):
		return fmt.Sprintf("%s (at %s)", l.Dir, l.RealDir)
	}
	return string(l.Dir)
}

// Store is an open local store. It is safe for concurrent use by many
// goroutines; several Stores (in one or many processes, ferry or Nix) may
// work on the same root at once.
type Store struct {
	layout   Layout
	realDir  string // layout.RealDir
	stateDir string // layout.StateDir
	opts     Options

	db    *db.DB
	big   *lock.BigLock
	temps *lock.TempRoots

	cleanOnce sync.Once
	tmpSeq    atomic.Uint64
	memo      derivation.Memo

	held heldLocks // paths whose path locks another process holds for us

	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)
var _ store.TempRooter = (*Store)(nil)

// Open opens the local store rooted at the physical directory root,
// creating the directories, database and schema file like Nix does if they
// don't exist yet. It takes the big lock shared for the life of the Store
// (exclusive while it initialises a new database).
func Open(root string, opts *Options) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", root, err)
	}
	return OpenLayout(RootLayout(abs), opts)
}

// OpenLayout opens the local store laid out as l, whose directories must
// be absolute, as Open does.
func OpenLayout(l Layout, opts *Options) (*Store, error) {
	if opts == nil {
		opts = &Options{}
	}
	abs := l.name()
	for _, d := range []string{string(l.Dir), l.RealDir, l.StateDir, l.LogDir} {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("open store %s: directory %q is not absolute", abs, d)
		}
	}
	if _, err := l.Dir.Join("00000000000000000000000000000000-x"); err != nil || path.Clean(string(l.Dir)) != string(l.Dir) || l.Dir == "/" {
		return nil, fmt.Errorf("open store %s: %q is not a clean absolute store directory", abs, l.Dir)
	}
	s := &Store{
		layout:   l,
		realDir:  l.RealDir,
		stateDir: l.StateDir,
		opts:     *opts,
	}
	if err := s.makeDirs(); err != nil {
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	ctx := context.Background()
	dbDir := filepath.Join(s.stateDir, "db")
	reserved := opts.ReservedSize
	switch {
	case reserved == 0:
		reserved = db.DefaultReservedSize
	case reserved < 0:
		reserved = 0
	}
	// Errors are ignored as in Nix: a full disk must not stop the store
	// (and so the garbage collector) from opening.
	_ = db.Reserve(dbDir, reserved)
	if err := s.openDB(ctx, dbDir); err != nil {
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	s.temps = lock.OpenTempRoots(s.stateDir)
	return s, nil
}

// openDB takes the big lock and opens the database, creating it for a new
// store or upgrading an old schema first, as LocalStore::LocalStore does
// (local-store.cc@2.8.0): a new store or an upgrade holds the big lock
// exclusively (Nix initialises a new store under the shared lock; ferry is
// stricter), re-reads the schema file once it has the lock, because
// another process may have done the work meanwhile, and downgrades the
// lock to shared when done. Schemas older than 6 or newer than 10 are
// refused with Nix's messages.
func (s *Store) openDB(ctx context.Context, dbDir string) error {
	schema, err := db.ReadSchemaFile(dbDir)
	if err != nil {
		return err
	}
	if err := db.CheckSchema(schema); err != nil {
		return err
	}
	mode := lock.Shared
	bigLock := filepath.Join(dbDir, "big-lock")
	if schema != db.SchemaVersion {
		mode = lock.Exclusive
		// Another process may be creating the store right now and go on
		// holding the lock shared, as every open store does: then wait
		// for it shared and look again rather than for an exclusive lock
		// that would never come.
		if s.big, err = lock.TryBigLock(bigLock, lock.Exclusive); err != nil {
			return err
		}
		if s.big == nil {
			if s.big, err = lock.AcquireBigLock(ctx, bigLock, lock.Shared); err != nil {
				return err
			}
			if again, err := db.ReadSchemaFile(dbDir); err == nil && again == db.SchemaVersion {
				mode = lock.Shared
			} else {
				s.big.Release()
				s.big = nil
			}
		}
	}
	if s.big == nil {
		if s.big, err = lock.AcquireBigLock(ctx, bigLock, mode); err != nil {
			return err
		}
	}
	fail := func(err error) error {
		if s.db != nil {
			s.db.Close()
		}
		s.big.Release()
		return err
	}
	if schema, err = db.ReadSchemaFile(dbDir); err != nil {
		return fail(err)
	}
	if err := db.CheckSchema(schema); err != nil {
		return fail(err)
	}
	if mode == lock.Shared && schema != db.SchemaVersion {
		// The store was replaced under us; start over with the right lock.
		s.big.Release()
		return s.openDB(ctx, dbDir)
	}
	if schema != 0 && schema < 7 && os.Geteuid() == 0 {
		// Schema 6 to 7 (Nix 1.3): clear the immutable bits Nix < 1.3
		// set on store files (LocalStore::upgradeStore7).
		makeMutable(s.realDir)
	}
	upgradeFrom := 0
	if schema != 0 && schema < db.SchemaVersion {
		upgradeFrom = schema
	}
	s.db, err = db.Open(filepath.Join(dbDir, "db.sqlite"), &db.Options{Create: schema == 0, UpgradeFrom: upgradeFrom, StoreDir: s.layout.Dir})
	if err != nil {
		return fail(err)
	}
	if schema != db.SchemaVersion {
		if err := db.WriteSchemaFile(dbDir); err != nil {
			return fail(err)
		}
	}
	if mode == lock.Exclusive {
		if err := s.big.Downgrade(ctx); err != nil {
			return fail(err)
		}
	}
	return nil
}

// fsImmutableFL is FS_IMMUTABLE_FL of linux/fs.h: file can't be modified.
const fsImmutableFL = 0x10

// makeMutable clears FS_IMMUTABLE_FL on every regular file and directory
// under path, never following symlinks; errors getting or setting the
// flag are ignored (filesystems without it), as in Nix's makeMutable.
func makeMutable(path string) {
	st, err := os.Lstat(path)
	if err != nil || !(st.Mode().IsDir() || st.Mode().IsRegular()) {
		return
	}
	if st.IsDir() {
		if ents, err := os.ReadDir(path); err == nil {
			for _, e := range ents {
				makeMutable(filepath.Join(path, e.Name()))
			}
		}
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil || flags&fsImmutableFL == 0 {
		return
	}
	_ = unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags&^fsImmutableFL))
}

// makeDirs creates the layout a fresh Nix 2.8 store has (verified with
// nix-store --store DIR --add): the store and state directories, db,
// temproots, gcroots/per-user/<user>, profiles/per-user/<user>, the
// store's .links (which Nix's LocalStore creates for optimise-store) and
// the gcroots/profiles symlink, all 0755.
func (s *Store) makeDirs() error {
	u := "root"
	if cu, err := user.Current(); err == nil {
		u = cu.Username
	}
	for _, d := range []string{
		s.realDir,
		filepath.Join(s.realDir, ".links"),
		filepath.Join(s.stateDir, "db"),
		filepath.Join(s.stateDir, "temproots"),
		filepath.Join(s.stateDir, "gcroots/per-user", u),
		filepath.Join(s.stateDir, "profiles/per-user", u),
	} {
		if _, err := os.Stat(d); err == nil {
			continue
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	link := filepath.Join(s.stateDir, "gcroots/profiles")
	if _, err := os.Lstat(link); os.IsNotExist(err) {
		if err := os.Symlink(filepath.Join(s.stateDir, "profiles"), link); err != nil && !os.IsExist(err) {
			return err
		}
	}
	return nil
}

// Close releases the store: the temp roots file (when no other Store of
// this process uses the same root), the database and the big lock.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		errs := []error{s.temps.Close(), s.db.Close(), s.big.Release()}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Dir is the logical store directory (/nix/store unless the layout says
// otherwise).
func (s *Store) Dir() storepath.Dir { return s.layout.Dir }

// Layout is where the store keeps its parts.
func (s *Store) Layout() Layout { return s.layout }

// Root is the directory of a chroot store (Layout.Root), "" for a store
// with no root.
func (s *Store) Root() string { return s.layout.Root }

// RealDir is the physical store directory (<root>/nix/store for a chroot
// store).
func (s *Store) RealDir() string { return s.realDir }

// StateDir is the physical state directory (<root>/nix/var/nix for a
// chroot store): gcroots, profiles, temproots, gc.lock, db.
func (s *Store) StateDir() string { return s.stateDir }

// SystemFeatures are the features builds in this store may require when
// the store sets them (Options.SystemFeatures), else nil: nix.conf's apply.
func (s *Store) SystemFeatures() []string { return s.opts.SystemFeatures }

// RequireSigs is the store's require-sigs when its URI sets one, else nil.
func (s *Store) RequireSigs() *bool { return s.opts.RequireSigs }

// RealPath is where the object of p lives on disk.
func (s *Store) RealPath(p storepath.Path) string {
	return filepath.Join(s.realDir, p.Base())
}

// DB is the store's database, for the garbage collector and other
// packages that need statements this package doesn't wrap.
func (s *Store) DB() *db.DB { return s.db }

// TempRoots is this process's temp roots file of the store.
func (s *Store) TempRoots() *lock.TempRoots { return s.temps }

// AddTempRoot protects p from garbage collection until the Store (and
// every other Store of this process on the same root) is closed. It does
// not make p valid: check validity after it.
func (s *Store) AddTempRoot(ctx context.Context, p storepath.Path) error {
	return s.temps.Add(ctx, string(p))
}
