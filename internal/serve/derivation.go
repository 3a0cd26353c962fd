package serve

import (
	"fmt"
	"slices"
	"strings"

	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/nix/wire"
)

// budget bounds the total bytes of a structure made of many strings.
type budget struct {
	r    *wire.Reader
	left int
}

func (b *budget) str(what string) (string, error) {
	s, err := b.r.ReadString(b.left)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", what, wire.NoEOF(err))
	}
	b.left -= len(s)
	return s, nil
}

func (b *budget) count(what string, max uint64) (int, error) {
	n, err := b.r.ReadUint64()
	if err != nil {
		return 0, fmt.Errorf("read %s count: %w", what, wire.NoEOF(err))
	}
	if n > max {
		return 0, fmt.Errorf("read %s: %d entries: %w", what, n, wire.ErrTooLong)
	}
	return int(n), nil
}

// ReadBasicDerivation reads a BasicDerivation (docs/protocol.md §4; Nix
// 2.8's readDerivation in derivations.cc): outputs (name, path, hashAlgo,
// hash), input sources, platform, builder, args and env. The wire form has
// no name and no input derivations: name is the derivation name, taken by
// the caller from the drv path (derivation.NameFromPath). The strings of one
// derivation may total at most MaxDerivationSize bytes.
func ReadBasicDerivation(r *wire.Reader, dir storepath.Dir, name string) (*derivation.Derivation, error) {
	b := &budget{r: r, left: MaxDerivationSize}
	d := &derivation.Derivation{
		Name:      name,
		Outputs:   map[string]derivation.Output{},
		InputDrvs: map[storepath.Path][]string{},
		Env:       map[string]string{},
	}
	n, err := b.count("outputs", MaxOutputs)
	if err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		id, err := b.str("output name")
		if err != nil {
			return nil, err
		}
		p, err := b.str("output path")
		if err != nil {
			return nil, err
		}
		algo, err := b.str("output hash algorithm")
		if err != nil {
			return nil, err
		}
		h, err := b.str("output hash")
		if err != nil {
			return nil, err
		}
		if id == "" {
			return nil, fmt.Errorf("read derivation: empty output name")
		}
		if _, dup := d.Outputs[id]; dup {
			return nil, fmt.Errorf("read derivation: duplicate output %q", id)
		}
		if p != "" {
			if _, err := ParsePath(dir, p); err != nil {
				return nil, fmt.Errorf("read derivation output %q: %w", id, err)
			}
		}
		o, err := derivation.ParseOutput(dir, p, algo, h)
		if err != nil {
			return nil, fmt.Errorf("read derivation output %q: %w", id, err)
		}
		d.Outputs[id] = o
	}
	if d.InputSrcs, err = ReadPathSet(r, dir); err != nil {
		return nil, fmt.Errorf("read derivation inputs: %w", err)
	}
	if d.Platform, err = b.str("platform"); err != nil {
		return nil, err
	}
	if d.Builder, err = b.str("builder"); err != nil {
		return nil, err
	}
	if n, err = b.count("args", MaxDerivationSize/8); err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		a, err := b.str("argument")
		if err != nil {
			return nil, err
		}
		d.Args = append(d.Args, a)
	}
	if n, err = b.count("env", MaxDerivationSize/16); err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		k, err := b.str("env name")
		if err != nil {
			return nil, err
		}
		v, err := b.str("env value")
		if err != nil {
			return nil, err
		}
		d.Env[k] = v // the last value wins, as drv.env[key] = value does in 2.8
	}
	return d, nil
}

// WriteBasicDerivation writes d as a BasicDerivation: outputs and env sorted,
// input sources as a path set, input derivations dropped (a client resolves
// them into input sources first, as build-remote does).
func WriteBasicDerivation(w *wire.Writer, d *derivation.Derivation) error {
	names := d.OutputNames()
	w.WriteUint64(uint64(len(names)))
	for _, id := range names {
		p, algo, h := d.Outputs[id].Fields()
		w.WriteString(id)
		w.WriteString(p)
		w.WriteString(algo)
		w.WriteString(h)
	}
	WritePathSet(w, d.InputSrcs)
	w.WriteString(d.Platform)
	w.WriteString(d.Builder)
	w.WriteStrings(d.Args)
	keys := make([]string, 0, len(d.Env))
	for k := range d.Env {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, strings.Compare)
	w.WriteUint64(uint64(len(keys)))
	for _, k := range keys {
		w.WriteString(k)
		w.WriteString(d.Env[k])
	}
	return stickyErr(w)
}
