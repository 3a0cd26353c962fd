package serve

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"

	"ferry/nix/derivation"
	"ferry/nix/export"
	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

// Options configures a Server. A nil *Options means defaults.
type Options struct {
	// Write enables the commands that change the store (ImportPaths,
	// BuildPaths, BuildDerivation, AddToStoreNar) and the side effects of
	// QueryValidPaths' lock and substitute flags, like `--write`. The zero
	// value serves read-only.
	Write bool
	// Log receives build logs (Nix sends them to stderr). nil discards them.
	Log io.Writer
	// Version is the version word advertised in the handshake; 0 means
	// Version (0x207). Only tests should change it.
	Version uint64
	// TempDir is where ImportPaths spools NARs larger than MemSpool while
	// it waits for their metadata; "" means os.TempDir().
	TempDir string
}

// MemSpool is the largest NAR ImportPaths holds in memory; larger ones go
// to a temporary file (the export stream sends a path's name after its NAR).
const MemSpool = 8 << 20

// Server serves the serve protocol over a Backend. A Server holds no
// per-session state and is safe for concurrent use; each Serve call is one
// session (one `nix-store --serve` process in Nix).
type Server struct {
	b    Backend
	opts Options
}

// NewServer returns a Server over b.
func NewServer(b Backend, opts *Options) *Server {
	s := &Server{b: b}
	if opts != nil {
		s.opts = *opts
	}
	if s.opts.Version == 0 {
		s.opts.Version = Version
	}
	if s.opts.Log == nil {
		s.opts.Log = io.Discard
	}
	return s
}

// Main runs one session of a Server over b on stdin and stdout: what
// `ferry serve` and `ferry --serve` run once they have opened the store for
// this session. The caller closes b afterwards, which releases the session's
// temp roots; on a non-nil error it prints "error: <err>" on stderr and exits
// 1 (Nix's behaviour: nothing more reaches stdout).
func Main(ctx context.Context, b Backend, stdin io.Reader, stdout io.Writer, opts *Options) error {
	return NewServer(b, opts).Serve(ctx, stdin, stdout)
}

// wireError is an error of the wire layer reworded as Nix words it, so that
// a client sees the same stderr from ferry as from nix-store --serve; the
// original error stays reachable with errors.Unwrap.
type wireError struct {
	msg string
	err error
}

func (e *wireError) Error() string { return e.msg }
func (e *wireError) Unwrap() error { return e.err }

// nixError rewords the errors of malformed input Nix has fixed messages for:
// "unexpected end-of-file", "non-zero padding" and "serialised integer N is
// too large for type 'T'".
func nixError(err error) error {
	var re *wire.RangeError
	var relayed *relayError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &relayed):
		// The far store's failure (NewRelayBackend), which names it: an
		// end of file there is not the client's.
		return err
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &wireError{"unexpected end-of-file", err}
	case errors.Is(err, wire.ErrPadding):
		return &wireError{"non-zero padding", err}
	case errors.As(err, &re):
		return &wireError{re.Error(), err}
	}
	return err
}

// session is the state of one Serve call.
type session struct {
	s             *Server
	ctx           context.Context
	br            *bufio.Reader
	r             *wire.Reader
	w             *wire.Writer
	dir           storepath.Dir
	clientVersion uint64
	// watch, if non-nil, is a goroutine peeking at the input for a
	// disconnect during a build; nothing else may read br until it is done.
	watch *inputWatch
	// batch holds the paths of a copy that were acknowledged but are not
	// yet committed (see addToStoreNar); expected are the paths the last
	// QueryValidPaths reported missing and that have not arrived yet.
	batch    store.Batch
	expected map[storepath.Path]bool
}

type inputWatch struct {
	done chan struct{}
	err  error // set before done is closed
}

// Serve runs one session: the handshake, then commands until the client
// closes its end at a command boundary (Serve returns nil), an error occurs
// (Serve returns it and the session is over: the caller reports it on stderr,
// as Nix does), or ctx is cancelled. It mirrors opServe in Nix 2.8.0's
// src/nix-store/nix-store.cc. r is read through a buffer; w is flushed after
// the handshake and after each reply.
func (s *Server) Serve(ctx context.Context, r io.Reader, w io.Writer) error {
	br := bufio.NewReaderSize(r, 64<<10)
	ss := &session{
		s:   s,
		ctx: ctx,
		br:  br,
		r:   wire.NewReader(br),
		w:   wire.NewWriterSize(w, 64<<10),
		dir: s.b.Dir(),
	}
	err := ss.run()
	// Paths acknowledged to the client are committed however the session
	// ends: the client was told they were added.
	if cerr := ss.commit(); err == nil {
		err = cerr
	}
	return nixError(err)
}

func (ss *session) run() error {
	s, ctx := ss.s, ss.ctx
	v, err := ServerHandshake(ss.r, ss.w, s.opts.Version)
	if err != nil {
		return err
	}
	ss.clientVersion = v
	if own := s.opts.Version; own != 0 && own < Version && Minor(v) > Minor(own) {
		// A server of an older protocol does not know the fields a newer
		// client could take: it writes and reads what both know, as the
		// older Nix it stands for would.
		ss.clientVersion = own
	}
	for {
		if ss.watch != nil {
			<-ss.watch.done
			err := ss.watch.err
			ss.watch = nil
			if err == io.EOF {
				return nil
			} else if err != nil {
				return fmt.Errorf("read command: %w", err)
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		cmd, err := ReadCommand(ss.r)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read command: %w", err)
		}
		if err := ss.handle(cmd); err != nil {
			return err
		}
		if err := ss.w.Flush(); err != nil {
			return fmt.Errorf("write reply: %w", err)
		}
	}
}

func (ss *session) handle(cmd Command) error {
	if cmd != CmdAddToStoreNar {
		// Whatever the command, it sees the copy so far committed.
		if err := ss.commit(); err != nil {
			return err
		}
	}
	switch cmd {
	case CmdQueryValidPaths:
		return ss.queryValidPaths()
	case CmdQueryPathInfos:
		return ss.queryPathInfos()
	case CmdDumpStorePath:
		return ss.dumpStorePath()
	case CmdImportPaths:
		return ss.importPaths()
	case CmdExportPaths:
		return ss.exportPaths()
	case CmdBuildPaths:
		return ss.buildPaths()
	case CmdQueryClosure:
		return ss.queryClosure()
	case CmdBuildDerivation:
		return ss.buildDerivation()
	case CmdAddToStoreNar:
		return ss.addToStoreNar()
	}
	return fmt.Errorf("unknown serve command %d", uint64(cmd))
}

// queryValidPaths mirrors cmdQueryValidPaths: with --write and lock, add a
// temp root for every requested path, valid or not, then reply with the
// valid subset. ferry differs in one way (issue 5): with --write it roots
// the requested paths for lock=0 too, as Nix's own clients send lock=0 and
// then rely on the reported paths staying valid while they upload.
// Substitution is a no-op: ferry stores have no substituters.
func (ss *session) queryValidPaths() error {
	q, err := ReadQueryValidPaths(ss.r, ss.dir)
	if err != nil {
		return err
	}
	var valid []storepath.Path
	if l, ok := capability[store.Locker](ss.s.b); ok && ss.s.opts.Write {
		// Temp roots for all of them, then the query, in one step.
		valid, err = l.QueryValidPathsLocked(ss.ctx, q.Paths)
	} else {
		if ss.s.opts.Write {
			for _, p := range q.Paths {
				if err := ss.s.b.AddTempRoot(ss.ctx, p); err != nil {
					return err
				}
			}
		}
		valid, err = ss.s.b.QueryValidPaths(ss.ctx, q.Paths)
	}
	if err != nil {
		return err
	}
	if ss.s.opts.Write {
		ss.expect(q.Paths, valid)
	}
	return WritePathSet(ss.w, valid)
}

// queryPathInfos mirrors cmdQueryPathInfos: one record per valid path in set
// order, invalid paths skipped, then an empty string.
func (ss *session) queryPathInfos() error {
	paths, err := ReadPathSet(ss.r, ss.dir)
	if err != nil {
		return err
	}
	if q, ok := capability[store.PathInfoQuerier](ss.s.b); ok {
		// All in one step (one request to a relayed store), written in
		// the order asked for.
		infos, err := q.QueryPathInfos(ss.ctx, paths)
		if err != nil {
			return err
		}
		byPath := make(map[storepath.Path]*store.PathInfo, len(infos))
		for _, info := range infos {
			byPath[info.Path] = info
		}
		for _, p := range paths {
			if info := byPath[p]; info != nil {
				if err := WritePathInfo(ss.w, ss.clientVersion, info); err != nil {
					return err
				}
				delete(byPath, p)
			}
		}
		return ss.w.WriteString("")
	}
	for _, p := range paths {
		info, err := ss.s.b.QueryPathInfo(ss.ctx, p)
		if errors.Is(err, store.ErrNotValid) {
			continue
		}
		if err != nil {
			return err
		}
		if err := WritePathInfo(ss.w, ss.clientVersion, info); err != nil {
			return err
		}
	}
	return ss.w.WriteString("")
}

// dumpStorePath mirrors cmdDumpStorePath: the NAR of a valid store path, raw.
func (ss *session) dumpStorePath() error {
	p, err := ReadPath(ss.r, ss.dir)
	if err != nil {
		return err
	}
	return ss.s.b.NarFromPath(ss.ctx, p, ss.w)
}

// importPaths mirrors cmdImportPaths (Store::importPaths in
// export-import.cc): each path of the export stream is added with the hash
// and size of the NAR as received, the references and deriver of its
// trailer, no CA; references must be valid already (or come earlier). The
// reply 1 follows the whole stream. A Backend that is an Importer imports
// the stream itself instead.
func (ss *session) importPaths() error {
	if !ss.s.opts.Write {
		return errors.New("importing paths is not allowed")
	}
	if imp, ok := capability[store.Importer](ss.s.b); ok {
		paths, err := imp.Import(ss.ctx, ss.br)
		if err != nil {
			return err
		}
		for _, p := range paths {
			if err := ss.s.b.AddTempRoot(ss.ctx, p); err != nil {
				return err
			}
		}
		return ss.w.WriteUint64(1)
	}
	er := export.NewReader(ss.r, &export.ReaderOptions{StoreDir: ss.dir})
	for {
		err := er.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("import paths: %w", err)
		}
		if err := ss.importOne(er); err != nil {
			return err
		}
	}
	return ss.w.WriteUint64(1)
}

func (ss *session) importOne(er *export.Reader) error {
	sp := &spool{dir: ss.s.opts.TempDir}
	defer sp.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(sp, h), er)
	if err != nil {
		return fmt.Errorf("import paths: %w", err)
	}
	ei, err := er.Info()
	if err != nil {
		return fmt.Errorf("import paths: %w", err)
	}
	info := &store.PathInfo{
		Path:       ei.Path,
		Deriver:    ei.Deriver,
		NarHash:    hash.FromHasher(hash.SHA256, h),
		NarSize:    uint64(n),
		References: ei.References,
	}
	nr, err := sp.Reader()
	if err != nil {
		return fmt.Errorf("import paths: %w", err)
	}
	if ss.s.opts.Write {
		if err := ss.s.b.AddTempRoot(ss.ctx, info.Path); err != nil {
			return err
		}
	}
	return ss.s.b.AddToStoreNar(ss.ctx, info, nr)
}

// exportPaths mirrors cmdExportPaths (Store::exportPaths): the export stream
// of exactly the given paths, dependencies first (topoSortPaths reversed),
// refusing a path whose NAR no longer has its registered hash.
func (ss *session) exportPaths() error {
	paths, err := ReadExportPaths(ss.r, ss.dir)
	if err != nil {
		return err
	}
	return store.Export(ss.ctx, ss.s.b, ss.w, paths)
}

// buildPaths mirrors cmdBuildPaths: build, then reply 0, or an exit status
// (Worker::exitStatus) and the error message, in band.
func (ss *session) buildPaths() error {
	if !ss.s.opts.Write {
		return errors.New("building paths is not allowed")
	}
	paths, settings, err := ReadBuildPaths(ss.r, ss.dir, ss.clientVersion)
	if err != nil {
		return err
	}
	for _, p := range paths {
		if err := ss.s.b.AddTempRoot(ss.ctx, p.Path); err != nil {
			return err
		}
	}
	ctx, stop := ss.watchDisconnect()
	results, err := ss.s.b.BuildPaths(ctx, paths, settings, ss.s.opts.Log)
	stop()
	return WriteBuildPathsReply(ss.w, buildPathsReply(paths, results, err))
}

// buildPathsReply computes the reply Nix 2.8 gives: 0 on success; for build
// failures 0x60 | mask with 0x04 failed, 0x01 timed out, 0x02 hash mismatch,
// 0x08 not deterministic, or 1 for any other failure (Worker::exitStatus);
// the message is the error as Nix prints it, "error: " in red included.
func buildPathsReply(paths []DerivedPath, results []*store.BuildResult, err error) *BuildPathsReply {
	const red = "\x1b[31;1merror:\x1b[0m "
	if err != nil {
		return &BuildPathsReply{Status: 1, Message: red + err.Error()}
	}
	var mask uint64
	var failed []string
	var msg string
	for i, r := range results {
		if r == nil || r.Status.Success() {
			continue
		}
		if i < len(paths) {
			failed = append(failed, "'"+string(paths[i].Path)+"'")
		}
		msg = r.ErrorMsg
		switch r.Status {
		case store.TimedOut:
			mask |= 0x01 | 0x04
		case store.OutputRejected:
			mask |= 0x02 | 0x04
		case store.PermanentFailure:
			mask |= 0x04
		case store.NotDeterministic:
			mask |= 0x08
		}
	}
	if len(failed) == 0 {
		return &BuildPathsReply{}
	}
	status := uint64(1)
	if mask != 0 {
		status = 0x60 | mask
	}
	if len(failed) > 1 || msg == "" {
		msg = fmt.Sprintf("build of %s failed", joinComma(failed))
	}
	return &BuildPathsReply{Status: status, Message: red + msg}
}

func joinComma(ss []string) string {
	var b bytes.Buffer
	for i, s := range ss {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(s)
	}
	return b.String()
}

// queryClosure mirrors cmdQueryClosure: computeFSClosure of the paths, with
// the outputs of derivations if asked; an invalid path is an error.
func (ss *session) queryClosure() error {
	includeOutputs, paths, err := ReadQueryClosure(ss.r, ss.dir)
	if err != nil {
		return err
	}
	closure, err := ss.s.b.QueryClosure(ss.ctx, paths, includeOutputs)
	if err != nil {
		return err
	}
	return WritePathSet(ss.w, closure)
}

// buildDerivation mirrors cmdBuildDerivation: read the drv path, the
// BasicDerivation and the settings, build, and reply with the BuildResult.
// Like Nix 2.4-2.10 (docs/protocol.md §3.9.3) the reply carries
// builtOutputs in the proto 2.6/2.7 form whatever the client's version,
// which is what every client of those servers reads. The inputs and outputs
// of the build get temp roots for the rest of the session.
func (ss *session) buildDerivation() error {
	if !ss.s.opts.Write {
		return errors.New("building paths is not allowed")
	}
	drvPath, err := ReadPath(ss.r, ss.dir)
	if err != nil {
		return err
	}
	if !drvPath.IsDerivation() {
		return fmt.Errorf("path '%s' is not a derivation", drvPath)
	}
	name, err := derivation.NameFromPath(drvPath)
	if err != nil {
		return err
	}
	drv, err := ReadBasicDerivation(ss.r, ss.dir, name)
	if err != nil {
		return err
	}
	settings, err := ReadBuildSettings(ss.r, ss.clientVersion)
	if err != nil {
		return err
	}
	protect := append([]storepath.Path(nil), drv.InputSrcs...)
	for _, p := range drv.OutputPaths() {
		protect = append(protect, p)
	}
	for _, p := range protect {
		if err := ss.s.b.AddTempRoot(ss.ctx, p); err != nil {
			return err
		}
	}
	ctx, stop := ss.watchDisconnect()
	res, err := ss.s.b.BuildDerivation(ctx, drvPath, drv, settings, ss.s.opts.Log)
	stop()
	if err != nil {
		return err
	}
	for _, p := range res.BuiltOutputs {
		if err := ss.s.b.AddTempRoot(ss.ctx, p); err != nil {
			return err
		}
	}
	var hashes map[string]hash.Hash
	if dh, err := derivation.HashModulo(drv, true, derivation.MapResolver(nil), nil); err == nil {
		hashes = dh.Hashes
	}
	wr := FromStore(res, hashes)
	if err := writeBuildResultHead(ss.w, ss.clientVersion, wr); err != nil {
		return err
	}
	return WriteBuiltOutputs(ss.w, 0x207, wr.BuiltOutputs)
}

// watchDisconnect returns a context for a build that is cancelled if the
// client closes its end of the connection while the build runs (Nix's
// MonitorFdHup on stdin). During BuildPaths and BuildDerivation a client
// sends nothing until it has the reply, so a goroutine can wait on the input
// without consuming anything: it peeks one byte. EOF (or a read error) means
// the client is gone and cancels the build; a byte means the client
// pipelined its next command, which stays buffered for the command loop.
// The command loop waits for the goroutine before it reads again. stop
// releases the context once the build is over.
func (ss *session) watchDisconnect() (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(ss.ctx)
	wt := &inputWatch{done: make(chan struct{})}
	ss.watch = wt
	go func() {
		defer close(wt.done)
		if _, err := ss.br.Peek(1); err != nil {
			wt.err = err
			cancel()
		}
	}()
	return ctx, cancel
}

// addToStoreNar mirrors cmdAddToStoreNar: read the metadata, then hand
// exactly narSize bytes to the store, which verifies hash and size and
// requires the references to be valid before registering; whatever the
// store did not read is drained, as Nix does. The path gets a temp root, as
// LocalStore::addToStore gives it. Reply 1.
//
// Nix's clients send a copy as one AddToStoreNar per path, each waiting for
// its reply, after a QueryValidPaths of all the paths. Making every path
// durable before its reply costs a file system sync per path, which is
// most of the time of a small path. So with a Backend that can batch, a path
// that the last QueryValidPaths reported missing is verified and staged,
// and acknowledged at once. What is staged is committed (one sync, one
// transaction per 256 paths) in the background whenever AsyncPaths or
// AsyncBytes of it wait, so the work overlaps the client's round trips,
// and in full before the reply to the last such path, before any other
// command, and when the session ends in any way. The client therefore sees
// its copy succeed only once all of it is durable and valid; if the server
// dies before, the client gets an error, and what was staged is left as
// temporaries for the next write or GC to remove. Any other path is
// committed before its reply.
func (ss *session) addToStoreNar() error {
	if !ss.s.opts.Write {
		return errors.New("importing paths is not allowed")
	}
	info, err := ReadAddToStoreNar(ss.r, ss.dir)
	if err != nil {
		return err
	}
	if err := ss.s.b.AddTempRoot(ss.ctx, info.Path); err != nil {
		return err
	}
	nar := &io.LimitedReader{R: ss.br, N: int64(min(info.NarSize, 1<<62))}
	batcher, _ := capability[store.Batcher](ss.s.b)
	if batcher != nil && ss.expected[info.Path] {
		if ss.batch == nil {
			ss.batch = batcher.NewBatch()
		}
		err = ss.batch.Add(ss.ctx, info, nar)
		delete(ss.expected, info.Path)
	} else {
		if err = ss.commit(); err == nil {
			err = ss.s.b.AddToStoreNar(ss.ctx, info, nar)
		}
	}
	if err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, nar); err != nil {
		return fmt.Errorf("read nar: %w", err)
	}
	if nar.N > 0 {
		return fmt.Errorf("read nar of %s: %w", info.Path, io.ErrUnexpectedEOF)
	}
	if ss.batch != nil {
		if len(ss.expected) == 0 {
			if err := ss.commit(); err != nil {
				return err
			}
		} else if ss.batch.Len() >= AsyncPaths || ss.batch.Bytes() >= AsyncBytes {
			ss.batch.CommitAsync(ss.ctx)
		}
	}
	return ss.w.WriteUint64(1)
}

// AsyncPaths and AsyncBytes are how much of a copy is staged before it is
// committed in the background (addToStoreNar).
const (
	AsyncPaths = store.BatchAsyncPaths
	AsyncBytes = store.BatchAsyncBytes
)

// expect records the paths of a QueryValidPaths reply that a copy will
// send next: those asked for and not valid.
func (ss *session) expect(asked, valid []storepath.Path) {
	ss.expected = map[storepath.Path]bool{}
	for _, p := range asked {
		ss.expected[p] = true
	}
	for _, p := range valid {
		delete(ss.expected, p)
	}
}

// commit commits the staged part of a copy, if any, waiting for a
// background commit.
func (ss *session) commit() error {
	if ss.batch == nil {
		return nil
	}
	return ss.batch.Commit(ss.ctx)
}

// spool holds a NAR in memory up to MemSpool bytes, then in a temp file.
type spool struct {
	dir string
	buf bytes.Buffer
	f   *os.File
}

func (s *spool) Write(p []byte) (int, error) {
	if s.f == nil && s.buf.Len()+len(p) <= MemSpool {
		return s.buf.Write(p)
	}
	if s.f == nil {
		f, err := os.CreateTemp(s.dir, "ferry-serve-import-*")
		if err != nil {
			return 0, err
		}
		os.Remove(f.Name()) // nothing else needs its name
		s.f = f
		if _, err := f.Write(s.buf.Bytes()); err != nil {
			return 0, err
		}
		s.buf = bytes.Buffer{}
	}
	return s.f.Write(p)
}

// Reader returns the spooled bytes from the start.
func (s *spool) Reader() (io.Reader, error) {
	if s.f == nil {
		return bytes.NewReader(s.buf.Bytes()), nil
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return bufio.NewReaderSize(s.f, 64<<10), nil
}

func (s *spool) Close() error {
	if s.f != nil {
		return s.f.Close()
	}
	return nil
}
