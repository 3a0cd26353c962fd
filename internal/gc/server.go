package gc

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"ferry/internal/lock"
	"ferry/nix/storepath"
)

// maxRootLine bounds one line a gc-socket client sends: a store path is
// at most 11 + 32 + 1 + 211 bytes under /nix/store, and a physical one a
// little longer.
const maxRootLine = 4096

// roots is the set of temp roots of a running collection and the path
// being deleted, shared by the socket handlers and the deleter.
//
// Invariant (README.md): the deleter checks temp and sets deleting in one
// critical section, and a handler adds to temp and waits for deleting to
// differ in one critical section before it acknowledges. So either the
// deleter sees the new root and keeps the path, or the client's ack comes
// only after the path's deletion (DB and files) is over.
type roots struct {
	mu       sync.Mutex // guards temp and deleting
	cond     *sync.Cond // signalled (with mu) when deleting changes
	temp     map[string]bool
	deleting string // hash part of the path being deleted, "" if none
}

func newRoots() *roots {
	r := &roots{temp: map[string]bool{}}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// add records hash as a temp root and returns once no deletion of that
// hash part is in progress.
func (r *roots) add(hash string) {
	r.mu.Lock()
	r.temp[hash] = true
	for r.deleting == hash {
		r.cond.Wait()
	}
	r.mu.Unlock()
}

// begin claims hash for deletion; it fails if hash is a temp root.
func (r *roots) begin(hash string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.temp[hash] {
		return false
	}
	r.deleting = hash
	return true
}

// end ends the deletion begun by begin and wakes waiting handlers.
func (r *roots) end() {
	r.mu.Lock()
	r.deleting = ""
	r.cond.Broadcast()
	r.mu.Unlock()
}

func (r *roots) has(hash string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.temp[hash]
}

// server is the collector's end of Nix 2.8's gc-socket (gc.cc:452-560):
// each line "P\n" adds P's hash part to the temp roots and is answered
// "1". It is safe for concurrent use.
type server struct {
	roots   *roots
	dir     storepath.Dir
	realDir string
	ln      *net.UnixListener
	wg      sync.WaitGroup

	mu     sync.Mutex // guards conns and closed
	conns  map[net.Conn]bool
	closed bool
}

// listen binds the socket of stateDir, replacing a stale socket file, with
// mode 0666 so that every user's processes can reach it (as Nix does).
func listen(stateDir string) (*net.UnixListener, error) {
	sock := lock.GCSocketPath(stateDir)
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		return nil, fmt.Errorf("start gc socket: %w", err)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("start gc socket: %w", err)
	}
	addr := sock
	if len(addr) > 100 {
		// sun_path holds 108 bytes; bind through the directory's
		// descriptor instead, as Nix does with a chdir.
		d, err := os.Open(filepath.Dir(sock))
		if err != nil {
			return nil, fmt.Errorf("start gc socket: %w", err)
		}
		defer d.Close()
		addr = "/proc/self/fd/" + strconv.Itoa(int(d.Fd())) + "/" + filepath.Base(sock)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("start gc socket: %w", err)
	}
	// Nix leaves the socket file behind: a 2.8 client treats ENOENT from
	// connect as an error but ECONNREFUSED as "the GC has gone, retry".
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(sock, 0o666); err != nil {
		ln.Close()
		return nil, fmt.Errorf("start gc socket: %w", err)
	}
	return ln, nil
}

func startServer(stateDir string, dir storepath.Dir, realDir string, r *roots) (*server, error) {
	ln, err := listen(stateDir)
	if err != nil {
		return nil, err
	}
	s := &server{roots: r, dir: dir, realDir: realDir, ln: ln, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(c)
	}
}

// serve answers one client: for each line, record the temp root, wait
// while that path is being deleted, reply "1". Garbage is answered "1"
// too, as Nix does; a line longer than maxRootLine ends the connection.
func (s *server) serve(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	br := bufio.NewReaderSize(c, maxRootLine)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		if h, ok := hashPartOf(s.dir, s.realDir, strings.TrimSuffix(string(line), "\n")); ok {
			s.roots.add(h)
		}
		if _, err := c.Write([]byte("1")); err != nil {
			return
		}
	}
}

// close stops accepting and ends every connection once its handler has
// answered what it already read (a request read but not answered would
// make the client start over, which is safe but slower), then waits for
// the handlers. Clients see EOF and start over with gc.lock.
func (s *server) close() {
	s.mu.Lock()
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.SetReadDeadline(time.Unix(1, 0))
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// hashPartOf parses a store path given in the logical store directory or,
// for a chroot store, in the physical one, and returns its hash part.
// A path inside a store object counts as the object.
func hashPartOf(dir storepath.Dir, realDir, s string) (string, bool) {
	p, ok := toStorePath(dir, realDir, s)
	if !ok {
		return "", false
	}
	return p.HashPart(), true
}

// toStorePath maps an absolute path in the logical or physical store
// directory to the store path it lies in (Nix's toStorePath).
func toStorePath(dir storepath.Dir, realDir, s string) (storepath.Path, bool) {
	for _, d := range []string{string(dir), realDir} {
		if d == "" || !strings.HasPrefix(s, d+"/") {
			continue
		}
		base, _, _ := strings.Cut(s[len(d)+1:], "/")
		p, err := dir.Join(base)
		if err != nil {
			return "", false
		}
		return p, true
	}
	return "", false
}
