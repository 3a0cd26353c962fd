package derivation

import (
	"errors"
	"fmt"
	"sync"

	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// Resolver returns the input derivation stored at drvPath. A store reads
// and parses the .drv file; an in-memory graph looks it up.
type Resolver func(drvPath storepath.Path) (*Derivation, error)

// DrvHash is the result of hashDerivationModulo: one hash per output, and
// whether the derivation (or one of its inputs) is deferred, i.e. its
// output paths cannot be known before building (Nix's DrvHash).
type DrvHash struct {
	Hashes   map[string]hash.Hash
	Deferred bool
}

// Memo caches the modulo hashes of input derivations by .drv path, so that
// a graph is hashed once per derivation (Nix's global drvHashes). The zero
// Memo is ready to use; a Memo is safe for concurrent use. Cached results
// are shared: callers must not modify them.
type Memo struct {
	mu sync.Mutex
	m  map[storepath.Path]DrvHash // guarded by mu
}

func (m *Memo) get(p storepath.Path) (DrvHash, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.m[p]
	return h, ok
}

func (m *Memo) put(p storepath.Path, h DrvHash) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[storepath.Path]DrvHash{}
	}
	m.m[p] = h
}

// impureOutputHash is the placeholder hash of impure outputs.
var impureOutputHash = hash.SumString(hash.SHA256, "impure")

// HashModulo is Nix's hashDerivationModulo (derivations.cc): for a fixed
// output derivation the hash of its fixed output, otherwise the SHA-256 of
// its ATerm with every input derivation replaced by the base16 of its own
// modulo hash (computed unmasked, recursively, via resolve) and, with
// maskOutputs, output paths and output env vars blanked. The same hash is
// returned for every output. memo may be nil.
func HashModulo(d *Derivation, maskOutputs bool, resolve Resolver, memo *Memo) (DrvHash, error) {
	if memo == nil {
		memo = &Memo{}
	}
	h := &hasher{resolve: resolve, memo: memo, active: map[storepath.Path]bool{}}
	return h.hash(d, maskOutputs)
}

type hasher struct {
	resolve Resolver
	memo    *Memo
	active  map[storepath.Path]bool // derivations being hashed, to catch cycles
}

func (h *hasher) hash(d *Derivation, mask bool) (DrvHash, error) {
	s, r, err := h.moduloString(d, mask)
	if err != nil || s == nil {
		return r, err
	}
	sum := hash.Sum(hash.SHA256, s)
	r.Hashes = make(map[string]hash.Hash, len(d.Outputs))
	for id := range d.Outputs {
		r.Hashes[id] = sum
	}
	return r, nil
}

// moduloString returns the string whose hash is the modulo hash, or nil
// with the final result for fixed and impure derivations.
func (h *hasher) moduloString(d *Derivation, mask bool) ([]byte, DrvHash, error) {
	t, err := d.Type()
	if err != nil {
		return nil, DrvHash{}, fmt.Errorf("hash derivation %q: %w", d.Name, err)
	}
	switch t {
	case TypeFixed:
		o := d.Outputs["out"]
		if o.Path == "" {
			return nil, DrvHash{}, fmt.Errorf("hash derivation %q: fixed output path unknown (call FillOutputPaths)", d.Name)
		}
		s := "fixed:out:" + o.MethodAlgo() + ":" + o.Hash.Hex() + ":" + string(o.Path)
		return nil, DrvHash{Hashes: map[string]hash.Hash{"out": hash.SumString(hash.SHA256, s)}}, nil
	case TypeImpure:
		r := DrvHash{Hashes: map[string]hash.Hash{}, Deferred: true}
		for id := range d.Outputs {
			r.Hashes[id] = impureOutputHash
		}
		return nil, r, nil
	}
	r := DrvHash{Deferred: t == TypeFloating}
	inputs := make(map[string][]string, len(d.InputDrvs))
	for p, outs := range d.InputDrvs {
		ir, err := h.input(p)
		if err != nil {
			return nil, DrvHash{}, err
		}
		if ir.Deferred {
			r.Deferred = true
		}
		for _, o := range outs {
			ih, ok := ir.Hashes[o]
			if !ok {
				return nil, DrvHash{}, fmt.Errorf("hash derivation %q: no hash for output '%s' of derivation '%s'", d.Name, o, p)
			}
			k := ih.Hex()
			inputs[k] = append(inputs[k], o)
		}
	}
	return d.unparse(mask, inputs), r, nil
}

// input is pathDerivationModulo: the memoised unmasked hash of an input.
func (h *hasher) input(p storepath.Path) (DrvHash, error) {
	if r, ok := h.memo.get(p); ok {
		return r, nil
	}
	if h.active[p] {
		return DrvHash{}, fmt.Errorf("hash derivation %s: cycle in input derivations", p)
	}
	if h.resolve == nil {
		return DrvHash{}, fmt.Errorf("hash derivation %s: no resolver for input derivations", p)
	}
	in, err := h.resolve(p)
	if err != nil {
		return DrvHash{}, fmt.Errorf("hash derivation %s: %w", p, err)
	}
	if in == nil {
		return DrvHash{}, fmt.Errorf("hash derivation %s: resolver returned no derivation", p)
	}
	h.active[p] = true
	r, err := h.hash(in, false)
	delete(h.active, p)
	if err != nil {
		return DrvHash{}, err
	}
	h.memo.put(p, r)
	return r, nil
}

// ModuloATerm returns the string hashDerivationModulo hashes for d (with
// the inputs replaced and, with maskOutputs, outputs blanked), or nil for
// fixed-output and impure derivations, which are not hashed that way.
// It is meant for debugging hash mismatches.
func ModuloATerm(d *Derivation, maskOutputs bool, resolve Resolver, memo *Memo) ([]byte, error) {
	if memo == nil {
		memo = &Memo{}
	}
	h := &hasher{resolve: resolve, memo: memo, active: map[storepath.Path]bool{}}
	s, _, err := h.moduloString(d, maskOutputs)
	return s, err
}

// FillOutputPaths computes and sets the output paths and output env vars
// of d in dir, as derivationStrict (primops.cc) does once it has built the
// environment:
//
//   - fixed output: the path from its hash; env "out" = that path;
//   - floating or impure outputs: no path; env[o] = HashPlaceholder(o);
//   - otherwise every output becomes Deferred with env[o] = "", then, unless
//     an input is deferred, gets the input-addressed path
//     makeOutputPath(o, hashDerivationModulo(d, masked), Name), and env[o]
//     is set to it.
//
// Existing input-addressed paths are recomputed, so a parsed derivation
// whose outputs were blanked comes back unchanged.
func (d *Derivation) FillOutputPaths(dir storepath.Dir, resolve Resolver, memo *Memo) error {
	if d.Name == "" {
		return errors.New("fill output paths: derivation has no name")
	}
	t, err := d.Type()
	if err != nil {
		return fmt.Errorf("fill output paths of %q: %w", d.Name, err)
	}
	if d.Env == nil {
		d.Env = map[string]string{}
	}
	switch t {
	case TypeFixed:
		o := d.Outputs["out"]
		p, err := o.fixedPath(dir, d.Name, "out")
		if err != nil {
			return fmt.Errorf("fill output paths of %q: %w", d.Name, err)
		}
		o.Path = p
		d.Outputs["out"] = o
		d.Env["out"] = string(p)
		return nil
	case TypeFloating, TypeImpure:
		for id := range d.Outputs {
			d.Env[id] = storepath.HashPlaceholder(id)
		}
		return nil
	}
	for id := range d.Outputs {
		d.Outputs[id] = Output{}
		d.Env[id] = ""
	}
	r, err := HashModulo(d, true, resolve, memo)
	if err != nil {
		return fmt.Errorf("fill output paths of %q: %w", d.Name, err)
	}
	if r.Deferred {
		return nil
	}
	for id := range d.Outputs {
		p, err := dir.MakeOutput(id, r.Hashes[id], d.Name)
		if err != nil {
			return fmt.Errorf("fill output paths of %q: %w", d.Name, err)
		}
		d.Outputs[id] = Output{Path: p}
		d.Env[id] = string(p)
	}
	return nil
}

// CheckOutputPaths verifies that the output paths and output env vars of
// d are the ones Nix computes, as LocalStore::checkDerivationOutputs does
// before registering a .drv: input-addressed paths must equal
// makeOutputPath over the masked modulo hash, and the env var of every
// input-addressed or fixed output must hold its path. Floating, deferred
// and impure outputs are not checked.
func (d *Derivation) CheckOutputPaths(dir storepath.Dir, resolve Resolver, memo *Memo) error {
	if _, err := d.Type(); err != nil {
		return fmt.Errorf("check derivation %q: %w", d.Name, err)
	}
	envHas := func(p storepath.Path, id string) error {
		v, ok := d.Env[id]
		if !ok || v != string(p) {
			return fmt.Errorf("derivation %q has incorrect environment variable '%s', should be '%s'", d.Name, id, p)
		}
		return nil
	}
	var modulo *DrvHash
	for _, id := range sortedKeys(d.Outputs) {
		o := d.Outputs[id]
		switch o.Kind() {
		case InputAddressed:
			if modulo == nil {
				r, err := HashModulo(d, true, resolve, memo)
				if err != nil {
					return fmt.Errorf("check derivation %q: %w", d.Name, err)
				}
				if r.Deferred {
					return fmt.Errorf("check derivation %q: input-addressed outputs depend on a deferred input", d.Name)
				}
				modulo = &r
			}
			want, err := dir.MakeOutput(id, modulo.Hashes[id], d.Name)
			if err != nil {
				return fmt.Errorf("check derivation %q: %w", d.Name, err)
			}
			if o.Path != want {
				return fmt.Errorf("derivation %q has incorrect output '%s', should be '%s'", d.Name, o.Path, want)
			}
			if err := envHas(want, id); err != nil {
				return err
			}
		case CAFixed:
			want, err := o.fixedPath(dir, d.Name, id)
			if err != nil {
				return fmt.Errorf("check derivation %q: %w", d.Name, err)
			}
			if o.Path != "" && o.Path != want {
				return fmt.Errorf("derivation %q has incorrect output '%s', should be '%s'", d.Name, o.Path, want)
			}
			if err := envHas(want, id); err != nil {
				return err
			}
		}
	}
	return nil
}

// MapResolver returns a Resolver over an in-memory set of derivations.
func MapResolver(m map[storepath.Path]*Derivation) Resolver {
	return func(p storepath.Path) (*Derivation, error) {
		d, ok := m[p]
		if !ok {
			return nil, fmt.Errorf("derivation %s: %w", p, ErrNotFound)
		}
		return d, nil
	}
}

// ErrNotFound is returned by MapResolver for an unknown derivation.
var ErrNotFound = errors.New("not found")
