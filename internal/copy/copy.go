// Package copy copies closures between any two stores (ferry copy, and the
// inputs and outputs of remote builds), race-free and in a constant number
// of round trips:
//
//   - Before deciding what to send, it asks the destination which paths of
//     the whole closure it has and locks them in the same call
//     (store.Locker: QueryValidPaths with lock=1 over ssh), so a garbage
//     collection there cannot delete a path it was just told need not be
//     sent. The source's paths are locked the same way before they are read.
//   - The missing paths go out in topological order through the
//     destination's pipelined upload (store.MultiAdder) and, from a remote
//     source, come in through its pipelined dumps (store.MultiDumper):
//     nobody waits for a reply per path.
//   - NARs stream from source to destination through a pipe; nothing is
//     held whole in memory.
//
// Only complete paths become valid at the destination; after a failure or
// an interrupt, the next copy sends what is still missing.
package copy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"ferry/nix/storepath"
	"ferry/store"
)

// Options configures Copy. A nil *Options means the zero value.
type Options struct {
	// IncludeOutputs also copies the valid outputs of the derivations in
	// the closure (nix copy --include-outputs... as nix-copy-closure's).
	IncludeOutputs bool
	// CheckPath, if not nil, is asked about each path before anything is
	// sent; an error refuses the copy (the signature check of a local
	// destination with require-sigs).
	CheckPath func(info *store.PathInfo) error
	// Progress, if not nil, is told how the copy goes.
	Progress Progress
	// Substitute asks a destination that is a store.Substituter to
	// substitute what it lacks before the copy sends it (Nix's
	// builders-use-substitutes, copyPaths with substitute).
	Substitute bool
}

// Progress hears about a copy as it runs. Its methods are called from one
// goroutine at a time.
type Progress interface {
	// Start gives the totals of what will be sent.
	Start(paths int, bytes uint64)
	// Sending says which path is being sent now.
	Sending(info *store.PathInfo)
	// Wrote counts n more bytes sent.
	Wrote(n int)
	// Added says the destination has accepted info.
	Added(info *store.PathInfo)
}

// Result is what a copy did.
type Result struct {
	// Copied are the paths sent, in the order sent.
	Copied []storepath.Path `json:"copied"`
	// Bytes is the NAR size of what was sent.
	Bytes uint64 `json:"bytes"`
	// Skipped counts the paths of the closure the destination had already.
	Skipped int `json:"skipped"`
	// Seconds is how long the copy took.
	Seconds float64 `json:"seconds"`
}

// Copy copies the closure of paths from src to dst.
func Copy(ctx context.Context, src, dst store.Store, paths []storepath.Path, opts *Options) (*Result, error) {
	if opts == nil {
		opts = &Options{}
	}
	if src.Dir() != dst.Dir() {
		// Every path is computed against its store's directory: a path
		// of one is no path of the other. (Nix 2.8 re-computes the
		// path of a content-addressed path without references, a case
		// ferry leaves out.)
		return nil, fmt.Errorf("cannot copy between store directories: the source's is %s, the destination's %s (set store= on the URI of one of them)", src.Dir(), dst.Dir())
	}
	start := time.Now()
	res := &Result{}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Lock what was asked for at the source, so its closure stays there
	// while we read it.
	have, err := ValidLocked(ctx, src, paths)
	if err != nil {
		return nil, fmt.Errorf("query source: %w", err)
	}
	if missing := minus(paths, have); len(missing) > 0 {
		return nil, fmt.Errorf("path '%s' %w in the source store", missing[0], store.ErrNotValid)
	}
	closure, err := Closure(ctx, src, paths, opts.IncludeOutputs)
	if err != nil {
		return nil, fmt.Errorf("compute closure: %w", err)
	}
	// The source's path infos are read while the destination answers the
	// locked query over the whole closure, which decides what to send.
	type infosResult struct {
		infos map[storepath.Path]*store.PathInfo
		err   error
	}
	got := make(chan infosResult, 1)
	go func() {
		infos, err := PathInfos(ctx, src, closure)
		got <- infosResult{infos, err}
	}()
	var present []storepath.Path
	if sub, ok := dst.(store.Substituter); ok && opts != nil && opts.Substitute {
		present, err = sub.QueryValidPathsLockedSubstitute(ctx, closure)
	} else {
		present, err = ValidLocked(ctx, dst, closure)
	}
	ir := <-got
	if ir.err != nil {
		return nil, fmt.Errorf("query source: %w", ir.err)
	}
	if err != nil {
		return nil, fmt.Errorf("query destination: %w", err)
	}
	infos := ir.infos
	for _, p := range closure {
		if infos[p].NarHash.IsZero() || infos[p].NarSize == 0 {
			// Servers older than protocol 2.4 send no NAR hash, and a
			// path cannot be checked on arrival without one.
			return nil, fmt.Errorf("the source store gives no NAR hash and size for %s (a serve protocol older than 2.4): ferry cannot copy from it", p)
		}
	}
	res.Skipped = len(present)
	isPresent := set(present)
	var send []*store.PathInfo
	for _, p := range closure {
		if !isPresent[p] {
			send = append(send, infos[p])
		}
	}
	send, err = TopoSort(send)
	if err != nil {
		return nil, err
	}
	if opts.CheckPath != nil {
		for _, info := range send {
			if err := opts.CheckPath(info); err != nil {
				return nil, err
			}
		}
	}
	var total uint64
	for _, info := range send {
		total += info.NarSize
	}
	if opts.Progress != nil {
		opts.Progress.Start(len(send), total)
	}
	if len(send) == 0 {
		res.Seconds = time.Since(start).Seconds()
		return res, nil
	}

	nars, stop := narSource(ctx, src, send, opts.Progress)
	defer stop()
	added := func(info *store.PathInfo) {
		res.Copied = append(res.Copied, info.Path)
		res.Bytes += info.NarSize
		if opts.Progress != nil {
			opts.Progress.Added(info)
		}
	}
	err = AddAll(ctx, dst, send, nars, added)
	res.Seconds = time.Since(start).Seconds()
	if err != nil {
		return res, err
	}
	return res, nil
}

// ValidLocked reports which of paths st has, protecting them from garbage
// collection in the same step where st can (store.Locker, or temp roots
// added before the query).
func ValidLocked(ctx context.Context, st store.Store, paths []storepath.Path) ([]storepath.Path, error) {
	if l, ok := st.(store.Locker); ok {
		return l.QueryValidPathsLocked(ctx, paths)
	}
	if r, ok := st.(store.TempRooter); ok {
		for _, p := range paths {
			if err := r.AddTempRoot(ctx, p); err != nil {
				return nil, err
			}
		}
	}
	return st.QueryValidPaths(ctx, paths)
}

// Closure returns the closure of paths in st, in one step where st can.
func Closure(ctx context.Context, st store.Store, paths []storepath.Path, includeOutputs bool) ([]storepath.Path, error) {
	if c, ok := st.(store.Closurer); ok {
		return c.QueryClosure(ctx, paths, includeOutputs)
	}
	return store.Closure(ctx, st, paths, includeOutputs)
}

// PathInfos returns the infos of paths, all of which must be valid.
func PathInfos(ctx context.Context, st store.Store, paths []storepath.Path) (map[storepath.Path]*store.PathInfo, error) {
	out, err := ValidInfos(ctx, st, paths)
	if err != nil {
		return nil, err
	}
	for _, p := range paths {
		if out[p] == nil {
			return nil, fmt.Errorf("path '%s' %w", p, store.ErrNotValid)
		}
	}
	return out, nil
}

// ValidInfos returns the infos of the valid ones among paths, in one
// request where st can (store.PathInfoQuerier).
func ValidInfos(ctx context.Context, st store.Store, paths []storepath.Path) (map[storepath.Path]*store.PathInfo, error) {
	out := make(map[storepath.Path]*store.PathInfo, len(paths))
	if q, ok := st.(store.PathInfoQuerier); ok {
		infos, err := q.QueryPathInfos(ctx, paths)
		if err != nil {
			return nil, err
		}
		for _, info := range infos {
			out[info.Path] = info
		}
		return out, nil
	}
	for _, p := range paths {
		info, err := st.QueryPathInfo(ctx, p)
		if errors.Is(err, store.ErrNotValid) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[p] = info
	}
	return out, nil
}

// AddAll adds infos (in topological order) to st, pipelined where st can.
func AddAll(ctx context.Context, st store.Store, infos []*store.PathInfo, nars store.NarSource, added func(*store.PathInfo)) error {
	if m, ok := st.(store.MultiAdder); ok {
		return m.AddToStoreNars(ctx, infos, nars, added)
	}
	for _, info := range infos {
		pr := nars.Open(ctx, info)
		err := st.AddToStoreNar(ctx, info, pr)
		pr.CloseWithError(errors.New("add stopped"))
		if err != nil {
			return fmt.Errorf("add %s: %w", info.Path, err)
		}
		if added != nil {
			added(info)
		}
	}
	return nil
}

// narSource returns the NarSource that reads send's NARs from src: from a
// store.MultiDumper, one pipelined stream in send's order; else one
// NarFromPath each. Bytes are counted for progress on the way. stop ends
// the stream early.
func narSource(ctx context.Context, src store.Store, send []*store.PathInfo, p Progress) (nars store.NarSource, stop func()) {
	count := func(info *store.PathInfo, w io.Writer) io.Writer {
		if p == nil {
			return w
		}
		p.Sending(info)
		return &countingWriter{w: w, p: p}
	}
	md, ok := src.(store.MultiDumper)
	if !ok {
		return func(ctx context.Context, info *store.PathInfo, w io.Writer) error {
			return src.NarFromPath(ctx, info.Path, count(info, w))
		}, func() {}
	}
	type nar struct {
		path storepath.Path
		r    io.Reader
		done chan error // the consumer's result
	}
	ctx, cancel := context.WithCancel(ctx)
	next := make(chan nar)
	dumped := make(chan error, 1)
	paths := make([]storepath.Path, len(send))
	for i, info := range send {
		paths[i] = info.Path
	}
	go func() {
		dumped <- md.NarsFromPaths(ctx, paths, func(p storepath.Path, r io.Reader) error {
			n := nar{p, r, make(chan error, 1)}
			select {
			case next <- n:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case err := <-n.done:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		close(next)
	}()
	consumed := 0 // touched by nars, then by stop after nars is done
	var dumpErr error
	var once sync.Once
	wait := func() error {
		once.Do(func() { dumpErr = <-dumped })
		return dumpErr
	}
	nars = func(_ context.Context, info *store.PathInfo, w io.Writer) error {
		n, ok := <-next
		if !ok {
			if err := wait(); err != nil {
				return err
			}
			return fmt.Errorf("read %s: the source sent no more NARs", info.Path)
		}
		if n.path != info.Path {
			err := fmt.Errorf("read %s: the source sent %s instead", info.Path, n.path)
			n.done <- err
			return err
		}
		_, err := io.Copy(count(info, w), n.r)
		n.done <- err
		if err == nil {
			consumed++
		}
		return err
	}
	// stop lets a stream that was read to its end finish its exchange (so
	// the session stays usable); one cut short is cancelled, which ends
	// the source's session.
	stop = func() {
		if consumed < len(send) {
			cancel()
		}
		wait()
		cancel()
	}
	return nars, stop
}

type countingWriter struct {
	w io.Writer
	p Progress
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.p.Wrote(n)
	return n, err
}

// TopoSort orders infos as store.TopoSort orders their paths: references
// first (references to paths outside infos, or to itself, are ignored).
func TopoSort(infos []*store.PathInfo) ([]*store.PathInfo, error) {
	byPath := make(map[storepath.Path]*store.PathInfo, len(infos))
	paths := make([]storepath.Path, 0, len(infos))
	for _, info := range infos {
		byPath[info.Path] = info
		paths = append(paths, info.Path)
	}
	sorted, err := store.TopoSort(paths, func(p storepath.Path) []storepath.Path { return byPath[p].References })
	if err != nil {
		return nil, err
	}
	out := make([]*store.PathInfo, len(sorted))
	for i, p := range sorted {
		out[i] = byPath[p]
	}
	return out, nil
}

func set(ps []storepath.Path) map[storepath.Path]bool {
	m := make(map[storepath.Path]bool, len(ps))
	for _, p := range ps {
		m[p] = true
	}
	return m
}

func minus(a, b []storepath.Path) []storepath.Path {
	in := set(b)
	var out []storepath.Path
	for _, p := range a {
		if !in[p] {
			out = append(out, p)
		}
	}
	return out
}
