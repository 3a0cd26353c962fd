package build

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"ferry/internal/localstore"
	"ferry/internal/lock"
	"ferry/internal/settings"
	"ferry/internal/storefs"
	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/refscan"
	"ferry/nix/rewrite"
	"ferry/nix/storepath"
	"ferry/store"
)

// Floating content-addressed derivations (experimental feature
// ca-derivations; docs/store.md §2.6, §4.6 and §8.6). Their outputs have a
// hash algorithm but neither hash nor path: the builder writes each one at
// a scratch path, and the output's path is computed afterwards from its
// content, as LocalDerivationGoal::registerOutputs
// (src/libstore/build/local-derivation-goal.cc@2.8.0) does.

// scratchPath is Nix 2.8's makeFallbackPath for an output whose path is
// not known: makeStorePath("rewrite:<drv base name>:name:<output>", an
// all-zero SHA-256, outputPathName(drvName, output)).
func scratchPath(dir storepath.Dir, drvPath storepath.Path, drvName, output string) (storepath.Path, error) {
	zero, err := hash.New(hash.SHA256, make([]byte, sha256.Size))
	if err != nil {
		return "", err
	}
	return dir.Make("rewrite:"+drvPath.Base()+":name:"+output, zero, storepath.OutputPathName(drvName, output))
}

// caEnabled reports whether ca-derivations is on for this build.
func (b *builder) caEnabled() bool { return b.s.Enabled(settings.CADerivations) }

// storeResolver reads input derivations from st, for hashDerivationModulo.
func storeResolver(ctx context.Context, st *localstore.Store) derivation.Resolver {
	return func(p storepath.Path) (*derivation.Derivation, error) { return st.ReadDerivation(ctx, p) }
}

// outputHashes is Nix's staticOutputHashes: the masked
// hashDerivationModulo of the derivation, per output, the hash that keys
// its realisations (docs/store.md §4.6).
func (b *builder) outputHashes(ctx context.Context) (map[string]hash.Hash, error) {
	h, err := derivation.HashModulo(b.drv, true, storeResolver(ctx, b.st), nil)
	if err != nil {
		return nil, fmt.Errorf("derivation '%s': %w", b.drvPath, err)
	}
	return h.Hashes, nil
}

// realised returns the outputs of the derivation by their realisations
// when every output has one whose path is valid (Nix's checkPathValidity
// with ca-derivations), and nil otherwise.
func (b *builder) realised(ctx context.Context, hashes map[string]hash.Hash) (map[string]storepath.Path, error) {
	if !b.caEnabled() {
		return nil, nil
	}
	if err := b.st.EnableCADerivations(ctx); err != nil {
		return nil, err
	}
	outs := map[string]storepath.Path{}
	for _, name := range b.drv.OutputNames() {
		r, err := b.st.QueryRealisation(ctx, derivation.DrvOutput{DrvHash: hashes[name], Output: name})
		if err != nil || r == nil {
			return nil, err
		}
		if err := b.st.AddTempRoot(ctx, r.OutPath); err != nil {
			return nil, err
		}
		if ok, err := b.st.IsValidPath(ctx, r.OutPath); err != nil || !ok {
			return nil, err
		}
		outs[name] = r.OutPath
	}
	return outs, nil
}

// registerRealisations records a realisation for each output of outs, in
// the order of the output names, when ca-derivations is on: Nix 2.8 does
// it after every successful build of a pure derivation, input-addressed
// ones included (the end of registerOutputs), and for valid
// input-addressed outputs that have none (checkPathValidity). An existing
// realisation with the same path is kept.
func (b *builder) registerRealisations(ctx context.Context, hashes map[string]hash.Hash, outs map[string]storepath.Path, dependent map[string]map[derivation.DrvOutput]storepath.Path, sign bool) error {
	if !b.caEnabled() {
		return nil
	}
	if err := b.st.EnableCADerivations(ctx); err != nil {
		return err
	}
	names := make([]string, 0, len(outs))
	for name := range outs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		h, ok := hashes[name]
		if !ok {
			return fmt.Errorf("derivation '%s' has no hash for output '%s'", b.drvPath, name)
		}
		r := &derivation.Realisation{ID: derivation.DrvOutput{DrvHash: h, Output: name}, OutPath: outs[name], Dependent: dependent[name]}
		if sign {
			if err := b.signRealisation(r); err != nil {
				return err
			}
		}
		if err := b.st.RegisterRealisation(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// staticRealisations registers the realisations of the valid outputs of
// an input-addressed or fixed-output derivation that has none, as Nix's
// checkPathValidity does when ca-derivations is on.
func (b *builder) staticRealisations(ctx context.Context, outs map[string]storepath.Path, sign bool) error {
	if !b.caEnabled() {
		return nil
	}
	hashes, err := b.outputHashes(ctx)
	if err != nil {
		return err
	}
	return b.registerRealisations(ctx, hashes, outs, nil, sign)
}

// staticRealisation registers and returns the realisation id of d, an
// input derivation with known output paths whose output is valid; nil
// when d's outputs are not known in advance or that output is not valid.
func (b *builder) staticRealisation(ctx context.Context, d *derivation.Derivation, id derivation.DrvOutput) (*derivation.Realisation, error) {
	t, err := d.Type()
	if err != nil || !HasKnownOutputPaths(t) {
		return nil, nil
	}
	p, ok := d.OutputPaths()[id.Output]
	if !ok || p == "" {
		return nil, nil
	}
	if err := b.st.AddTempRoot(ctx, p); err != nil {
		return nil, err
	}
	if valid, err := b.st.QueryValidPaths(ctx, []storepath.Path{p}); err != nil || len(valid) == 0 {
		return nil, err
	}
	r := &derivation.Realisation{ID: id, OutPath: p}
	if err := b.st.RegisterRealisation(ctx, r); err != nil {
		return nil, err
	}
	return r, nil
}

// needsResolve says whether d must be resolved before it is built (Nix
// 2.8's DerivationGoal::inputsRealised): a floating or deferred
// derivation with input derivations.
func needsResolve(d *derivation.Derivation) bool {
	t, err := d.Type()
	return err == nil && (t == derivation.TypeFloating || t == derivation.TypeDeferred) && len(d.InputDrvs) > 0
}

// outputsOf is Nix's queryPartialDerivationOutputMap for the valid .drv
// drvPath: the outputs recorded in DerivationOutputs, overridden with
// ca-derivations by the realisations of its outputs.
func (b *builder) outputsOf(ctx context.Context, drvPath storepath.Path) (map[string]storepath.Path, error) {
	outs, err := b.st.QueryDerivationOutputs(ctx, drvPath)
	if err != nil {
		return nil, err
	}
	if !b.caEnabled() {
		return outs, nil
	}
	if err := b.st.EnableCADerivations(ctx); err != nil {
		return nil, err
	}
	d, err := b.st.ReadDerivation(ctx, drvPath)
	if err != nil {
		return nil, err
	}
	h, err := derivation.HashModulo(d, true, storeResolver(ctx, b.st), nil)
	if err != nil {
		return nil, err
	}
	for _, name := range d.OutputNames() {
		r, err := b.st.QueryRealisation(ctx, derivation.DrvOutput{DrvHash: h.Hashes[name], Output: name})
		if err != nil {
			return nil, err
		}
		if r != nil {
			outs[name] = r.OutPath
		}
	}
	return outs, nil
}

// runResolved builds a derivation that must be resolved first (Nix's
// DerivationGoal::inputsRealised and resolvedFinished): if every output
// already has a valid realisation it is AlreadyValid; otherwise its input
// derivations are replaced by their outputs (derivation.Resolve), the
// resolved derivation is written to the store and built as a derivation
// of its own, and each output is then also realised under the original
// derivation's hash, with the realisations of the inputs it refers to as
// dependent realisations. A resolved derivation that was valid already
// gives ResolvesToAlreadyValid.
func (b *builder) runResolved(ctx context.Context, res *store.BuildResult) (store.BuildStatus, string, error) {
	if err := b.st.AddTempRoot(ctx, b.drvPath); err != nil {
		return 0, "", err
	}
	hashes, status, msg, err := b.alreadyRealised(ctx, res)
	if err != nil || status != 0 {
		return status, msg, err
	}
	rPath, rd, status, msg, err := b.resolve(ctx)
	if err != nil || msg != "" {
		return status, msg, err
	}
	if b.opts.Log != nil {
		fmt.Fprintf(b.opts.Log, "resolved derivation: '%s' -> '%s'\n", b.drvPath, rPath)
	}
	rb := &builder{st: b.st, drvPath: rPath, drv: rd, opts: b.opts, s: b.s}
	status, msg, err = rb.run(ctx, res)
	if rb.ran {
		b.ran = true
	}
	if err != nil || !status.Success() {
		return status, msg, err
	}
	// The realisations of the original derivation (pure ones only; the
	// fixed-output case never gets here).
	if msg, err := b.registerResolved(ctx, hashes, res.BuiltOutputs); err != nil || msg != "" {
		return store.MiscFailure, msg, err
	}
	if status == store.AlreadyValid {
		status = store.ResolvesToAlreadyValid
	}
	return status, "", nil
}

// resolve is the first half of runResolved: the outputs of the input
// derivations (outputsOf), made temp roots, and the derivation resolved
// with them (derivation.Resolve), written to the store and temp-rooted
// (Nix's inputsRealised writes it too: writeDerivation in
// src/libstore/build/derivation-goal.cc@2.8.0). A non-empty msg is a
// failure to report with status.
func (b *builder) resolve(ctx context.Context) (rPath storepath.Path, rd *derivation.Derivation, status store.BuildStatus, msg string, err error) {
	inputs := map[storepath.Path]map[string]storepath.Path{}
	var missing []string
	for dp := range b.drv.InputDrvs {
		if err := b.st.AddTempRoot(ctx, dp); err != nil {
			return "", nil, 0, "", err
		}
		outs, err := b.outputsOf(ctx, dp)
		if errors.Is(err, store.ErrNotValid) {
			missing = append(missing, string(dp))
			continue
		}
		if err != nil {
			return "", nil, 0, "", err
		}
		inputs[dp] = outs
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return "", nil, store.MiscFailure, fmt.Sprintf("some dependencies of '%s' are missing: '%s'", b.drvPath, strings.Join(missing, "', '")), nil
	}
	rd, err = b.drv.Resolve(b.st.Dir(), func(dp storepath.Path, o string) (storepath.Path, bool) {
		p, ok := inputs[dp][o]
		return p, ok
	})
	if err != nil {
		return "", nil, store.MiscFailure, fmt.Sprintf("cannot resolve derivation '%s': %v", b.drvPath, err), nil
	}
	rPath, err = b.st.AddDerivation(ctx, rd)
	if err != nil {
		return "", nil, 0, "", fmt.Errorf("write resolved derivation of '%s': %w", b.drvPath, err)
	}
	if err := b.st.AddTempRoot(ctx, rPath); err != nil {
		return "", nil, 0, "", err
	}
	return rPath, rd, 0, "", nil
}

// registerResolved is the end of Nix's resolvedFinished: each output of
// the resolved derivation, at outs, is also realised under the original
// derivation's hash, with the realisations of the inputs it refers to as
// dependent realisations (outputReferences). A non-empty msg is a
// failure.
func (b *builder) registerResolved(ctx context.Context, hashes map[string]hash.Hash, outs map[string]storepath.Path) (string, error) {
	if !b.caEnabled() {
		return "", nil
	}
	dependent := map[string]map[derivation.DrvOutput]storepath.Path{}
	for name, p := range outs {
		deps, err := b.outputReferences(ctx, p)
		if err != nil {
			return err.Error(), nil
		}
		dependent[name] = deps
	}
	return "", b.registerRealisations(ctx, hashes, outs, dependent, true)
}

// outputReferences is Nix's drvOutputReferences: the realisations of the
// used outputs of the input derivations, with their dependent
// realisations, transitively, that the path p refers to.
func (b *builder) outputReferences(ctx context.Context, p storepath.Path) (map[derivation.DrvOutput]storepath.Path, error) {
	var todo []*derivation.Realisation
	drvs := make([]storepath.Path, 0, len(b.drv.InputDrvs))
	for dp := range b.drv.InputDrvs {
		drvs = append(drvs, dp)
	}
	storepath.Sort(drvs)
	for _, dp := range drvs {
		d, err := b.st.ReadDerivation(ctx, dp)
		if err != nil {
			return nil, err
		}
		h, err := derivation.HashModulo(d, true, storeResolver(ctx, b.st), nil)
		if err != nil {
			return nil, err
		}
		for _, o := range b.drv.InputDrvs[dp] {
			id := derivation.DrvOutput{DrvHash: h.Hashes[o], Output: o}
			r, err := b.st.QueryRealisation(ctx, id)
			if err != nil {
				return nil, err
			}
			if r == nil {
				// An input-addressed or fixed-output input built before
				// ca-derivations was on has none: Nix's goal for it
				// registers it once it finds the output valid
				// (checkPathValidity), so register it here.
				if r, err = b.staticRealisation(ctx, d, id); err != nil {
					return nil, err
				}
			}
			if r == nil {
				return nil, fmt.Errorf("output '%s' of derivation '%s' isn't built", o, dp)
			}
			todo = append(todo, r)
		}
	}
	// Realisation::closure.
	all := map[derivation.DrvOutput]storepath.Path{}
	for len(todo) > 0 {
		r := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if _, seen := all[r.ID]; seen {
			continue
		}
		all[r.ID] = r.OutPath
		for id := range r.Dependent {
			dr, err := b.st.QueryRealisation(ctx, id)
			if err != nil {
				return nil, err
			}
			if dr == nil {
				return nil, fmt.Errorf("Unrealised derivation '%s'", id)
			}
			todo = append(todo, dr)
		}
	}
	info, err := b.st.QueryPathInfo(ctx, p)
	if err != nil {
		return nil, err
	}
	refs := map[storepath.Path]bool{}
	for _, r := range info.References {
		refs[r] = true
	}
	out := map[derivation.DrvOutput]storepath.Path{}
	for id, op := range all {
		if refs[op] {
			out[id] = op
		}
	}
	return out, nil
}

// alreadyRealised computes the derivation's output hashes and, when every
// output already has a valid realisation, returns status AlreadyValid
// with res.BuiltOutputs set; a zero status means it must be built.
func (b *builder) alreadyRealised(ctx context.Context, res *store.BuildResult) (map[string]hash.Hash, store.BuildStatus, string, error) {
	hashes, err := b.outputHashes(ctx)
	if err != nil {
		return nil, store.MiscFailure, err.Error(), nil
	}
	outs, err := b.realised(ctx, hashes)
	if err != nil {
		return nil, 0, "", err
	}
	if outs != nil {
		res.BuiltOutputs = outs
		return hashes, store.AlreadyValid, "", nil
	}
	return hashes, 0, "", nil
}

// runFloating builds a floating content-addressed derivation without
// input derivations: the outputs are built at their scratch paths, then
// given their content-addressed paths (checkFloatingOutputs), registered
// and realised.
func (b *builder) runFloating(ctx context.Context, res *store.BuildResult) (store.BuildStatus, string, error) {
	st := b.st
	closure, status, msg, err := b.prepare(ctx)
	if err != nil || msg != "" {
		return status, msg, err
	}
	hashes, status, msg, err := b.alreadyRealised(ctx, res)
	if err != nil || status != 0 {
		return status, msg, err
	}
	scratch := map[string]storepath.Path{}
	var reals []string
	for _, name := range b.drv.OutputNames() {
		p, err := scratchPath(st.Dir(), b.drvPath, b.drv.Name, name)
		if err != nil {
			return 0, "", err
		}
		if err := st.AddTempRoot(ctx, p); err != nil {
			return 0, "", err
		}
		scratch[name] = p
		reals = append(reals, st.RealPath(p))
	}
	// Nix takes no lock on scratch paths; ferry does, so that two builds
	// of one derivation don't share them.
	locks, err := lock.LockPaths(ctx, reals, true)
	if err != nil {
		return 0, "", fmt.Errorf("lock outputs of '%s': %w", b.drvPath, err)
	}
	defer locks.Unlock()
	cleanup := func() {
		for _, p := range reals {
			storefs.Delete(p)
		}
	}
	cleanup()

	// The builder sees the scratch paths in place of the placeholders
	// (Nix's inputRewrites).
	rd := b.drv.Clone()
	var pairs []string
	for _, name := range b.drv.OutputNames() {
		pairs = append(pairs, storepath.HashPlaceholder(name), string(scratch[name]))
	}
	rewrite := strings.NewReplacer(pairs...).Replace
	for k, v := range rd.Env {
		rd.Env[k] = rewrite(v)
	}
	for i, a := range rd.Args {
		rd.Args[i] = rewrite(a)
	}
	rb := &builder{st: st, drvPath: b.drvPath, drv: rd, opts: b.opts, s: b.s}
	stopAutoGC := startAutoGC(ctx, b.opts.AutoGC)
	status, msg, infos, err := rb.runBuilder(ctx, scratch, closure)
	stopAutoGC()
	if rb.ran {
		b.ran = true
		res.TimesBuilt = 1
	}
	defer cleanup()
	if err != nil || !status.Success() {
		return status, msg, err
	}
	finalLocks := rb.finalLocks
	defer finalLocks.Unlock()
	if err := b.sign(infos); err != nil {
		return 0, "", err
	}
	if err := st.RegisterValidPaths(ctx, infos); err != nil {
		return 0, "", fmt.Errorf("register outputs of '%s': %w", b.drvPath, err)
	}
	outs := map[string]storepath.Path{}
	for name, p := range rb.finals {
		outs[name] = p
	}
	res.BuiltOutputs = outs
	if err := b.registerRealisations(ctx, hashes, outs, nil, true); err != nil {
		return 0, "", err
	}
	b.hooked(ctx, outs)
	finalLocks.SetDeletion(true)
	locks.SetDeletion(true)
	return store.Built, "", nil
}

// floatingOutput is one output of a floating build on its way to its
// content-addressed path.
type floatingOutput struct {
	name    string
	o       derivation.Output
	scratch storepath.Path
	real    string
	fi      os.FileInfo
	refs    []storepath.Path // found at the scratch location
}

// checkFloatingOutputs is registerOutputs for floating outputs (docs/store.md
// §8.6): each output is checked and canonicalised at its scratch path and
// scanned for references; the outputs are ordered so that an output comes
// after those it refers to (a cycle is an error); then for each one, the
// hashes of the outputs it refers to are rewritten to their final ones,
// its CA hash is taken modulo its own scratch hash part (HashModuloSink,
// over the NAR or, flat, the file), its path is makeFixedOutputPath with
// its references and self, and the tree, with its own scratch hash also
// rewritten, is put at the final path (left alone if that path is valid
// already). It returns the path infos, dependencies first, the final paths
// by output name and the locks of the final paths, to release after
// registration.
func checkFloatingOutputs(ctx context.Context, st *localstore.Store, drvPath storepath.Path, d *derivation.Derivation, scratch map[string]storepath.Path, closure []storepath.Path) ([]*store.PathInfo, map[string]storepath.Path, lockSet, error) {
	byHash, parts := scanCandidates(closure, scratch)
	outs := map[string]*floatingOutput{}
	byScratch := map[storepath.Path]string{}
	for _, name := range d.OutputNames() {
		if err := ctx.Err(); err != nil {
			return nil, nil, nil, err
		}
		fo := &floatingOutput{name: name, o: d.Outputs[name], scratch: scratch[name], real: st.RealPath(scratch[name])}
		fi, err := checkOutputFile(drvPath, name, fo.real)
		if err != nil {
			return nil, nil, nil, err
		}
		fo.fi = fi
		scan := refscan.NewScanner(parts)
		if err := nar.Dump(scan, fo.real); err != nil {
			return nil, nil, nil, fmt.Errorf("serialise %s: %w", fo.real, err)
		}
		for _, h := range scan.Found() {
			fo.refs = append(fo.refs, byHash[h])
		}
		outs[name] = fo
		byScratch[fo.scratch] = name
	}
	order, err := sortOutputs(drvPath, d.OutputNames(), func(name string) []string {
		var deps []string
		for _, r := range outs[name].refs {
			if o, ok := byScratch[r]; ok {
				deps = append(deps, o)
			}
		}
		return deps
	})
	if err != nil {
		return nil, nil, nil, err
	}

	var locks lockSet
	ok := false
	defer func() {
		if !ok {
			locks.Unlock()
		}
	}()
	finals := map[string]storepath.Path{}
	// scratch hash part -> final hash part, for the outputs done so far.
	var rewrites []*rewrite.Writer
	var infos []*store.PathInfo
	for _, name := range order {
		fo := outs[name]
		info, err := finishFloating(ctx, st, drvPath, d, fo, finals, rewrites)
		if err != nil {
			return nil, nil, nil, err
		}
		finals[name] = info.Path
		if info.Path != fo.scratch {
			rewrites = append(rewrites, &rewrite.Writer{From: []byte(fo.scratch.HashPart()), To: []byte(info.Path.HashPart())})
		}
		// Lock the final path (Nix's dynamicOutputLock) and move the tree
		// there, unless the path is valid already (built by someone
		// else: the same content).
		l, err := lock.LockPaths(ctx, []string{st.RealPath(info.Path)}, true)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("lock output '%s': %w", info.Path, err)
		}
		locks = append(locks, l)
		valid, err := st.IsValidPath(ctx, info.Path)
		if err != nil {
			return nil, nil, nil, err
		}
		tmp := fo.real + ".tmp"
		if info.Path != fo.scratch {
			if _, err := storefs.Delete(fo.real); err != nil {
				return nil, nil, nil, err
			}
		}
		if valid {
			storefs.Delete(tmp)
		} else if info.Path != fo.scratch {
			dst := st.RealPath(info.Path)
			if _, err := storefs.Delete(dst); err != nil {
				return nil, nil, nil, err
			}
			if err := os.Rename(tmp, dst); err != nil {
				return nil, nil, nil, fmt.Errorf("move output '%s' into place: %w", info.Path, err)
			}
		}
		infos = append(infos, info)
	}
	byName := map[string]*store.PathInfo{}
	for i, name := range order {
		byName[name] = infos[i]
	}
	if err := checkReferenceRules(ctx, st, d, finals, byName); err != nil {
		return nil, nil, nil, err
	}
	ok = true
	return infos, finals, locks, nil
}

// finishFloating computes the final path and info of one floating output
// and, when the path differs from the scratch one, restores the rewritten
// tree next to the scratch one (at real + ".tmp"). rewrites map the
// scratch hash parts of the outputs done before to their final ones.
func finishFloating(ctx context.Context, st *localstore.Store, drvPath storepath.Path, d *derivation.Derivation, fo *floatingOutput, finals map[string]storepath.Path, rewrites []*rewrite.Writer) (*store.PathInfo, error) {
	if fo.o.Method == storepath.Flat && (!fo.fi.Mode().IsRegular() || fo.fi.Mode()&0o100 != 0) {
		return nil, rejectf("output path '%s' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)", fo.real)
	}
	// The content as Nix hashes it: the other outputs' hashes rewritten
	// (rewriteOutput), then the modulo hash of the own scratch hash.
	mh := rewrite.NewModuloHasher(fo.o.HashAlgo, fo.scratch.HashPart())
	if err := writeRewritten(mh, fo.real, fo.o.Method, rewrites); err != nil {
		return nil, fmt.Errorf("hash %s: %w", fo.real, err)
	}
	got, err := mh.Sum()
	if err != nil {
		return nil, err
	}
	self := false
	var refs []storepath.Path
	toFinal := map[string]string{}
	for _, rw := range rewrites {
		toFinal[string(rw.From)] = string(rw.To)
	}
	for _, r := range fo.refs {
		switch {
		case r == fo.scratch:
			self = true
		case toFinal[r.HashPart()] != "":
			p, err := st.Dir().Join(toFinal[r.HashPart()] + "-" + r.Name())
			if err != nil {
				return nil, err
			}
			refs = append(refs, p)
		default:
			refs = append(refs, r)
		}
	}
	storepath.Sort(refs)
	// Nix 2.8's makeFixedOutputPath only puts references and self into
	// a recursive SHA-256 path ("source:"); otherwise it asserts there are
	// no references and ignores self, while the registered references
	// still include the path itself (store-api.cc@2.8.0).
	pathSelf := self
	if fo.o.Method != storepath.Recursive || fo.o.HashAlgo != hash.SHA256 {
		if len(refs) > 0 {
			return nil, rejectf("output '%s' of '%s' refers to other store paths, which a %s output can't (Nix 2.8 asserts this)", fo.name, drvPath, fo.o.MethodAlgo())
		}
		pathSelf = false
	}
	final, err := st.Dir().MakeFixedOutput(storepath.OutputPathName(d.Name, fo.name), fo.o.Method, got, refs, pathSelf)
	if err != nil {
		return nil, err
	}
	info := &store.PathInfo{Path: final, Deriver: drvPath, Ultimate: true,
		CA: storepath.ContentAddress{Method: fo.o.Method, Hash: got}}
	info.References = append([]storepath.Path(nil), refs...)
	if self {
		info.References = append(info.References, final)
		storepath.Sort(info.References)
	}
	// The final tree: every rewrite, the own one included, restored at
	// real.tmp; its NAR hash is the NAR as restored.
	all := rewrites
	if final != fo.scratch {
		all = append(append([]*rewrite.Writer(nil), rewrites...), &rewrite.Writer{From: []byte(fo.scratch.HashPart()), To: []byte(final.HashPart())})
	}
	tmp := fo.real + ".tmp"
	storefs.Delete(tmp)
	src := fo.real
	if len(all) > 0 {
		pairs := make([][2]string, 0, len(all))
		for _, rw := range all {
			pairs = append(pairs, [2]string{string(rw.From), string(rw.To)})
		}
		h, n, err := rewriteTree(fo.real, tmp, pairs)
		if err != nil {
			return nil, fmt.Errorf("rewrite hashes in '%s': %w", fo.real, err)
		}
		info.NarHash, info.NarSize = h, n
		src = tmp
	} else {
		sum := sha256.New()
		var size countWriter
		if err := nar.Dump(io.MultiWriter(sum, &size), fo.real); err != nil {
			return nil, err
		}
		info.NarHash, info.NarSize = hash.FromHasher(hash.SHA256, sum), size.n
		if final != fo.scratch {
			if err := os.Rename(fo.real, tmp); err != nil {
				return nil, err
			}
			src = tmp
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if src != fo.real {
		if err := storefs.Canonicalise(src, false); err != nil {
			return nil, err
		}
	}
	return info, nil
}

// writeRewritten writes the NAR of path (recursive) or the file's
// contents (flat) to w with the rewrites applied in order.
func writeRewritten(w io.Writer, path string, m storepath.Method, rewrites []*rewrite.Writer) error {
	pairs := make([][2]string, len(rewrites))
	for i, rw := range rewrites {
		pairs[i] = [2]string{string(rw.From), string(rw.To)}
	}
	out, flush := rewrite.Chain(w, pairs)
	err := nar.DumpContents(out, path, m == storepath.Flat)
	if err == nil {
		err = flush()
	}
	return err
}

// sortOutputs orders output names so that each comes after the outputs
// it refers to, by Nix's topoSort (a depth-first search over the names in
// order, reversed, then reversed again by registerOutputs), with Nix's
// cycle message.
func sortOutputs(drvPath storepath.Path, names []string, deps func(string) []string) ([]string, error) {
	visited := map[string]bool{}
	parents := map[string]bool{}
	var sorted []string
	var visit func(name, parent string) error
	visit = func(name, parent string) error {
		if parents[name] {
			return rejectf("cycle detected in build of '%s' in the references of output '%s' from output '%s'", drvPath, name, parent)
		}
		if visited[name] {
			return nil
		}
		visited[name] = true
		parents[name] = true
		ds := deps(name)
		sort.Strings(ds)
		for _, d := range ds {
			if d != name {
				if err := visit(d, name); err != nil {
					return err
				}
			}
		}
		sorted = append(sorted, name)
		delete(parents, name)
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return sorted, nil
}

// lockSet is the path locks of several final outputs.
type lockSet []*lock.PathLocks

// Unlock releases every lock.
func (ls lockSet) Unlock() {
	for _, l := range ls {
		l.Unlock()
	}
}

// SetDeletion sets the deletion flag of every lock.
func (ls lockSet) SetDeletion(on bool) {
	for _, l := range ls {
		l.SetDeletion(on)
	}
}
