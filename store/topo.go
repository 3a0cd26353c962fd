package store

import (
	"fmt"
	"slices"

	"ferry/nix/storepath"
)

// TopoSort orders paths so that every path comes after the paths of the
// set it refers to: references first, the order of an export stream and
// of registration. refs gives a path's references; those outside the set,
// and self-references, are ignored. A cycle is an error.
//
// The order is Nix 2.8's exactly: topoSortPaths (a depth-first search over
// the set and each path's references in StorePathSet order, by base name)
// reversed, as exportPaths uses it. Its cycle error is Nix's too.
func TopoSort(paths []storepath.Path, refs func(storepath.Path) []storepath.Path) ([]storepath.Path, error) {
	in := make(map[storepath.Path]bool, len(paths))
	for _, p := range paths {
		in[p] = true
	}
	const (
		visiting = 1
		done     = 2
	)
	state := make(map[storepath.Path]int, len(in))
	out := make([]storepath.Path, 0, len(in))
	var visit func(p, parent storepath.Path) error
	visit = func(p, parent storepath.Path) error {
		switch state[p] {
		case visiting:
			return fmt.Errorf("cycle detected in the references of '%s' from '%s'", p, parent)
		case done:
			return nil
		}
		state[p] = visiting
		for _, r := range inSetOrder(refs(p)) {
			if r != p && in[r] {
				if err := visit(r, p); err != nil {
					return err
				}
			}
		}
		state[p] = done
		out = append(out, p)
		return nil
	}
	for _, p := range inSetOrder(paths) {
		if err := visit(p, ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// inSetOrder returns ps in StorePathSet order (by base name), copying them
// only when they are not in that order already.
func inSetOrder(ps []storepath.Path) []storepath.Path {
	less := func(a, b storepath.Path) int {
		switch {
		case a.Base() < b.Base():
			return -1
		case a.Base() > b.Base():
			return 1
		}
		return 0
	}
	if slices.IsSortedFunc(ps, less) {
		return ps
	}
	ps = slices.Clone(ps)
	slices.SortFunc(ps, less)
	return ps
}
