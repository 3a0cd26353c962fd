package store

import (
	"context"
	"fmt"
	"io"

	"ferry/nix/derivation"
	"ferry/nix/nar"
	"ferry/nix/storepath"
)

// WalkClosure returns every path reachable from paths through next, paths
// included, in StorePathSet order (by base name): the walk of Nix's
// computeFSClosure, with its edges given by next (a path's references,
// and whatever else the caller follows). next is called once for each
// path reached; an error from it ends the walk.
func WalkClosure(paths []storepath.Path, next func(storepath.Path) ([]storepath.Path, error)) ([]storepath.Path, error) {
	seen := make(map[storepath.Path]bool, len(paths))
	todo := append([]storepath.Path(nil), paths...)
	out := make([]storepath.Path, 0, len(paths))
	for len(todo) > 0 {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, p)
		more, err := next(p)
		if err != nil {
			return nil, err
		}
		for _, q := range more {
			if !seen[q] {
				todo = append(todo, q)
			}
		}
	}
	storepath.Sort(out)
	return out, nil
}

// Closure computes the closure of paths in any store from its path infos,
// as Nix's computeFSClosure(paths, flipDirection=false, includeOutputs):
// everything reachable through references, paths included, and with
// includeOutputs, the valid outputs of every derivation reached, with
// their closures. A derivation's outputs are those its .drv file names,
// read through its NAR (Store's queryPartialDerivationOutputMap; a store
// with a database of them computes closures itself). An invalid path
// among paths is an error wrapping ErrNotValid.
func Closure(ctx context.Context, st Store, paths []storepath.Path, includeOutputs bool) ([]storepath.Path, error) {
	return WalkClosure(paths, func(p storepath.Path) ([]storepath.Path, error) {
		info, err := st.QueryPathInfo(ctx, p)
		if err != nil {
			return nil, err
		}
		if !includeOutputs || !p.IsDerivation() {
			return info.References, nil
		}
		outs, err := derivationOutputs(ctx, st, p)
		if err != nil {
			return nil, err
		}
		valid, err := st.QueryValidPaths(ctx, outs)
		if err != nil {
			return nil, err
		}
		return append(append([]storepath.Path(nil), info.References...), valid...), nil
	})
}

// derivationOutputs returns the output paths the .drv file drv names.
func derivationOutputs(ctx context.Context, st Store, drv storepath.Path) ([]storepath.Path, error) {
	d, err := readDerivation(ctx, st, drv)
	if err != nil {
		return nil, err
	}
	outs := make([]storepath.Path, 0, len(d.Outputs))
	for _, o := range d.OutputPaths() {
		outs = append(outs, o)
	}
	storepath.Sort(outs)
	return outs, nil
}

// readDerivation reads the .drv file p out of st through its NAR, which
// must be a single regular file.
func readDerivation(ctx context.Context, st Store, p storepath.Path) (*derivation.Derivation, error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(st.NarFromPath(ctx, p, pw)) }()
	defer pr.Close()
	nr := nar.NewReader(pr)
	h, err := nr.Next()
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", p, err)
	}
	if h.Type != nar.TypeRegular || h.Size > derivation.MaxSize {
		return nil, fmt.Errorf("read derivation %s: not a regular file of at most %d bytes", p, derivation.MaxSize)
	}
	data, err := io.ReadAll(nr)
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", p, err)
	}
	name, err := derivation.NameFromPath(p)
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", p, err)
	}
	d, err := derivation.ParseIn(st.Dir(), data, name)
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", p, err)
	}
	return d, nil
}
