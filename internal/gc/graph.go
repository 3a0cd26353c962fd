package gc

import (
	"context"
	"fmt"

	"ferry/internal/db"
	"ferry/internal/localstore"
	"ferry/nix/storepath"
)

// graph is a snapshot of the valid paths and the edges the collector
// follows: references, derivers and derivation outputs.
type graph struct {
	nodes  map[storepath.Path]*node
	byHash map[string]storepath.Path
}

type node struct {
	refs    []storepath.Path
	deriver storepath.Path   // "" if unknown
	outputs []storepath.Path // a derivation's DerivationOutputs rows
}

// loadGraph reads the whole graph in one read transaction, so it is
// consistent with itself.
func loadGraph(ctx context.Context, s *localstore.Store) (*graph, error) {
	var g *graph
	err := s.DB().Read(ctx, func(tx *db.Tx) error {
		g = &graph{nodes: map[storepath.Path]*node{}, byHash: map[string]storepath.Path{}}
		paths, err := tx.QueryValidPaths()
		if err != nil {
			return err
		}
		for _, p := range paths {
			info, err := tx.QueryPathInfo(p)
			if err != nil {
				return err
			}
			n := &node{refs: info.References, deriver: info.Deriver}
			if p.IsDerivation() {
				id, ok, err := tx.PathID(p)
				if err != nil {
					return err
				}
				if ok {
					outs, err := tx.QueryDerivationOutputs(id)
					if err != nil {
						return err
					}
					for _, o := range outs {
						n.outputs = append(n.outputs, o)
					}
					storepath.Sort(n.outputs)
				}
			}
			g.nodes[p] = n
			g.byHash[p.HashPart()] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read store graph: %w", err)
	}
	return g, nil
}

func (g *graph) valid(p storepath.Path) bool { return g.nodes[p] != nil }

// live is the set of valid paths a collection keeps: the seeds, and
// everything reachable from them through
//   - references;
//   - with keepDerivations, from an output to its deriver, when the
//     deriver is valid and lists the output (Nix's keep-derivations, seen
//     from the other side: gc.cc visits a derivation's outputs whose
//     deriver it is);
//   - with keepOutputs, from a derivation to its valid outputs.
//
// This is the same set Nix 2.8 ends up keeping: its deleteReferrersClosure
// walks the reverse edges from each candidate and keeps it if any root is
// reached.
func (g *graph) live(seeds []storepath.Path, keepDerivations, keepOutputs bool) map[storepath.Path]bool {
	live := map[storepath.Path]bool{}
	var todo []storepath.Path
	push := func(p storepath.Path) {
		if g.valid(p) && !live[p] {
			live[p] = true
			todo = append(todo, p)
		}
	}
	for _, p := range seeds {
		push(p)
	}
	for len(todo) > 0 {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		n := g.nodes[p]
		for _, r := range n.refs {
			push(r)
		}
		if keepDerivations && n.deriver != "" {
			if d := g.nodes[n.deriver]; d != nil && contains(d.outputs, p) {
				push(n.deriver)
			}
		}
		if keepOutputs {
			for _, o := range n.outputs {
				push(o)
			}
		}
	}
	return live
}

func contains(ps []storepath.Path, p storepath.Path) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// referrers inverts the reference edges (self-references dropped).
func (g *graph) referrers() map[storepath.Path][]storepath.Path {
	m := map[storepath.Path][]storepath.Path{}
	for p, n := range g.nodes {
		for _, r := range n.refs {
			if r != p {
				m[r] = append(m[r], p)
			}
		}
	}
	return m
}
