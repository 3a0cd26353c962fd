package gc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"ferry/internal/db"
	"ferry/internal/localstore"
	"ferry/internal/lock"
	"ferry/internal/storefs"
	"ferry/nix/storepath"
	"ferry/store"
)

// Options configure a collection. A nil *Options means the defaults.
type Options struct {
	// DryRun makes Execute delete nothing: it reports what it would
	// delete and how many bytes that would free. Plan leaves stale
	// gcroots/auto links alone too.
	DryRun bool
	// MaxFreed stops deletion once more than this many bytes have been
	// freed (Nix's --max-freed). Zero means no limit.
	MaxFreed uint64
	// KeepOutputs keeps the outputs of live derivations (Nix's
	// keep-outputs; zero: false, as in Nix).
	KeepOutputs bool
	// DiscardDerivations drops the derivers of live outputs (zero: they
	// are kept, as Nix's keep-derivations = true does).
	DiscardDerivations bool
	// Paths, if not empty, limits deletion to these paths, as
	// nix-store --delete: Plan fails if one of them is alive, or if a
	// path outside the set still refers to one of them.
	Paths []storepath.Path
	// NoRuntimeRoots skips the scan of /proc (zero: runtime roots count).
	NoRuntimeRoots bool
	// Log receives Nix's progress lines ("deleting '/nix/store/…'");
	// nil discards them.
	Log io.Writer

	// beforeDelete, for tests, runs after an entry has been claimed for
	// deletion and before it is invalidated.
	beforeDelete func(Entry)
	// procDir replaces /proc, for tests.
	procDir string
}

// Entry is one name in the physical store directory that a collection
// plans to delete.
type Entry struct {
	// Name is the base name in the store directory.
	Name string
	// Path is the store path Name parses as, or "" for other names
	// (leftover temporary entries).
	Path storepath.Path
	// Valid says whether Path was registered when the plan was made.
	Valid bool
	// dir is the logical store directory, for String when Path is "".
	dir storepath.Dir
}

// String is the entry as Nix prints it: the logical path.
func (e Entry) String() string {
	if e.Path != "" {
		return e.Path.String()
	}
	return string(e.dir) + "/" + e.Name
}

// Collection is a planned garbage collection. It holds the GC lock and
// serves the gc-socket from Plan until Execute or Close returns; it is
// not safe for concurrent use (the socket server inside it is).
type Collection struct {
	// Roots are the permanent and runtime roots found, sorted.
	Roots []Root
	// TempRoots are the temp roots read from the temproots files (the
	// entries as written).
	TempRoots []string
	// Live are the valid paths the plan keeps, sorted.
	Live []storepath.Path
	// Dead are the entries to delete, in deletion order: valid paths
	// with referrers before their references, then invalid entries.
	Dead []Entry

	store   *localstore.Store
	opts    Options
	roots   *roots
	srv     *server
	gcLock  *os.File
	closed  bool
	logf    func(string, ...any)
	realDir string
}

// Result is what Execute did.
type Result struct {
	// Deleted are the entries deleted (or that would be, with DryRun), in
	// order.
	Deleted []Entry
	// Kept are planned entries left alone because a temp root arrived
	// through the socket, or a valid path came to refer to them, during
	// the collection.
	Kept []Entry
	// BytesFreed counts the sizes of the non-directories deleted that had
	// at most two links (Nix's rule: two means a .links twin).
	BytesFreed uint64
	// LimitReached says deletion stopped at MaxFreed.
	LimitReached bool
}

// Summary is Nix's last line: "N store paths deleted, X MiB freed".
func (r *Result) Summary(dryRun bool) string {
	verb := "deleted"
	if dryRun {
		verb = "would be deleted"
	}
	return fmt.Sprintf("%d store paths %s, %.2f MiB freed", len(r.Deleted), verb, float64(r.BytesFreed)/(1024*1024))
}

// ErrAlive is returned (wrapped) by Plan when Options.Paths names a path
// that is still alive.
var ErrAlive = errors.New("is still alive")

// Plan finds the roots and the garbage of s. Unless opts.DryRun, it
// first deletes db/reserved, as a deleting collection of Nix does. It
// takes gc.lock
// exclusively (waiting for running collections and for processes in the
// middle of writing a temp root), starts the gc-socket server, then reads
// the temp roots, the database and the permanent and runtime roots. The
// returned Collection must be given to Execute or closed.
func Plan(ctx context.Context, s *localstore.Store, opts *Options) (c *Collection, err error) {
	if opts == nil {
		opts = &Options{}
	}
	c = &Collection{store: s, opts: *opts, roots: newRoots(), realDir: s.RealDir()}
	planned := c
	c.logf = func(format string, args ...any) {
		if c.opts.Log != nil {
			fmt.Fprintf(c.opts.Log, format+"\n", args...)
		}
	}
	defer func() {
		if err != nil {
			planned.Close()
			c = nil
		}
	}()
	stateDir := s.StateDir()
	if !c.opts.DryRun {
		// A collection that deletes frees db/reserved first, before it
		// even waits for the lock, so that SQLite has room on a full
		// disk (gc.cc collectGarbage). Opening a store recreates it.
		if err := db.Unreserve(filepath.Join(stateDir, "db")); err != nil {
			return nil, fmt.Errorf("plan garbage collection: %w", err)
		}
	}
	c.gcLock, err = lock.OpenLockFile(lock.GCLockPath(stateDir))
	if err != nil {
		return nil, fmt.Errorf("plan garbage collection: %w", err)
	}
	if ok, _ := lock.TryFlock(c.gcLock, lock.Exclusive); !ok {
		c.logf("waiting for the big garbage collector lock...")
		if err := lock.Flock(ctx, c.gcLock, lock.Exclusive); err != nil {
			return nil, fmt.Errorf("plan garbage collection: %w", err)
		}
	}
	c.srv, err = startServer(stateDir, s.Dir(), c.realDir, c.roots)
	if err != nil {
		return nil, err
	}

	// Temp roots: every process that wrote one before we took the lock
	// is in its file now; every later one goes through the socket.
	c.logf("finding garbage collector roots...")
	c.TempRoots, err = lock.ReadTempRoots(stateDir)
	if err != nil {
		return nil, err
	}
	for _, t := range c.TempRoots {
		if h, ok := hashPartOf(s.Dir(), c.realDir, t); ok {
			c.roots.add(h)
		}
	}

	g, err := loadGraph(ctx, s)
	if err != nil {
		return nil, err
	}
	f := &rootFinder{
		dir: s.Dir(), realDir: c.realDir, stateDir: stateDir,
		valid: g.valid, deleteStale: !c.opts.DryRun, logf: c.logf,
	}
	if err := f.permanent(); err != nil {
		return nil, fmt.Errorf("find garbage collector roots: %w", err)
	}
	if !c.opts.NoRuntimeRoots {
		proc := c.opts.procDir
		if proc == "" {
			proc = "/proc"
		}
		f.runtime(proc)
	}
	c.Roots = sortRoots(f.roots)

	var seeds []storepath.Path
	for _, r := range c.Roots {
		seeds = append(seeds, r.Path)
	}
	for p := range g.nodes {
		if c.roots.has(p.HashPart()) {
			seeds = append(seeds, p)
		}
	}
	live := g.live(seeds, !c.opts.DiscardDerivations, c.opts.KeepOutputs)
	for p := range live {
		c.Live = append(c.Live, p)
	}
	storepath.Sort(c.Live)

	if len(c.opts.Paths) > 0 {
		c.Dead, err = c.planSpecific(g, live)
	} else {
		c.Dead, err = c.planAll(g, live)
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// planAll makes every entry of the store directory that is not live
// dead, except those whose hash part is a temp root (which protects
// P.lock, P.chroot and the like of a temp-rooted P) and temporary entries
// of live processes.
func (c *Collection) planAll(g *graph, live map[storepath.Path]bool) ([]Entry, error) {
	dir := c.store.Dir()
	ents, err := os.ReadDir(c.realDir)
	if err != nil {
		return nil, fmt.Errorf("plan garbage collection: %w", err)
	}
	var dead []storepath.Path
	seen := map[storepath.Path]bool{}
	var others []Entry
	for _, e := range ents {
		name := e.Name()
		if name == ".links" {
			continue
		}
		p, err := dir.Join(name)
		if err != nil {
			if !c.inUse(name) {
				others = append(others, Entry{Name: name, dir: dir})
			}
			continue
		}
		if live[p] || c.roots.has(p.HashPart()) {
			continue
		}
		if g.valid(p) {
			dead = append(dead, p)
			seen[p] = true
		} else {
			others = append(others, Entry{Name: name, Path: p})
		}
	}
	// Valid paths whose files are gone are garbage too: invalidate them.
	for p := range g.nodes {
		if !live[p] && !seen[p] && !c.roots.has(p.HashPart()) {
			dead = append(dead, p)
		}
	}
	order, err := deletionOrder(g, dead)
	if err != nil {
		return nil, err
	}
	sort.Slice(others, func(i, j int) bool { return others[i].Name < others[j].Name })
	return append(order, others...), nil
}

// planSpecific is nix-store --delete (gcDeleteSpecific): only the given
// paths, each of which must be dead, and whose referrers must all be in
// the set.
func (c *Collection) planSpecific(g *graph, live map[storepath.Path]bool) ([]Entry, error) {
	want := map[storepath.Path]bool{}
	for _, p := range c.opts.Paths {
		want[p] = true
	}
	referrers := g.referrers()
	var dead []storepath.Path
	var others []Entry
	for p := range want {
		alive := live[p] || c.roots.has(p.HashPart())
		for _, r := range referrers[p] {
			if !want[r] {
				alive = true
			}
		}
		if alive {
			return nil, fmt.Errorf("cannot delete path '%s' since it %w", p, ErrAlive)
		}
		if g.valid(p) {
			dead = append(dead, p)
		} else if _, err := os.Lstat(filepath.Join(c.realDir, p.Base())); err == nil {
			others = append(others, Entry{Name: p.Base(), Path: p})
		}
	}
	order, err := deletionOrder(g, dead)
	if err != nil {
		return nil, err
	}
	sort.Slice(others, func(i, j int) bool { return others[i].Name < others[j].Name })
	return append(order, others...), nil
}

// deletionOrder sorts valid paths so that referrers come before their
// references: a path is deleted only after everything in the set that
// refers to it.
func deletionOrder(g *graph, paths []storepath.Path) ([]Entry, error) {
	storepath.Sort(paths)
	sorted, err := store.TopoSort(paths, func(p storepath.Path) []storepath.Path { return g.nodes[p].refs })
	if err != nil {
		return nil, fmt.Errorf("plan garbage collection: %w", err)
	}
	out := make([]Entry, len(sorted))
	for i, p := range sorted {
		out[len(sorted)-1-i] = Entry{Name: p.Base(), Path: p, Valid: true}
	}
	return out, nil
}

// inUse reports whether a name that is not a store path is a temporary
// entry of a live process. ferry's own (".ferry-tmp-<pid>-<n>") belong to
// a process alive as long as its temp roots file is locked; Nix's
// ("add-<pid>-<n>" spool directories, ".tmp-link-<pid>-<n>" of optimise)
// are checked against the process table, since Nix may make them before
// its temp roots file. Nix 2.8 itself deletes them without looking.
func (c *Collection) inUse(name string) bool {
	if pid, ok := localstore.ParseTempName(name); ok {
		alive, err := lock.ProcessAlive(c.store.StateDir(), pid)
		return alive || err != nil
	}
	for _, prefix := range []string{"add-", ".tmp-link-"} {
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			return false
		}
		err = syscall.Kill(pid, 0)
		return err == nil || errors.Is(err, syscall.EPERM)
	}
	return false
}

// Close ends the collection: it stops the socket server and releases the
// GC lock. It is safe to call more than once.
func (c *Collection) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	if c.srv != nil {
		c.srv.close()
	}
	if c.gcLock != nil {
		return c.gcLock.Close()
	}
	return nil
}

// Execute deletes c's dead entries in order and closes c. For each entry
// it claims the hash part under the temp-root mutex (an entry that became
// a temp root is kept), invalidates the path in its own transaction
// (kept if a valid path other than itself refers to it now), and only then
// deletes the files. A socket client asking for that path meanwhile gets
// its answer once the files are gone. Finally it removes the files in
// .links that nothing else links to.
func Execute(ctx context.Context, c *Collection) (*Result, error) {
	defer c.Close()
	if c.closed {
		return nil, errors.New("execute garbage collection: collection is closed")
	}
	res := &Result{}
	if c.opts.DryRun {
		c.logf("determining live/dead paths...")
	} else {
		c.logf("deleting garbage...")
	}
	for _, e := range c.Dead {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("collect garbage: %w", err)
		}
		deleted, n, err := c.deleteEntry(ctx, e)
		if err != nil {
			return res, err
		}
		if !deleted {
			res.Kept = append(res.Kept, e)
			continue
		}
		res.Deleted = append(res.Deleted, e)
		res.BytesFreed += n
		if c.opts.MaxFreed > 0 && res.BytesFreed > c.opts.MaxFreed {
			c.logf("deleted more than %d bytes; stopping", c.opts.MaxFreed)
			res.LimitReached = true
			break
		}
	}
	if !c.opts.DryRun {
		c.logf("deleting unused links...")
		if err := removeUnusedLinks(filepath.Join(c.realDir, ".links")); err != nil {
			return res, err
		}
	}
	return res, c.Close()
}

// deleteEntry deletes one planned entry, or leaves it if it became
// protected since the plan.
func (c *Collection) deleteEntry(ctx context.Context, e Entry) (deleted bool, freed uint64, err error) {
	real := filepath.Join(c.realDir, e.Name)
	if c.opts.DryRun {
		if e.Path != "" && c.roots.has(e.Path.HashPart()) {
			return false, 0, nil
		}
		n, err := storefs.DiskUsage(real)
		return err == nil, n, nil
	}
	if e.Path != "" {
		if !c.roots.begin(e.Path.HashPart()) {
			c.logf("cannot delete '%s' because it's a temporary root", e)
			return false, 0, nil
		}
		defer c.roots.end()
	}
	if c.opts.beforeDelete != nil {
		c.opts.beforeDelete(e)
	}
	if e.Path != "" {
		// Invalidate first: a crash after this leaves an invalid
		// leftover, never a valid path with missing files.
		if err := c.store.InvalidatePath(ctx, e.Path); err != nil {
			if errors.Is(err, localstore.ErrPathInUse) {
				c.logf("cannot delete '%s' because it is in use", e)
				return false, 0, nil
			}
			return false, 0, fmt.Errorf("collect garbage: %w", err)
		}
	}
	c.logf("deleting '%s'", e)
	n, err := storefs.Delete(real)
	if err != nil {
		return false, n, fmt.Errorf("collect garbage: %w", err)
	}
	return true, n, nil
}

// Collect plans and executes a collection.
func Collect(ctx context.Context, s *localstore.Store, opts *Options) (*Collection, *Result, error) {
	c, err := Plan(ctx, s, opts)
	if err != nil {
		return nil, nil, err
	}
	res, err := Execute(ctx, c)
	return c, res, err
}
