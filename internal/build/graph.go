package build

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"ferry/internal/localstore"
	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/store"
)

// BuildGraph realises the .drv files roots, which must be valid in st, and
// every input derivation they need, in dependency order, running up to
// jobs builds at once (at least 1). A derivation whose outputs are all
// valid is not built and its inputs are not visited. A failed build makes
// every derivation that depends on it DependencyFailed.
//
// The results hold every derivation visited. The error is non-nil only
// when ctx ended, the store failed or a post-build hook failed (a
// *HookError, as Nix's worker stops: no further build starts); builds
// that failed are reported in the results. With more than one job, each log line is prefixed with the
// derivation's name, as Nix does.
func BuildGraph(ctx context.Context, st *localstore.Store, roots []storepath.Path, jobs int, opts *Options) (map[storepath.Path]*store.BuildResult, error) {
	if opts == nil {
		opts = &Options{}
	}
	if jobs < 1 {
		jobs = 1
	}
	g, err := LoadGraph(ctx, st, roots)
	if err != nil {
		return nil, err
	}

	// Kahn's algorithm over the derivations still to build.
	pending := map[storepath.Path]int{}
	var ready []storepath.Path
	for p := range g.Drvs {
		if g.Results[p] != nil {
			continue
		}
		n := 0
		for _, dep := range g.Deps[p] {
			if g.Results[dep] == nil {
				n++
			}
		}
		pending[p] = n
		if n == 0 {
			ready = append(ready, p)
		}
	}
	storepath.Sort(ready)

	type done struct {
		p   storepath.Path
		res *store.BuildResult
		err error
	}
	var logMu sync.Mutex
	work := make(chan storepath.Path)
	finished := make(chan done)
	var wg sync.WaitGroup
	for i := 0; i < jobs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				o := *opts
				if opts.Log != nil && jobs > 1 {
					o.Log = NewPrefixWriter(opts.Log, &logMu, g.Drvs[p].Name+"> ")
				}
				res, err := Build(ctx, st, p, g.Drvs[p], &o)
				if pw, ok := o.Log.(*PrefixWriter); ok {
					pw.Flush()
				}
				finished <- done{p, res, err}
			}
		}()
	}

	var firstErr error
	running := 0
	failed := map[storepath.Path]int{} // failed dependencies per derivation
	var settle func(p storepath.Path, res *store.BuildResult)
	settle = func(p storepath.Path, res *store.BuildResult) {
		g.Results[p] = res
		for _, u := range g.Users[p] {
			if _, waiting := pending[u]; !waiting {
				continue
			}
			if !res.Status.Success() {
				failed[u]++
			}
			pending[u]--
			if pending[u] > 0 {
				continue
			}
			delete(pending, u)
			if failed[u] > 0 {
				settle(u, &store.BuildResult{Status: store.DependencyFailed,
					ErrorMsg: fmt.Sprintf("%d dependencies of derivation '%s' failed to build", failed[u], u)})
				continue
			}
			ready = append(ready, u)
		}
	}
	for _, p := range ready {
		delete(pending, p)
	}
	for len(ready) > 0 || running > 0 {
		var next storepath.Path
		var send chan storepath.Path
		if len(ready) > 0 && firstErr == nil {
			next, send = ready[0], work
		}
		if send == nil && running == 0 {
			break
		}
		select {
		case send <- next:
			ready = ready[1:]
			running++
		case d := <-finished:
			running--
			if d.err != nil && firstErr == nil {
				firstErr = d.err
			}
			before := len(ready)
			settle(d.p, d.res)
			for _, u := range ready[before:] {
				delete(pending, u)
			}
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return g.Results, firstErr
	}
	return g.Results, ctx.Err()
}

// Graph is the derivations a build of some roots visits.
type Graph struct {
	Drvs  map[storepath.Path]*derivation.Derivation
	Deps  map[storepath.Path][]storepath.Path // input derivations still to build or valid
	Users map[storepath.Path][]storepath.Path // reverse of Deps
	// Results holds AlreadyValid for the derivations whose outputs are
	// all valid (their inputs are not visited); BuildGraph adds the rest.
	Results map[storepath.Path]*store.BuildResult
}

// LoadGraph reads the derivations reachable from roots (store paths of
// .drv files valid in st), stopping at those whose outputs are all valid.
// Every derivation read and every valid output is made a temp root first,
// as Nix's DerivationGoal does, so a GC keeps them while the graph builds.
func LoadGraph(ctx context.Context, st *localstore.Store, roots []storepath.Path) (*Graph, error) {
	g := &Graph{
		Drvs:    map[storepath.Path]*derivation.Derivation{},
		Deps:    map[storepath.Path][]storepath.Path{},
		Users:   map[storepath.Path][]storepath.Path{},
		Results: map[storepath.Path]*store.BuildResult{},
	}
	return g, g.load(ctx, st, roots)
}

// load reads the derivations reachable from roots, stopping at those
// whose outputs are all valid (recorded as AlreadyValid).
func (g *Graph) load(ctx context.Context, st *localstore.Store, roots []storepath.Path) error {
	stack := append([]storepath.Path(nil), roots...)
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if _, ok := g.Drvs[p]; ok {
			continue
		}
		// Temp roots before reading and checking, as Nix's
		// DerivationGoal does, so that a GC (an automatic one during an
		// earlier build included) keeps the .drv, its inputs and valid
		// outputs until the graph is done.
		if err := st.AddTempRoot(ctx, p); err != nil {
			return err
		}
		d, err := st.ReadDerivation(ctx, p)
		if err != nil {
			return fmt.Errorf("read derivation '%s': %w", p, err)
		}
		g.Drvs[p] = d
		outs := d.OutputPaths()
		if len(outs) == len(d.Outputs) && len(outs) > 0 {
			paths := make([]storepath.Path, 0, len(outs))
			for _, o := range outs {
				if err := st.AddTempRoot(ctx, o); err != nil {
					return err
				}
				paths = append(paths, o)
			}
			valid, err := st.QueryValidPaths(ctx, paths)
			if err != nil {
				return err
			}
			if len(valid) == len(paths) {
				g.Results[p] = &store.BuildResult{Status: store.AlreadyValid, BuiltOutputs: outs}
				continue
			}
		}
		for dep := range d.InputDrvs {
			g.Deps[p] = append(g.Deps[p], dep)
			g.Users[dep] = append(g.Users[dep], p)
			stack = append(stack, dep)
		}
	}
	return nil
}

// PrefixWriter puts a prefix (a derivation's name) before every line,
// writing whole lines to w under a mutex shared by every writer of w, so
// that concurrent builds' lines do not mix.
type PrefixWriter struct {
	w      io.Writer
	mu     *sync.Mutex
	prefix []byte
	buf    []byte
}

// NewPrefixWriter returns a PrefixWriter on w; mu guards w.
func NewPrefixWriter(w io.Writer, mu *sync.Mutex, prefix string) *PrefixWriter {
	return &PrefixWriter{w: w, mu: mu, prefix: []byte(prefix)}
}

func (pw *PrefixWriter) Write(p []byte) (int, error) {
	pw.buf = append(pw.buf, p...)
	i := bytes.LastIndexByte(pw.buf, '\n')
	if i < 0 {
		if len(pw.buf) < 64<<10 {
			return len(p), nil
		}
		i = len(pw.buf) - 1
	}
	if err := pw.emit(pw.buf[:i+1]); err != nil {
		return 0, err
	}
	pw.buf = append(pw.buf[:0], pw.buf[i+1:]...)
	return len(p), nil
}

func (pw *PrefixWriter) emit(chunk []byte) error {
	var out []byte
	for len(chunk) > 0 {
		line := chunk
		if j := bytes.IndexByte(chunk, '\n'); j >= 0 {
			line = chunk[:j+1]
		}
		out = append(out, pw.prefix...)
		out = append(out, line...)
		chunk = chunk[len(line):]
	}
	pw.mu.Lock()
	defer pw.mu.Unlock()
	_, err := pw.w.Write(out)
	return err
}

// Flush writes a last line that has no newline yet.
func (pw *PrefixWriter) Flush() {
	if len(pw.buf) > 0 {
		pw.emit(append(pw.buf, '\n'))
		pw.buf = pw.buf[:0]
	}
}
