package build

import (
	"context"
	"fmt"

	"ferry/internal/localstore"
	"ferry/internal/settings"
	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// The bookkeeping of content-addressed derivations for builds done
// elsewhere (ferry build --builders, internal/remote): the same steps a
// local Build takes around its builder (ca.go), so that a derivation built
// on a build machine leaves the local store with the realisations a local
// build would have left, as Nix 2.8's DerivationGoal (resolving, then
// resolvedFinished) and build-remote (registerDrvOutput of the
// builtOutputs) do (src/libstore/build/derivation-goal.cc@2.8.0,
// src/build-remote/build-remote.cc@2.8.0).

// HasKnownOutputPaths is Nix's DerivationType::hasKnownOutputPaths
// (src/libstore/derivations.cc@2.8.0): false for floating
// content-addressed, deferred and impure derivations.
func HasKnownOutputPaths(t derivation.Type) bool {
	return t == derivation.TypeInputAddressed || t == derivation.TypeFixed
}

// NeedsResolve says whether d must be resolved before it is built (Nix
// 2.8's DerivationGoal::inputsRealised): a floating or deferred
// derivation with input derivations.
func NeedsResolve(d *derivation.Derivation) bool { return needsResolve(d) }

// StoreFeatures is the system features of the store st for placing
// builds: the store's own (system-features= on its URI) if it sets them,
// else Nix's StoreConfig::getDefaultSystemFeatures
// (src/libstore/store-api.cc@2.8.0): system-features of s, plus
// "ca-derivations" and "recursive-nix" when those experimental features
// are on. Nil s means settings.Default().
func StoreFeatures(st *localstore.Store, s *settings.Settings) []string {
	if s == nil {
		s = settings.Default()
	}
	if f := st.SystemFeatures(); f != nil {
		return append([]string(nil), f...)
	}
	fs := append([]string(nil), s.SystemFeatures...)
	has := func(f string) bool {
		for _, g := range fs {
			if g == f {
				return true
			}
		}
		return false
	}
	for _, xp := range []string{settings.CADerivations, "recursive-nix"} {
		if s.Enabled(xp) && !has(xp) {
			fs = append(fs, xp)
		}
	}
	return fs
}

// Realiser keeps the realisations of one derivation, drvPath (a .drv
// valid in st), in st.
type Realiser struct{ b *builder }

// NewRealiser returns the Realiser of d at drvPath in st with the
// settings s (nil: settings.Default()), whose experimental-features
// decide whether realisations are kept at all (ca-derivations).
func NewRealiser(st *localstore.Store, s *settings.Settings, drvPath storepath.Path, d *derivation.Derivation) *Realiser {
	if s == nil {
		s = settings.Default()
	}
	return &Realiser{b: &builder{st: st, drvPath: drvPath, drv: d, opts: &Options{}, s: s}}
}

// OutputHashes is Nix's staticOutputHashes of the derivation: the hash
// that keys each output's realisation (docs/store.md §4.6).
func (r *Realiser) OutputHashes(ctx context.Context) (map[string]hash.Hash, error) {
	return r.b.outputHashes(ctx)
}

// Realised returns the outputs of the derivation by their realisations
// when every output has one whose path is valid (made a temp root), as
// Nix's checkPathValidity does with ca-derivations; nil otherwise, or
// when ca-derivations is off.
func (r *Realiser) Realised(ctx context.Context) (map[string]storepath.Path, error) {
	if !r.b.caEnabled() {
		return nil, nil
	}
	hashes, err := r.b.outputHashes(ctx)
	if err != nil {
		return nil, err
	}
	return r.b.realised(ctx, hashes)
}

// Resolve replaces the derivation's input derivations by their outputs
// (their realisations, OutputsOf), writes the resolved derivation to the
// store, as Nix's inputsRealised does, and returns it and its path, both
// temp roots. A non-empty msg is why it cannot be resolved (an input
// missing), to report as a failed build.
func (r *Realiser) Resolve(ctx context.Context) (rPath storepath.Path, rd *derivation.Derivation, msg string, err error) {
	if err := r.b.st.AddTempRoot(ctx, r.b.drvPath); err != nil {
		return "", nil, "", err
	}
	rPath, rd, _, msg, err = r.b.resolve(ctx)
	return rPath, rd, msg, err
}

// RegisterBuilt records the realisations of the derivation's outputs,
// built elsewhere and now valid in the store at outs: for a floating
// derivation those the build machine reported (build-remote's
// registerDrvOutput of result.builtOutputs), for an input-addressed or
// fixed-output one the realisations of its static outputs, as Nix's
// checkPathValidity registers them after a hook build. Nothing without
// ca-derivations.
func (r *Realiser) RegisterBuilt(ctx context.Context, outs map[string]storepath.Path) error {
	if !r.b.caEnabled() {
		return nil
	}
	t, err := r.b.drv.Type()
	if err != nil {
		return err
	}
	if HasKnownOutputPaths(t) {
		return r.b.staticRealisations(ctx, r.b.drv.OutputPaths(), false)
	}
	for _, name := range r.b.drv.OutputNames() {
		if _, ok := outs[name]; !ok {
			return fmt.Errorf("derivation '%s': output '%s' was not built", r.b.drvPath, name)
		}
	}
	hashes, err := r.b.outputHashes(ctx)
	if err != nil {
		return err
	}
	return r.b.registerRealisations(ctx, hashes, outs, nil, false)
}

// RegisterResolved records the realisations of the derivation's outputs
// after its resolved derivation was built with outputs outs: Nix's
// resolvedFinished, with the realisations of the inputs each output
// refers to as dependent realisations.
func (r *Realiser) RegisterResolved(ctx context.Context, outs map[string]storepath.Path) error {
	if !r.b.caEnabled() {
		return nil
	}
	hashes, err := r.b.outputHashes(ctx)
	if err != nil {
		return err
	}
	msg, err := r.b.registerResolved(ctx, hashes, outs)
	if err == nil && msg != "" {
		err = fmt.Errorf("%s", msg)
	}
	return err
}

// OutputsOf is Nix's queryPartialDerivationOutputMap for the valid .drv
// drvPath in st: the outputs recorded for it, overridden with
// ca-derivations (in s) by the realisations of its outputs.
func OutputsOf(ctx context.Context, st *localstore.Store, s *settings.Settings, drvPath storepath.Path) (map[string]storepath.Path, error) {
	if s == nil {
		s = settings.Default()
	}
	b := &builder{st: st, drvPath: drvPath, opts: &Options{}, s: s}
	return b.outputsOf(ctx, drvPath)
}
