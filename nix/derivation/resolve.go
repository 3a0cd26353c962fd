package derivation

import (
	"fmt"
	"sort"
	"strings"

	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// DownstreamPlaceholder is the string that stands for output of the input
// derivation drvPath in a derivation that depends on a content-addressed
// one (Nix's downstreamPlaceholder, src/libstore/derivations.cc@2.8.0):
// "/" + nix32(SHA-256("nix-upstream-output:" + hashPart + ":" +
// outputPathName(drvName, output))).
func DownstreamPlaceholder(drvPath storepath.Path, output string) string {
	drvName := strings.TrimSuffix(drvPath.Name(), ".drv")
	s := "nix-upstream-output:" + drvPath.HashPart() + ":" + storepath.OutputPathName(drvName, output)
	return "/" + hash.SumString(hash.SHA256, s).Encode(hash.Nix32, false)
}

// OutputLookup returns the realised path of output of the input
// derivation drvPath, and false when it is not known.
type OutputLookup func(drvPath storepath.Path, output string) (storepath.Path, bool)

// Resolve returns the derivation d with its input derivations replaced by
// their realised outputs (Nix 2.8's Derivation::tryResolve followed by
// rewriteDerivation): every used output becomes an input source, its
// downstream placeholder is replaced by its path in the builder, the
// arguments and the environment (names and values), and deferred outputs
// get their input-addressed paths, computed from the resolved derivation.
// The result has no input derivations. An output that lookup doesn't know
// is an error naming it.
func (d *Derivation) Resolve(dir storepath.Dir, lookup OutputLookup) (*Derivation, error) {
	r := d.Clone()
	r.InputDrvs = map[storepath.Path][]string{}
	srcs := map[storepath.Path]bool{}
	for _, p := range d.InputSrcs {
		srcs[p] = true
	}
	rewrites := map[string]string{}
	drvs := make([]storepath.Path, 0, len(d.InputDrvs))
	for p := range d.InputDrvs {
		drvs = append(drvs, p)
	}
	storepath.Sort(drvs)
	for _, dp := range drvs {
		for _, o := range d.InputDrvs[dp] {
			p, ok := lookup(dp, o)
			if !ok {
				return nil, fmt.Errorf("output '%s' of input '%s' missing, aborting the resolving", o, dp)
			}
			rewrites[DownstreamPlaceholder(dp, o)] = string(p)
			srcs[p] = true
		}
	}
	r.InputSrcs = r.InputSrcs[:0]
	for p := range srcs {
		r.InputSrcs = append(r.InputSrcs, p)
	}
	storepath.Sort(r.InputSrcs)

	// rewriteStrings applies the rewrites in the order of their keys.
	keys := make([]string, 0, len(rewrites))
	for k := range rewrites {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	rewrite := func(s string) string {
		for _, k := range keys {
			s = strings.ReplaceAll(s, k, rewrites[k])
		}
		return s
	}
	r.Builder = rewrite(r.Builder)
	for i, a := range r.Args {
		r.Args[i] = rewrite(a)
	}
	env := make(map[string]string, len(r.Env))
	for _, k := range sortedKeys(r.Env) {
		nk := rewrite(k)
		if _, dup := env[nk]; !dup {
			env[nk] = rewrite(r.Env[k])
		}
	}
	r.Env = env

	var deferred []string
	for _, id := range r.OutputNames() {
		if r.Outputs[id].Kind() == Deferred {
			deferred = append(deferred, id)
		}
	}
	if len(deferred) > 0 {
		h, err := HashModulo(r, true, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("resolve %q: %w", d.Name, err)
		}
		for _, id := range deferred {
			p, err := dir.MakeOutput(id, h.Hashes[id], r.Name)
			if err != nil {
				return nil, fmt.Errorf("resolve %q: %w", d.Name, err)
			}
			r.Env[id] = string(p)
			r.Outputs[id] = Output{Path: p}
		}
	}
	return r, nil
}
