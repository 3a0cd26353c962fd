package lock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Paths below a store's state directory (physical <root>/nix/var/nix).
func TempRootsDir(stateDir string) string { return filepath.Join(stateDir, "temproots") }

// GCLockPath is the GC lock, gc.lock.
func GCLockPath(stateDir string) string { return filepath.Join(stateDir, "gc.lock") }

// GCSocketPath is the socket a running GC listens on (Nix 2.8).
func GCSocketPath(stateDir string) string {
	return filepath.Join(stateDir, "gc-socket", "socket")
}

// TempRoots is this process's temp roots file for one store, shared by
// every store handle on that store in the process (a pid can own only
// one file per store). It is safe for concurrent use.
type TempRoots struct {
	stateDir string
	pid      int

	mu     sync.Mutex // guards the fields below
	refs   int
	f      *os.File // temproots/<pid>, flocked exclusive while open
	gcLock *os.File // gc.lock, cached
	conn   net.Conn // cached connection to a running GC's socket
	// added are the paths written to f; adding one again is a no-op
	// (it is in the file, which any GC reads, or was sent to the GC).
	added map[string]bool
}

var (
	registryMu sync.Mutex
	registry   = map[string]*TempRoots{} // by cleaned state dir; guarded by registryMu
)

// OpenTempRoots returns the process's temp roots for the store whose state
// directory is stateDir. Each call must be paired with Close. The file is
// created lazily, by Ensure or the first Add.
func OpenTempRoots(stateDir string) *TempRoots {
	key := filepath.Clean(stateDir)
	registryMu.Lock()
	defer registryMu.Unlock()
	t := registry[key]
	if t == nil {
		t = &TempRoots{stateDir: key, pid: os.Getpid()}
		registry[key] = t
	}
	t.mu.Lock()
	t.refs++
	t.mu.Unlock()
	return t
}

// Path is the temp roots file of this process.
func (t *TempRoots) Path() string {
	return filepath.Join(TempRootsDir(t.stateDir), strconv.Itoa(t.pid))
}

// Ensure creates and locks the temp roots file if that isn't done yet.
// While it exists and is locked, the process counts as alive for
// ProcessAlive.
func (t *TempRoots) Ensure(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ensureLocked(ctx)
}

// ensureLocked follows gc.cc:82-116: a file left by a dead process with
// our pid is stale, so remove it; then create, lock, and start over if a
// GC deleted the file (and wrote "d") between our open and our lock.
func (t *TempRoots) ensureLocked(ctx context.Context) error {
	if t.f != nil {
		return nil
	}
	p := t.Path()
	for {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("create temp roots file: %w", err)
		}
		f, err := OpenLockFile(p)
		if err != nil {
			return fmt.Errorf("create temp roots file: %w", err)
		}
		if err := Flock(ctx, f, Exclusive); err != nil {
			f.Close()
			return fmt.Errorf("create temp roots file: %w", err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return fmt.Errorf("create temp roots file: %w", err)
		}
		if st.Size() == 0 {
			t.f = f
			return nil
		}
		f.Close()
	}
}

// Add makes p (a store path as printed, /nix/store/...) a temp root of
// this process, with Nix 2.8's handshake (gc.cc:119-169): with gc.lock
// held shared no GC is running and the write to the file is enough;
// otherwise tell the running GC through its socket and wait for its "1".
//
// When Add returns, no GC that has not yet examined p will delete it while
// this process lives. p may still have been deleted before: callers must
// check validity after Add.
func (t *TempRoots) Add(ctx context.Context, p string) error {
	if strings.ContainsAny(p, "\x00\n") {
		return fmt.Errorf("add temp root %q: bad path", p)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.ensureLocked(ctx); err != nil {
		return err
	}
	if t.added[p] {
		return nil
	}
	if t.gcLock == nil {
		f, err := OpenLockFile(GCLockPath(t.stateDir))
		if err != nil {
			return fmt.Errorf("add temp root: %w", err)
		}
		t.gcLock = f
	}
	for {
		shared, err := TryFlock(t.gcLock, Shared)
		if err != nil {
			return fmt.Errorf("add temp root: %w", err)
		}
		if !shared {
			done, err := t.tellGC(ctx, p)
			if err != nil {
				return err
			}
			if !done {
				continue
			}
		}
		_, werr := t.f.Write([]byte(p + "\x00"))
		if shared {
			TryFlock(t.gcLock, Unlock)
		}
		if werr != nil {
			return fmt.Errorf("add temp root: %w", werr)
		}
		if t.added == nil {
			t.added = map[string]bool{}
		}
		t.added[p] = true
		return nil
	}
}

// AddMany is Add for many paths: while no GC runs (gc.lock can be taken
// shared) they are written to the file in one write under one lock;
// while one runs, each is told to it as Add does.
func (t *TempRoots) AddMany(ctx context.Context, paths []string) error {
	var buf []byte
	for _, p := range paths {
		if strings.ContainsAny(p, "\x00\n") {
			return fmt.Errorf("add temp root %q: bad path", p)
		}
	}
	t.mu.Lock()
	if err := t.ensureLocked(ctx); err != nil {
		t.mu.Unlock()
		return err
	}
	var todo []string
	seen := map[string]bool{}
	for _, p := range paths {
		if !t.added[p] && !seen[p] {
			seen[p] = true
			todo = append(todo, p)
			buf = append(append(buf, p...), 0)
		}
	}
	if len(todo) == 0 {
		t.mu.Unlock()
		return nil
	}
	if t.gcLock == nil {
		f, err := OpenLockFile(GCLockPath(t.stateDir))
		if err != nil {
			t.mu.Unlock()
			return fmt.Errorf("add temp root: %w", err)
		}
		t.gcLock = f
	}
	shared, err := TryFlock(t.gcLock, Shared)
	if err != nil {
		t.mu.Unlock()
		return fmt.Errorf("add temp root: %w", err)
	}
	if shared {
		_, werr := t.f.Write(buf)
		TryFlock(t.gcLock, Unlock)
		if werr == nil {
			if t.added == nil {
				t.added = map[string]bool{}
			}
			for _, p := range todo {
				t.added[p] = true
			}
		}
		t.mu.Unlock()
		if werr != nil {
			return fmt.Errorf("add temp root: %w", werr)
		}
		return nil
	}
	t.mu.Unlock()
	// A GC is running: each root goes through its socket.
	for _, p := range todo {
		if err := t.Add(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// tellGC sends p to the running GC's socket. It returns false (and no
// error) when the caller should start over: the GC is starting up, or
// went away.
func (t *TempRoots) tellGC(ctx context.Context, p string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("add temp root: %w", err)
	}
	if t.conn == nil {
		c, err := dialGC(ctx, GCSocketPath(t.stateDir))
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
				// The GC has the lock but no socket yet, or has
				// just finished: retry shortly.
				select {
				case <-ctx.Done():
					return false, fmt.Errorf("add temp root: %w", ctx.Err())
				case <-time.After(5 * time.Millisecond):
				}
				return false, nil
			}
			return false, fmt.Errorf("add temp root: connect to garbage collector: %w", err)
		}
		t.conn = c
	}
	if dl, ok := ctx.Deadline(); ok {
		t.conn.SetDeadline(dl)
	} else {
		t.conn.SetDeadline(time.Time{})
	}
	var ack [1]byte
	_, err := t.conn.Write([]byte(p + "\n"))
	if err == nil {
		_, err = io.ReadFull(t.conn, ack[:])
	}
	if err != nil {
		t.conn.Close()
		t.conn = nil
		if ctx.Err() != nil {
			return false, fmt.Errorf("add temp root: %w", ctx.Err())
		}
		return false, nil // EPIPE, EOF: the GC ended; start over
	}
	if ack[0] != '1' {
		return false, fmt.Errorf("add temp root: garbage collector answered %q", ack[0])
	}
	return true, nil
}

// Close drops one reference; the last one removes the temp roots file and
// releases everything, as Nix does at process exit.
func (t *TempRoots) Close() error {
	registryMu.Lock()
	defer registryMu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refs--
	if t.refs > 0 {
		return nil
	}
	delete(registry, t.stateDir)
	var err error
	if t.f != nil {
		if rerr := os.Remove(t.Path()); rerr != nil && !os.IsNotExist(rerr) {
			err = rerr
		}
		t.f.Close()
		t.f = nil
		t.added = nil
	}
	if t.gcLock != nil {
		t.gcLock.Close()
		t.gcLock = nil
	}
	if t.conn != nil {
		t.conn.Close()
		t.conn = nil
	}
	return err
}

// ReadTempRoots is the GC's reading of every temp roots file (gc.cc:172
// findTempRoots): a file whose lock can be taken belongs to a dead
// process, so it is deleted (after unlinking, "d" is written for a
// process that is just creating it); the others are read whole and split
// on NUL. The GC must hold gc.lock exclusively while calling this, so
// that no live process is between its shared lock and its write.
// The entries are returned as written, unparsed.
func ReadTempRoots(stateDir string) ([]string, error) {
	dir := TempRootsDir(stateDir)
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read temp roots: %w", err)
	}
	var roots []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.OpenFile(p, os.O_RDWR|syscall.O_CLOEXEC, 0)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read temp roots: %w", err)
		}
		got, err := TryFlock(f, Exclusive)
		if err != nil {
			f.Close()
			return nil, err
		}
		if got {
			os.Remove(p)
			f.Write([]byte("d"))
			f.Close()
			continue
		}
		data, err := io.ReadAll(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read temp roots %s: %w", p, err)
		}
		for _, s := range bytes.Split(data, []byte{0}) {
			if len(s) > 0 {
				roots = append(roots, string(s))
			}
		}
	}
	return roots, nil
}

// ProcessAlive reports whether process pid holds a temp roots file in
// stateDir, i.e. is a live ferry or Nix process using this store. ferry
// names its temporary store entries after its pid and creates its temp
// roots file first, so an entry whose pid is not alive is a leftover.
// A dead process's file is removed on the way, as the GC would.
func ProcessAlive(stateDir string, pid int) (bool, error) {
	p := filepath.Join(TempRootsDir(stateDir), strconv.Itoa(pid))
	f, err := os.OpenFile(p, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check process %d: %w", pid, err)
	}
	defer f.Close()
	got, err := TryFlock(f, Exclusive)
	if err != nil {
		return false, err
	}
	if got {
		os.Remove(p)
		f.Write([]byte("d"))
		return false, nil
	}
	return true, nil
}

// dialGC connects to the GC socket at sock. A sockaddr_un holds at most
// 107 bytes of path, so a longer path is reached through an O_PATH
// descriptor of its directory (/proc/self/fd/N/socket), as the GC binds it.
func dialGC(ctx context.Context, sock string) (net.Conn, error) {
	var d net.Dialer
	if len(sock) < 100 {
		return d.DialContext(ctx, "unix", sock)
	}
	dir, err := os.OpenFile(filepath.Dir(sock), os.O_RDONLY|oPath|syscall.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	return d.DialContext(ctx, "unix", "/proc/self/fd/"+strconv.Itoa(int(dir.Fd()))+"/"+filepath.Base(sock))
}

// oPath is Linux's O_PATH, which package syscall does not name.
const oPath = 0x200000
