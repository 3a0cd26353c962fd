package build

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"

	"ferry/internal/localstore"
	"ferry/internal/storefs"
	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/refscan"
	"ferry/nix/storepath"
	"ferry/store"
)

// outputError is a build whose builder succeeded but whose outputs are
// rejected (Nix's BuildError thrown by registerOutputs: OutputRejected).
type outputError struct{ msg string }

func (e *outputError) Error() string { return e.msg }

func rejectf(format string, a ...any) error { return &outputError{fmt.Sprintf(format, a...)} }

// countWriter counts bytes.
type countWriter struct{ n uint64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += uint64(len(p)); return len(p), nil }

// checkOutputs checks, canonicalises, hashes and scans every output of a
// successful build (Nix's registerOutputs, docs/store.md §8.4) and
// returns their path infos, not yet registered. candidates are the input
// closure; the outputs' own paths are added.
func checkOutputs(ctx context.Context, st *localstore.Store, drvPath storepath.Path, d *derivation.Derivation, outs map[string]storepath.Path, closure []storepath.Path) ([]*store.PathInfo, error) {
	byHash, parts := scanCandidates(closure, outs)
	infos := map[string]*store.PathInfo{}
	for _, name := range d.OutputNames() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		o := d.Outputs[name]
		p := outs[name]
		real := st.RealPath(p)
		fi, err := checkOutputFile(drvPath, name, real)
		if err != nil {
			return nil, err
		}
		info := &store.PathInfo{Path: p, Deriver: drvPath, Ultimate: true}
		// One pass over the NAR: its SHA-256, size and references, plus
		// the fixed-output hash when it is a recursive one of another
		// algorithm.
		narHash := sha256.New()
		var size countWriter
		scan := refscan.NewScanner(parts)
		ws := []io.Writer{narHash, &size, scan}
		fixed := o.Kind() == derivation.CAFixed
		var caHasher interface {
			io.Writer
			Sum([]byte) []byte
		}
		if fixed {
			if o.Method == storepath.Flat {
				if !fi.Mode().IsRegular() || fi.Mode()&0o100 != 0 {
					return nil, rejectf("output path '%s' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)", p)
				}
				h := o.HashAlgo.New()
				f, err := os.Open(real)
				if err != nil {
					return nil, err
				}
				_, err = io.Copy(h, f)
				f.Close()
				if err != nil {
					return nil, fmt.Errorf("hash %s: %w", real, err)
				}
				caHasher = h
			} else {
				h := o.HashAlgo.New()
				ws = append(ws, h)
				caHasher = h
			}
		}
		if err := nar.Dump(io.MultiWriter(ws...), real); err != nil {
			return nil, fmt.Errorf("serialise %s: %w", real, err)
		}
		info.NarHash = hash.FromHasher(hash.SHA256, narHash)
		info.NarSize = size.n
		for _, h := range scan.Found() {
			info.References = append(info.References, byHash[h])
		}
		storepath.Sort(info.References)
		if fixed {
			got, err := hash.New(o.HashAlgo, caHasher.Sum(nil))
			if err != nil {
				return nil, err
			}
			if !got.Equal(o.Hash) {
				return nil, rejectf("hash mismatch in fixed-output derivation '%s':\n  specified: %s\n     got:    %s", drvPath, o.Hash.SRI(), got.SRI())
			}
			if len(info.References) > 0 {
				return nil, rejectf("fixed-output derivations must not reference store paths: '%s' references %d distinct paths, e.g. '%s'", drvPath, len(info.References), info.References[0])
			}
			info.CA = storepath.ContentAddress{Method: o.Method, Hash: got}
		}
		infos[name] = info
	}
	if err := checkReferenceRules(ctx, st, d, outs, infos); err != nil {
		return nil, err
	}
	// A cycle between outputs can't be registered (Nix's topoSort in
	// registerOutputs).
	byPath := map[storepath.Path]*store.PathInfo{}
	var paths []storepath.Path
	for _, info := range infos {
		byPath[info.Path] = info
		paths = append(paths, info.Path)
	}
	sorted, err := store.TopoSort(paths, func(p storepath.Path) []storepath.Path { return byPath[p].References })
	if err != nil {
		return nil, rejectf("cycle detected in the references of the outputs of '%s'", drvPath)
	}
	list := make([]*store.PathInfo, 0, len(sorted))
	for _, p := range sorted {
		list = append(list, byPath[p])
	}
	return list, nil
}

// checkOutputFile checks that the builder made output name at real and
// that no one else could have changed it, then canonicalises it (the
// first steps of Nix's registerOutputs for each output).
func checkOutputFile(drvPath storepath.Path, name, real string) (os.FileInfo, error) {
	fi, err := os.Lstat(real)
	if err != nil {
		return nil, rejectf("builder for '%s' failed to produce output path for output '%s' at '%s'", drvPath, name, real)
	}
	if fi.Mode()&os.ModeSymlink == 0 {
		// Nix's check against a builder leaving a writable output
		// that someone else could change before registration.
		if uid := os.Geteuid(); fi.Mode().Perm()&0o022 != 0 || (uid != 0 && statUID(fi) != uid) {
			return nil, rejectf("suspicious ownership or permission on '%s'; rejecting this build output", real)
		}
	}
	if err := storefs.Canonicalise(real, false); err != nil {
		return nil, err
	}
	return fi, nil
}

// checkReferenceRules enforces allowedReferences, allowedRequisites,
// disallowedReferences and disallowedRequisites (Nix's checkOutputs, for
// derivations without structured attributes: the rules apply to every
// output). Entries are store paths or output names.
func checkReferenceRules(ctx context.Context, st *localstore.Store, d *derivation.Derivation, outs map[string]storepath.Path, infos map[string]*store.PathInfo) error {
	rules := []struct {
		attr      string
		allowed   bool
		requisite bool
	}{
		{"allowedReferences", true, false},
		{"allowedRequisites", true, true},
		{"disallowedReferences", false, false},
		{"disallowedRequisites", false, true},
	}
	byPath := map[storepath.Path]*store.PathInfo{}
	for _, info := range infos {
		byPath[info.Path] = info
	}
	for _, name := range d.OutputNames() {
		info := infos[name]
		var closure []storepath.Path // computed on first use
		for _, r := range rules {
			v, ok := d.Env[r.attr]
			if !ok {
				continue
			}
			spec := map[storepath.Path]bool{}
			for _, e := range strings.Fields(v) {
				if p, ok := outs[e]; ok {
					spec[p] = true
				} else if p, err := st.Dir().Parse(e); err == nil {
					spec[p] = true
				} else {
					return rejectf("derivation contains an illegal reference specifier '%s'", e)
				}
			}
			used := info.References
			if r.requisite {
				if closure == nil {
					c, err := outputClosure(ctx, st, info, byPath)
					if err != nil {
						return err
					}
					closure = c
				}
				used = closure
			}
			var bad []string
			for _, p := range used {
				if p == info.Path && r.allowed {
					continue // self-references are always allowed
				}
				if spec[p] != r.allowed {
					bad = append(bad, string(p))
				}
			}
			if len(bad) > 0 {
				sort.Strings(bad)
				verb := "is not allowed to refer to"
				if r.requisite {
					verb = "is not allowed to have requisites"
				}
				return rejectf("output '%s' %s the following paths:\n  %s", info.Path, verb, strings.Join(bad, "\n  "))
			}
		}
	}
	return nil
}

// outputClosure is the closure of info's references: other outputs of
// this build through their fresh infos, everything else through the store.
func outputClosure(ctx context.Context, st *localstore.Store, info *store.PathInfo, outs map[storepath.Path]*store.PathInfo) ([]storepath.Path, error) {
	var inStore []storepath.Path
	fresh, err := store.WalkClosure([]storepath.Path{info.Path}, func(p storepath.Path) ([]storepath.Path, error) {
		if o, ok := outs[p]; ok {
			return o.References, nil
		}
		inStore = append(inStore, p)
		return nil, nil
	})
	if err != nil || len(inStore) == 0 {
		return fresh, err
	}
	old, err := st.QueryClosure(ctx, inStore, false)
	if err != nil {
		return nil, err
	}
	out := append(fresh, old...)
	storepath.Sort(out)
	return slices.Compact(out), nil
}

// scanCandidates indexes the paths an output may refer to (the input
// closure and the outputs' own paths) by hash part, for the reference
// scan, and lists the hash parts.
func scanCandidates(closure []storepath.Path, outs map[string]storepath.Path) (map[string]storepath.Path, []string) {
	byHash := map[string]storepath.Path{}
	for _, p := range closure {
		byHash[p.HashPart()] = p
	}
	for _, p := range outs {
		byHash[p.HashPart()] = p
	}
	parts := make([]string, 0, len(byHash))
	for h := range byHash {
		parts = append(parts, h)
	}
	return byHash, parts
}

// sign adds to each built output's info the signatures of the
// secret-key-files keys, as Nix's registerOutputs does with
// LocalStore::signPathInfo (src/libstore/build/local-derivation-goal.cc,
// src/libstore/local-store.cc@2.8.0): a key file that cannot be read
// fails the build.
func (b *builder) sign(infos []*store.PathInfo) error {
	if len(b.s.SecretKeyFiles) == 0 {
		return nil
	}
	keys, err := b.s.SecretKeys()
	if err != nil {
		return fmt.Errorf("sign the outputs of '%s': %w", b.drvPath, err)
	}
	for _, info := range infos {
		for _, k := range keys {
			sig, err := k.SignPath(info.Path, info.NarHash, info.NarSize, info.References)
			if err != nil {
				return fmt.Errorf("sign '%s': %w", info.Path, err)
			}
			info.Sigs = append(info.Sigs, sig)
		}
	}
	return nil
}

// signRealisation adds the secret-key-files keys' signatures to r, as
// LocalDerivationGoal::signRealisation does for realisations of local
// builds and of resolved derivations (not of those a build hook
// registers).
func (b *builder) signRealisation(r *derivation.Realisation) error {
	if len(b.s.SecretKeyFiles) == 0 {
		return nil
	}
	keys, err := b.s.SecretKeys()
	if err != nil {
		return fmt.Errorf("sign the realisations of '%s': %w", b.drvPath, err)
	}
	fp, err := r.Fingerprint()
	if err != nil {
		return err
	}
	for _, k := range keys {
		r.Signatures = append(r.Signatures, k.Sign(fp))
	}
	return nil
}
