package serve

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"

	"ferry/nix/derivation"
	"ferry/nix/export"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

// Client is the client end of one serve session (the role of Nix's
// LegacySSHStore, 2.8.0:src/libstore/legacy-ssh-store.cc): it speaks to a
// server on r and w, which are normally a remote `ferry serve` or
// `nix-store --serve` over ssh.
//
// Unlike Nix's client, the bulk operations (AddToStoreNars, ImportPaths,
// DumpStorePaths) pipeline: every request goes out without waiting for the
// reply to the one before, while a reader collects the replies, so a copy
// of any number of paths costs one round trip. The protocol itself has no
// request ids, but the server answers in order, which is all pipelining
// needs.
//
// A Client is safe for concurrent use: calls are serialised, one exchange
// at a time.
type Client struct {
	mu      sync.Mutex // serialises exchanges; guards r, w
	r       *wire.Reader
	w       *wire.Writer
	dir     storepath.Dir
	version uint64 // the server's version word
	closer  io.Closer
	trace   func(format string, args ...any)
	waits   atomic.Int64
	broken  error // set when an exchange failed midway; guarded by mu
	// helloDone is closed once the server's half of the handshake has
	// been read, or has failed with helloErr. With ClientOptions.Lazy a
	// goroutine reads it, and nothing else reads r until it is closed.
	helloDone chan struct{}
	helloErr  error
}

// ClientOptions configures a Client. A nil *ClientOptions means defaults.
type ClientOptions struct {
	// Closer, if not nil, is closed when a call's context is cancelled, to
	// unblock the call (normally the connection: the ssh process's pipes).
	Closer io.Closer
	// Version is the version word the client advertises; zero means
	// Version (2.7). Tests use it to act as an older client.
	Version uint64
	// Trace, if not nil, is told of each protocol step (ferry -v).
	Trace func(format string, args ...any)
	// Lazy sends the client's half of the handshake and returns without
	// waiting for the server's: its reply is read with the first call's,
	// which goes out in the same round trip (a server reads the client's
	// version and then its first command from one stream). A peer that is
	// not a serve peer is then reported by the first call.
	Lazy bool
}

// NewClient performs the handshake and returns the client. dir is the store
// directory (storepath.DefaultDir normally). Cancelling ctx during the
// handshake closes opts.Closer.
func NewClient(ctx context.Context, r io.Reader, w io.Writer, dir storepath.Dir, opts *ClientOptions) (*Client, error) {
	if opts == nil {
		opts = &ClientOptions{}
	}
	c := &Client{r: wire.NewReader(bufio.NewReaderSize(r, 1<<16)), w: wire.NewWriterSize(w, 1<<16), dir: dir, closer: opts.Closer, trace: opts.Trace,
		helloDone: make(chan struct{})}
	version := opts.Version
	if version == 0 {
		version = Version
	}
	defer c.watch(ctx)()
	WriteClientHello(c.w, version)
	if err := c.w.Flush(); err != nil {
		return nil, c.ctxErr(ctx, fmt.Errorf("write client hello: %w", err))
	}
	if opts.Lazy {
		go c.readHello()
		return c, nil
	}
	c.waits.Add(1)
	if err := c.readHello(); err != nil {
		return nil, c.ctxErr(ctx, err)
	}
	return c, nil
}

// readHello reads the server's half of the handshake, with
// ClientHandshake's checks, and closes helloDone.
func (c *Client) readHello() error {
	v, err := ReadServerHello(c.r)
	if err == nil && Major(v) != 0x200 {
		err = fmt.Errorf("unsupported 'nix-store --serve' protocol version %#x", v)
	}
	c.version, c.helloErr = v, err
	if err == nil {
		c.tracef("handshake: server speaks protocol %d.%d", Major(v)>>8, Minor(v))
	}
	close(c.helloDone)
	return err
}

// helloRead reports whether the server's half of the handshake is in.
func (c *Client) helloRead() bool {
	select {
	case <-c.helloDone:
		return true
	default:
		return false
	}
}

// awaitHello waits for the server's half of the handshake and returns its
// error.
func (c *Client) awaitHello() error {
	<-c.helloDone
	return c.helloErr
}

// Handshake waits for the server's half of the handshake, if it has not
// been read yet, and returns its error.
func (c *Client) Handshake(ctx context.Context) error {
	if c.helloRead() {
		return c.helloErr
	}
	defer c.watch(ctx)()
	c.waits.Add(1)
	return c.ctxErr(ctx, c.awaitHello())
}

// HelloDone is closed once the server's half of the handshake has been
// read (HelloErr then says whether it was right).
func (c *Client) HelloDone() <-chan struct{} { return c.helloDone }

// HelloErr is the handshake's error, once HelloDone is closed.
func (c *Client) HelloErr() error {
	select {
	case <-c.helloDone:
		return c.helloErr
	default:
		return nil
	}
}

// ServerVersion is the version word the server sent (read first, if the
// handshake is lazy and still unread).
func (c *Client) ServerVersion() uint64 {
	c.Handshake(context.Background())
	return c.version
}

// Dir is the store directory the client parses paths in.
func (c *Client) Dir() storepath.Dir { return c.dir }

// Waits counts the times the client has waited for a reply it needed
// before it could go on: the round trips it has paid, handshake included.
// A pipelined operation counts once, however many requests it sent.
func (c *Client) Waits() int { return int(c.waits.Load()) }

// HasAddToStoreNar reports whether the server has AddToStoreNar (proto >=
// 2.5); older servers take copies as ImportPaths.
func (c *Client) HasAddToStoreNar() bool { return Minor(c.ServerVersion()) >= 5 }

// minor is the protocol minor the client uses: Nix 2.8's client gates on
// the server's minor (docs/protocol.md §2.3), capped at ours.
func (c *Client) minor() uint64 {
	if Minor(c.version) > Minor(Version) {
		return Minor(Version)
	}
	return Minor(c.version)
}

func (c *Client) effectiveVersion() uint64 { return 0x200 | c.minor() }

func (c *Client) tracef(format string, args ...any) {
	if c.trace != nil {
		c.trace(format, args...)
	}
}

// watch closes the connection if ctx is cancelled before the returned
// function is called.
func (c *Client) watch(ctx context.Context) (stop func()) {
	if c.closer == nil {
		return func() {}
	}
	s := context.AfterFunc(ctx, func() { c.closer.Close() })
	return func() { s() }
}

// ctxErr prefers the context's error to the I/O error its cancellation
// caused.
func (c *Client) ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// exchange runs one request and its reply: send writes the request,
// which is flushed; recv reads the reply. Any error leaves the session out
// of step, so every later call fails with it.
//
// A request whose encoding depends on the server's version (needVersion)
// waits for a lazy handshake first; any other goes out at once, and the
// handshake's reply is read before its own.
func (c *Client) exchange(ctx context.Context, what string, needVersion bool, send func() error, recv func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return fmt.Errorf("%s: session ended earlier: %w", what, c.broken)
	}
	defer c.watch(ctx)()
	var err error
	if needVersion && !c.helloRead() {
		c.waits.Add(1)
		err = c.awaitHello()
	}
	if err == nil {
		c.tracef("%s", what)
		err = send()
	}
	if err == nil {
		err = c.w.Flush()
	}
	if err == nil {
		c.waits.Add(1)
		if err = c.awaitHello(); err == nil {
			err = recv()
		}
	}
	if err != nil {
		err = c.ctxErr(ctx, err)
		c.broken = err
		return err
	}
	return nil
}

// QueryValidPaths asks which of paths are valid; with lock the server
// temp-roots them for the rest of the session (nix-store --serve does so
// only with --write, which every ssh store passes).
func (c *Client) QueryValidPaths(ctx context.Context, paths []storepath.Path, lock, substitute bool) ([]storepath.Path, error) {
	var valid []storepath.Path
	err := c.exchange(ctx, fmt.Sprintf("QueryValidPaths lock=%v: %d paths", lock, len(paths)), false, func() error {
		WriteCommand(c.w, CmdQueryValidPaths)
		return WriteQueryValidPaths(c.w, &QueryValidPathsRequest{Lock: lock, Substitute: substitute, Paths: paths})
	}, func() (err error) {
		valid, err = ReadPathSet(c.r, c.dir)
		return err
	})
	return valid, err
}

// QueryPathInfos returns the infos of the valid ones among paths, sorted
// by path as the server sends them.
func (c *Client) QueryPathInfos(ctx context.Context, paths []storepath.Path) ([]*store.PathInfo, error) {
	var infos []*store.PathInfo
	err := c.exchange(ctx, fmt.Sprintf("QueryPathInfos: %d paths", len(paths)), false, func() error {
		WriteCommand(c.w, CmdQueryPathInfos)
		return WritePathSet(c.w, paths)
	}, func() error {
		for {
			info, err := ReadPathInfo(c.r, c.dir, c.effectiveVersion())
			if err != nil {
				return err
			}
			if info == nil {
				return nil
			}
			if len(infos) >= MaxPaths {
				return fmt.Errorf("read path infos: more than %d: %w", MaxPaths, wire.ErrTooLong)
			}
			infos = append(infos, info)
		}
	})
	return infos, err
}

// QueryClosure returns the closure of paths on the server (with
// includeOutputs, also the valid outputs of the derivations in it).
func (c *Client) QueryClosure(ctx context.Context, paths []storepath.Path, includeOutputs bool) ([]storepath.Path, error) {
	var closure []storepath.Path
	err := c.exchange(ctx, fmt.Sprintf("QueryClosure: %d paths", len(paths)), false, func() error {
		WriteCommand(c.w, CmdQueryClosure)
		return WriteQueryClosure(c.w, includeOutputs, paths)
	}, func() (err error) {
		closure, err = ReadPathSet(c.r, c.dir)
		return err
	})
	return closure, err
}

// DumpStorePath copies the NAR of a valid path to w.
func (c *Client) DumpStorePath(ctx context.Context, p storepath.Path, w io.Writer) error {
	return c.DumpStorePaths(ctx, []storepath.Path{p}, func(_ storepath.Path, r io.Reader) error {
		_, err := io.Copy(w, r)
		return err
	})
}

// DumpStorePaths asks for the NARs of paths all at once and calls fn with
// each in turn; fn must read it to its end. The NARs are not
// length-prefixed on the wire, so each is delimited by parsing it.
// A path the server does not have ends the session (Nix's server fails).
func (c *Client) DumpStorePaths(ctx context.Context, paths []storepath.Path, fn func(p storepath.Path, nar io.Reader) error) error {
	return c.exchange(ctx, fmt.Sprintf("DumpStorePath: %d paths, pipelined", len(paths)), false, func() error {
		for _, p := range paths {
			WriteCommand(c.w, CmdDumpStorePath)
			if err := WritePath(c.w, p); err != nil {
				return err
			}
		}
		return nil
	}, func() error {
		for _, p := range paths {
			if err := readNAR(c.r, p, fn); err != nil {
				return err
			}
		}
		return nil
	})
}

// readNAR hands fn the one NAR at the head of r, read no further than its
// end: a goroutine parses it as it passes to fn through a pipe.
func readNAR(r io.Reader, p storepath.Path, fn func(storepath.Path, io.Reader) error) error {
	pr, pw := io.Pipe()
	parsed := make(chan error, 1)
	go func() {
		err := delimitNAR(io.TeeReader(r, pw))
		if err != nil {
			err = fmt.Errorf("read NAR of %s: %w", p, err)
		}
		pw.CloseWithError(err)
		parsed <- err
	}()
	ferr := fn(p, pr)
	if ferr == nil {
		// fn must have read to the end; make sure the parser is done.
		if n, _ := io.Copy(io.Discard, pr); n > 0 {
			ferr = fmt.Errorf("read NAR of %s: %d bytes left unread", p, n)
		}
	}
	pr.CloseWithError(errors.New("NAR consumer returned"))
	perr := <-parsed
	if perr != nil {
		return perr
	}
	return ferr
}

// delimitNAR reads one NAR from r to its end.
func delimitNAR(r io.Reader) error {
	nr := nar.NewReader(r)
	buf := make([]byte, 1<<20)
	for {
		_, err := nr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := io.CopyBuffer(onlyWriter{io.Discard}, nr, buf); err != nil {
			return err
		}
	}
}

// onlyWriter hides ReadFrom so io.CopyBuffer uses the given buffer.
type onlyWriter struct{ io.Writer }

// AddToStoreNar uploads one path (proto >= 2.5) and waits for the server
// to accept it; its references must be valid on the server already.
func (c *Client) AddToStoreNar(ctx context.Context, info *store.PathInfo, narData io.Reader) error {
	return c.AddToStoreNars(ctx, []*store.PathInfo{info}, store.ReaderSource(narData), nil)
}

// AddToStoreNars uploads infos in order (proto >= 2.5), one AddToStoreNar
// each, without waiting between them; a reader collects the replies and
// calls added (if not nil) as the server accepts each path. nars writes
// each path's NAR, which must be exactly info.NarSize bytes.
//
// infos must be in topological order. Nix's servers (2.8 and ferry) check
// a path's references when it arrives, so an earlier path of the same
// pipeline counts as valid.
func (c *Client) AddToStoreNars(ctx context.Context, infos []*store.PathInfo, nars store.NarSource, added func(*store.PathInfo)) error {
	if !c.HasAddToStoreNar() {
		return fmt.Errorf("add paths: server protocol %#x has no AddToStoreNar", c.version)
	}
	return c.pipeline(ctx, fmt.Sprintf("AddToStoreNar: %d paths, pipelined", len(infos)), true, func() error {
		for _, info := range infos {
			WriteCommand(c.w, CmdAddToStoreNar)
			if err := WriteAddToStoreNar(c.w, info); err != nil {
				return err
			}
			if err := writeSized(ctx, c.w, info, nars); err != nil {
				return err
			}
		}
		return nil
	}, func() error {
		for _, info := range infos {
			if err := readAck(c.r, "add "+string(info.Path)); err != nil {
				return err
			}
			if added != nil {
				added(info)
			}
		}
		return nil
	})
}

// ImportPaths uploads infos as one export stream (ImportPaths, what
// servers older than 2.5 take); the server imports them all before its one
// reply, so added is called for every path at the end.
func (c *Client) ImportPaths(ctx context.Context, infos []*store.PathInfo, nars store.NarSource, added func(*store.PathInfo)) error {
	return c.pipeline(ctx, fmt.Sprintf("ImportPaths: %d paths", len(infos)), false, func() error {
		WriteCommand(c.w, CmdImportPaths)
		ew := export.NewWriter(c.w)
		for _, info := range infos {
			if err := ew.StartPath(); err != nil {
				return err
			}
			if err := writeSized(ctx, ew, info, nars); err != nil {
				return err
			}
			if err := ew.FinishPath(&export.Info{Path: info.Path, References: info.References, Deriver: info.Deriver}); err != nil {
				return err
			}
		}
		return ew.Close()
	}, func() error {
		if err := readAck(c.r, "import paths"); err != nil {
			return err
		}
		if added != nil {
			for _, info := range infos {
				added(info)
			}
		}
		return nil
	})
}

// pipeline runs send and recv at once: send writes a stream of requests
// (flushed at the end) while recv reads their replies.
func (c *Client) pipeline(outer context.Context, what string, needVersion bool, send, recv func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return fmt.Errorf("%s: session ended earlier: %w", what, c.broken)
	}
	if needVersion && !c.helloRead() {
		c.waits.Add(1)
		if err := c.awaitHello(); err != nil {
			c.broken = err
			return err
		}
	}
	ctx, cancel := context.WithCancel(outer)
	defer cancel()
	defer c.watch(ctx)()
	c.tracef("%s", what)
	c.waits.Add(1)
	sent := make(chan error, 1)
	go func() {
		err := send()
		if err == nil {
			err = c.w.Flush()
		}
		if err != nil {
			// The server will not answer what it never got: stop the
			// reader by closing the connection.
			cancel()
		}
		sent <- err
	}()
	rerr := c.awaitHello()
	if rerr == nil {
		rerr = recv()
	}
	if rerr != nil {
		cancel() // unblock a writer stuck on a server that stopped reading
	}
	serr := <-sent
	var err error
	switch {
	case outer.Err() != nil && (rerr != nil || serr != nil):
		err = outer.Err()
	case serr != nil && !isConnErr(serr):
		// The writer's own failure (a source that could not be read) is
		// the cause; the reader only saw the connection go.
		err = serr
	case rerr != nil:
		err = rerr
	default:
		err = serr
	}
	if err != nil {
		c.broken = err
	}
	return err
}

// isConnErr reports whether err is what writing to a connection that was
// closed (by the other end, or by us to stop the reader) gives.
func isConnErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, os.ErrClosed) || errors.Is(err, io.EOF)
}

// writeSized writes info's NAR from nars to w and checks that it was
// exactly info.NarSize bytes: anything else puts the session out of step.
func writeSized(ctx context.Context, w io.Writer, info *store.PathInfo, nars store.NarSource) error {
	cw := &sizeWriter{w: w, max: info.NarSize}
	if err := nars(ctx, info, cw); err != nil {
		return fmt.Errorf("send %s: %w", info.Path, err)
	}
	if cw.n != info.NarSize {
		return fmt.Errorf("send %s: NAR is %d bytes, its info says %d", info.Path, cw.n, info.NarSize)
	}
	return nil
}

type sizeWriter struct {
	w      io.Writer
	n, max uint64
}

func (s *sizeWriter) Write(p []byte) (int, error) {
	if s.n+uint64(len(p)) > s.max {
		return 0, fmt.Errorf("NAR is longer than its info's %d bytes", s.max)
	}
	n, err := s.w.Write(p)
	s.n += uint64(n)
	return n, err
}

// readAck reads the 1 with which the server accepts an upload.
func readAck(r *wire.Reader, what string) error {
	v, err := r.ReadInt()
	if err != nil {
		return fmt.Errorf("%s: %w", what, wire.NoEOF(err))
	}
	if v != 1 {
		return fmt.Errorf("%s: server replied %d, not 1", what, v)
	}
	return nil
}

// BuildDerivation builds a BasicDerivation (no input derivations: their
// needed outputs are among its input sources) that the server need not
// have as a .drv file.
func (c *Client) BuildDerivation(ctx context.Context, drvPath storepath.Path, drv *derivation.Derivation, s *store.BuildSettings) (*BuildResult, error) {
	if s == nil {
		s = &store.BuildSettings{}
	}
	var res *BuildResult
	err := c.exchange(ctx, "BuildDerivation "+string(drvPath), true, func() error {
		WriteCommand(c.w, CmdBuildDerivation)
		WritePath(c.w, drvPath)
		if err := WriteBasicDerivation(c.w, drv); err != nil {
			return err
		}
		return WriteBuildSettings(c.w, c.effectiveVersion(), s)
	}, func() (err error) {
		res, err = ReadBuildResult(c.r, c.dir, c.effectiveVersion())
		return err
	})
	return res, err
}

// BuildPaths asks the server to realise paths (derivations it holds, or
// opaque paths it must have).
func (c *Client) BuildPaths(ctx context.Context, paths []DerivedPath, s *store.BuildSettings) (*BuildPathsReply, error) {
	if s == nil {
		s = &store.BuildSettings{}
	}
	var rep *BuildPathsReply
	err := c.exchange(ctx, fmt.Sprintf("BuildPaths: %d paths", len(paths)), true, func() error {
		WriteCommand(c.w, CmdBuildPaths)
		return WriteBuildPaths(c.w, c.effectiveVersion(), paths, s)
	}, func() (err error) {
		rep, err = ReadBuildPathsReply(c.r)
		return err
	})
	return rep, err
}

// BasicDerivation turns a derivation into the BasicDerivation Nix sends:
// its input derivations are replaced by the outputs it uses from them,
// which become input sources. outputs gives each input derivation's
// output paths.
func BasicDerivation(d *derivation.Derivation, outputs func(storepath.Path) (map[string]storepath.Path, error)) (*derivation.Derivation, error) {
	b := d.Clone()
	seen := map[storepath.Path]bool{}
	for _, s := range b.InputSrcs {
		seen[s] = true
	}
	for drvPath, names := range d.InputDrvs {
		outs, err := outputs(drvPath)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			p, ok := outs[n]
			if !ok || p == "" {
				return nil, fmt.Errorf("input derivation %s has no known output %q", drvPath, n)
			}
			if !seen[p] {
				seen[p] = true
				b.InputSrcs = append(b.InputSrcs, p)
			}
		}
	}
	b.InputDrvs = nil
	// Sorted by full path, as a derivation keeps its input sources.
	sort.Slice(b.InputSrcs, func(i, j int) bool { return b.InputSrcs[i] < b.InputSrcs[j] })
	return b, nil
}
