package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"

	"ferry/internal/localstore"
	"ferry/internal/lock"
	"ferry/internal/sandbox"
	"ferry/internal/settings"
	"ferry/internal/storefs"
	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/store"
)

// Options configure Build. A nil *Options means the defaults.
type Options struct {
	// Settings are the machine's build settings (sandbox, sandbox-paths,
	// cores, limits, keep-failed, build-dir, system). Nil means
	// settings.Default().
	Settings *settings.Settings
	// Log receives the builder's output (stdout and stderr merged) as it
	// comes. Nil discards it. A failing Write ends the build.
	Log io.Writer
	// InMemory says the derivation came without its .drv file (the serve
	// protocol's BasicDerivation); it only changes how messages name the
	// build, as in Nix.
	InMemory bool
	// LogLines is how many lines of log tail a failure message carries.
	// Zero means 10 (Nix's log-lines); negative means none.
	LogLines int
	// Getenv reads the caller's environment for a fixed-output
	// derivation's impureEnvVars. Nil means os.Getenv.
	Getenv func(string) string
	// AutoGC, if not nil, is called when the builder starts and then
	// every second until it exits, so that a garbage collection can free disk
	// space while builds fill it (Nix's autoGC in the worker loop; see
	// gc.AutoCollector.Check). It must return quickly and be safe for
	// concurrent use. Nil means no automatic collection.
	AutoGC func(context.Context)
}

// WithBuildSettings returns a copy of s with the limits a client sent
// (serve protocol cmdBuildDerivation): they replace the machine's, zero
// meaning no limit, and no build log is kept, as Nix's serve side does.
func WithBuildSettings(s *settings.Settings, bs store.BuildSettings) *settings.Settings {
	if s == nil {
		s = settings.Default()
	}
	c := *s
	c.MaxSilentTime = bs.MaxSilentTime
	c.Timeout = bs.Timeout
	c.MaxLogSize = bs.MaxLogSize
	c.KeepFailed = bs.KeepFailed
	// Nix's serve side keeps no build log (getBuildSettings in
	// src/nix-store/nix-store.cc@2.8.0): the client has it.
	c.KeepBuildLog = false
	return &c
}

// Build realises the derivation d, stored (or, for an in-memory
// BasicDerivation, named) at drvPath, in st: Nix's DerivationGoal for one
// derivation whose inputs are already valid. It returns AlreadyValid if
// every output is valid, Built after a successful build whose outputs are
// registered, and a failure status with Nix's message otherwise
// (MiscFailure for missing inputs, InputRejected for a platform this
// machine can't build, PermanentFailure or, for fixed-output derivations,
// TransientFailure for a failing builder, TimedOut, LogLimitExceeded,
// OutputRejected for outputs that fail their checks).
//
// The result is never nil. The error is non-nil only when ctx ended (the
// builder is then killed) or the store itself failed; the result then has
// status MiscFailure and the error's message. Build is safe to call
// concurrently, also for the same derivation: one build runs, the other
// waits for its locks and returns AlreadyValid.
func Build(ctx context.Context, st *localstore.Store, drvPath storepath.Path, d *derivation.Derivation, opts *Options) (*store.BuildResult, error) {
	return drive(ctx, st, drvPath, d, opts, (*builder).run)
}

// drive runs step, Build's or Repair's, for one derivation and reports its
// outcome as a BuildResult with times, status and message.
func drive(ctx context.Context, st *localstore.Store, drvPath storepath.Path, d *derivation.Derivation, opts *Options,
	step func(*builder, context.Context, *store.BuildResult) (store.BuildStatus, string, error)) (*store.BuildResult, error) {
	if opts == nil {
		opts = &Options{}
	}
	b := &builder{st: st, drvPath: drvPath, drv: d, opts: opts, s: opts.Settings}
	if b.s == nil {
		b.s = settings.Default()
	}
	res := &store.BuildResult{StartTime: time.Now()}
	status, msg, err := step(b, ctx, res)
	res.StopTime = time.Now()
	res.Status = status
	if err != nil {
		res.Status = store.MiscFailure
		res.ErrorMsg = err.Error()
		return res, err
	}
	res.ErrorMsg = msg
	if !status.Success() {
		res.BuiltOutputs = nil
	}
	// The post-build hook runs once the outputs are registered, and its
	// failure fails the build but leaves them valid (hook.go).
	if status == store.Built {
		err := b.hookErr
		if !b.hookRan {
			err = b.postBuildHook(ctx, res.BuiltOutputs)
		}
		if err != nil {
			res.Status = store.MiscFailure
			res.ErrorMsg = err.Error()
			res.BuiltOutputs = nil
			return res, err
		}
	}
	return res, nil
}

type builder struct {
	st      *localstore.Store
	drvPath storepath.Path
	drv     *derivation.Derivation
	opts    *Options
	s       *settings.Settings
	// ran is set once the builder has exited by itself (not killed for a
	// limit or a cancellation): Nix's DerivationGoal::buildDone counts
	// such a run in timesBuilt whether the build then succeeds or fails.
	ran bool
	// finals and finalLocks are, after runBuilder of a floating
	// content-addressed derivation, its outputs' final paths and their
	// locks (checkFloatingOutputs).
	finals     map[string]storepath.Path
	finalLocks lockSet
	// hookRan is set once the post-build hook ran for this build, with
	// hookErr its outcome: it runs while the outputs' locks are held, as
	// in Nix's buildDone (hooked).
	hookRan bool
	hookErr error
}

// name is how Nix's messages name the goal (DerivationGoal::name).
func (b *builder) name() string {
	outs := strings.Join(b.drv.OutputNames(), ",")
	if b.opts.InMemory {
		return fmt.Sprintf("building of '%s!%s' from in-memory derivation", b.drvPath, outs)
	}
	return fmt.Sprintf("building of '%s!%s' from .drv file", b.drvPath, outs)
}

// buildable is the checks of Build that don't touch the store; msg is
// empty when d can be built here.
func (b *builder) buildable() (store.BuildStatus, string) {
	d := b.drv
	typ, err := d.Type()
	if err != nil {
		return store.MiscFailure, fmt.Sprintf("derivation '%s': %v", b.drvPath, err)
	}
	switch typ {
	case derivation.TypeInputAddressed, derivation.TypeFixed:
		if outs := d.OutputPaths(); len(outs) == 0 || len(outs) != len(d.Outputs) {
			return store.MiscFailure, fmt.Sprintf("derivation '%s' has outputs without paths", b.drvPath)
		}
	case derivation.TypeFloating:
		// Nix 2.8 refuses to read such a derivation without the feature
		// (parseDerivationOutput).
		if err := b.s.RequireFeature(settings.CADerivations); err != nil {
			return store.MiscFailure, err.Error()
		}
		if len(d.InputDrvs) > 0 {
			return store.MiscFailure, fmt.Sprintf("cannot build derivation '%s': it must be resolved first", b.drvPath)
		}
	case derivation.TypeDeferred:
		return store.MiscFailure, fmt.Sprintf("cannot build derivation '%s': its outputs are deferred and it has no inputs to resolve them", b.drvPath)
	default:
		return store.MiscFailure, fmt.Sprintf("cannot build derivation '%s': ferry builds only input-addressed, fixed-output and floating content-addressed derivations", b.drvPath)
	}
	if strings.HasPrefix(d.Builder, "builtin:") {
		return store.MiscFailure, fmt.Sprintf("cannot build derivation '%s': unsupported builtin builder '%s'", b.drvPath, d.Builder)
	}
	if _, ok := d.Env["__json"]; ok {
		return store.MiscFailure, fmt.Sprintf("cannot build derivation '%s': structured attributes are not supported by ferry", b.drvPath)
	}
	features := strings.Fields(d.Env["requiredSystemFeatures"])
	if !b.s.CanBuild(d.Platform, d.Builder, features) {
		return store.InputRejected, fmt.Sprintf("a '%s' with features {%s} is required to build '%s', but I am a '%s' with features {%s}",
			d.Platform, strings.Join(features, ", "), b.drvPath, b.s.System, strings.Join(b.s.SystemFeatures, ", "))
	}
	return 0, ""
}

// prepare checks that the derivation can be built here (buildable),
// temp-roots it and its inputs and returns the inputs' closure. A
// non-empty msg is a failure to report with status.
func (b *builder) prepare(ctx context.Context) (closure []storepath.Path, status store.BuildStatus, msg string, err error) {
	if status, msg := b.buildable(); msg != "" {
		return nil, status, msg, nil
	}
	// The derivation's hash part protects <drv>.chroot from a concurrent
	// GC (an automatic one included), as Nix's DerivationGoal does for
	// in-memory derivations and .drv files alike.
	if err := b.st.AddTempRoot(ctx, b.drvPath); err != nil {
		return nil, 0, "", err
	}
	// Inputs: temp roots first, then validity (a GC can't slip between).
	inputs, missing, err := b.inputPaths(ctx)
	if err != nil {
		return nil, 0, "", err
	}
	if len(missing) > 0 {
		return nil, store.MiscFailure, fmt.Sprintf("some dependencies of '%s' are missing: '%s'", b.drvPath, strings.Join(missing, "', '")), nil
	}
	closure, err = b.st.QueryClosure(ctx, inputs, false)
	return closure, 0, "", err
}

// run does the build; a non-nil error is a failure of ferry or the store,
// anything else is reported through status and msg.
func (b *builder) run(ctx context.Context, res *store.BuildResult) (store.BuildStatus, string, error) {
	st := b.st
	if typ, err := b.drv.Type(); err == nil {
		if typ == derivation.TypeFloating || typ == derivation.TypeDeferred {
			if err := b.s.RequireFeature(settings.CADerivations); err != nil {
				return store.MiscFailure, err.Error(), nil
			}
		}
		if needsResolve(b.drv) {
			return b.runResolved(ctx, res)
		}
		if typ == derivation.TypeFloating {
			return b.runFloating(ctx, res)
		}
	}
	closure, status, msg, err := b.prepare(ctx)
	if err != nil || msg != "" {
		return status, msg, err
	}
	outs := b.drv.OutputPaths()

	// Outputs: temp roots, locks, then the validity check Nix repeats
	// after locking (tryToBuild).
	outPaths := make([]storepath.Path, 0, len(outs))
	realOuts := make([]string, 0, len(outs))
	for _, p := range outs {
		if err := st.AddTempRoot(ctx, p); err != nil {
			return 0, "", err
		}
		outPaths = append(outPaths, p)
		realOuts = append(realOuts, st.RealPath(p))
	}
	storepath.Sort(outPaths)
	locks, err := lock.LockPaths(ctx, realOuts, true)
	if err != nil {
		return 0, "", fmt.Errorf("lock outputs of '%s': %w", b.drvPath, err)
	}
	defer locks.Unlock()
	valid, err := st.QueryValidPaths(ctx, outPaths)
	if err != nil {
		return 0, "", err
	}
	res.BuiltOutputs = outs
	if len(valid) == len(outPaths) {
		if err := b.staticRealisations(ctx, outs, false); err != nil {
			return 0, "", err
		}
		locks.SetDeletion(true)
		return store.AlreadyValid, "", nil
	}
	if len(valid) > 0 {
		return store.MiscFailure, fmt.Sprintf("some outputs of '%s' are valid and others not; ferry can't repair them", b.drvPath), nil
	}
	for _, p := range realOuts {
		if _, err := storefs.Delete(p); err != nil {
			return 0, "", err
		}
	}

	// Automatic GC while the builder runs, once everything the build
	// needs is a temp root.
	stopAutoGC := startAutoGC(ctx, b.opts.AutoGC)
	status, msg, infos, err := b.runBuilder(ctx, outs, closure)
	stopAutoGC()
	if b.ran {
		res.TimesBuilt = 1
	}
	if err != nil || !status.Success() {
		// A failed build leaves nothing at the output paths.
		for _, p := range realOuts {
			storefs.Delete(p)
		}
		return status, msg, err
	}
	if err := b.sign(infos); err != nil {
		for _, p := range realOuts {
			storefs.Delete(p)
		}
		return 0, "", err
	}
	if err := st.RegisterValidPaths(ctx, infos); err != nil {
		for _, p := range realOuts {
			storefs.Delete(p)
		}
		return 0, "", fmt.Errorf("register outputs of '%s': %w", b.drvPath, err)
	}
	if err := b.staticRealisations(ctx, outs, true); err != nil {
		return 0, "", err
	}
	b.hooked(ctx, outs)
	locks.SetDeletion(true)
	return store.Built, "", nil
}

// inputPaths returns the input sources and the used outputs of the input
// derivations, made temp roots, and the ones that are not valid.
func (b *builder) inputPaths(ctx context.Context) ([]storepath.Path, []string, error) {
	st, d := b.st, b.drv
	set := map[storepath.Path]bool{}
	var missing []string
	for _, p := range d.InputSrcs {
		set[p] = true
	}
	drvs := make([]storepath.Path, 0, len(d.InputDrvs))
	for p := range d.InputDrvs {
		drvs = append(drvs, p)
	}
	storepath.Sort(drvs)
	for _, dp := range drvs {
		outs, err := st.QueryDerivationOutputs(ctx, dp)
		if err != nil {
			if !errors.Is(err, store.ErrNotValid) {
				return nil, nil, err
			}
			missing = append(missing, string(dp))
			continue
		}
		for _, name := range d.InputDrvs[dp] {
			p, ok := outs[name]
			if !ok {
				missing = append(missing, string(dp)+"!"+name)
				continue
			}
			set[p] = true
		}
	}
	paths := make([]storepath.Path, 0, len(set))
	for p := range set {
		if err := st.AddTempRoot(ctx, p); err != nil {
			return nil, nil, err
		}
		paths = append(paths, p)
	}
	storepath.Sort(paths)
	valid, err := st.QueryValidPaths(ctx, paths)
	if err != nil {
		return nil, nil, err
	}
	ok := map[storepath.Path]bool{}
	for _, p := range valid {
		ok[p] = true
	}
	for _, p := range paths {
		if !ok[p] {
			missing = append(missing, string(p))
		}
	}
	sort.Strings(missing)
	return paths, missing, nil
}

// useSandbox applies the sandbox policy: on unless sandbox = false, and
// forced when the store's files are not at its logical directory (a
// chroot store, as Nix forces it); where namespaces don't work, a store at
// its logical directory falls back to a direct run if sandbox-fallback
// allows.
func (b *builder) useSandbox() (bool, error) {
	chrootStore := b.st.RealDir() != string(b.st.Dir())
	want := b.s.Sandbox != settings.SandboxOff || chrootStore
	if !want {
		return false, nil
	}
	if err := sandbox.Available(); err != nil {
		if !chrootStore && b.s.SandboxFallback {
			return false, nil
		}
		return false, fmt.Errorf("cannot build '%s': sandboxing is required but unavailable: %w", b.drvPath, err)
	}
	return true, nil
}

// runBuilder makes the build directory and environment, runs the builder
// under the limits and checks its outputs.
func (b *builder) runBuilder(ctx context.Context, outs map[string]storepath.Path, closure []storepath.Path) (store.BuildStatus, string, []*store.PathInfo, error) {
	st, d := b.st, b.drv
	sandboxed, err := b.useSandbox()
	if err != nil {
		return store.MiscFailure, err.Error(), nil, nil
	}
	if !sandboxed {
		if _, err := os.Lstat("/homeless-shelter"); err == nil {
			return store.MiscFailure, "home directory '/homeless-shelter' exists; please remove it to assure purity of builds without sandboxing", nil, nil
		}
	}
	parent := b.s.BuildDir
	if parent == "" {
		parent = os.TempDir()
	}
	hostDir, err := makeBuildDir(parent, "nix-build-"+b.drvPath.Name())
	if err != nil {
		return 0, "", nil, err
	}
	keep := false
	defer func() {
		if !keep {
			storefs.Delete(hostDir)
		}
	}()
	dir := hostDir
	if sandboxed {
		dir = "/build"
	}
	typ, _ := d.Type()
	fixed := typ == derivation.TypeFixed
	getenv := b.opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	env, err := builderEnv(d, envSpec{storeDir: string(st.Dir()), cores: b.s.Cores, hostDir: hostDir, dir: dir, fixed: fixed, getenv: getenv})
	if err != nil {
		return 0, "", nil, fmt.Errorf("prepare build directory: %w", err)
	}

	spec := &sandbox.Spec{
		Sandbox:      sandboxed,
		Builder:      d.Builder,
		Args:         d.Args,
		Env:          env,
		BuildDir:     hostDir,
		Dir:          dir,
		StoreDir:     string(st.Dir()),
		RealStoreDir: st.RealDir(),
		Name:         b.drvPath.Base(),
		Network:      fixed,
	}
	if sandboxed {
		spec.Paths = b.s.SandboxPathMap()
		inputs, err := b.sandboxInputs(ctx, closure, spec.Paths)
		if err != nil {
			return 0, "", nil, err
		}
		spec.Inputs = inputs
		for _, p := range outs {
			spec.Outputs = append(spec.Outputs, string(p))
		}
		sort.Strings(spec.Outputs)
	}
	lines := b.opts.LogLines
	if lines == 0 {
		lines = 10
	}
	logw := b.opts.Log
	logFile, err := b.openLogFile()
	if err != nil {
		return 0, "", nil, err
	}
	if logFile != nil {
		defer logFile.Close()
		logw = &keptLog{f: logFile, w: b.opts.Log}
	}
	logs := newLogSink(logw, b.s.MaxLogSize, lines)
	spec.Stdout = logs

	proc, err := sandbox.Start(ctx, spec)
	if err != nil {
		if ctx.Err() != nil {
			return 0, "", nil, ctx.Err()
		}
		keep = b.s.KeepFailed
		return store.MiscFailure, fmt.Sprintf("while setting up the build environment of '%s': %v", b.drvPath, err), nil, nil
	}
	timedOut := make(chan string, 1)
	stop := make(chan struct{})
	go b.watch(proc, logs, timedOut, stop)
	waitErr := proc.Wait()
	close(stop)

	fail := func(status store.BuildStatus, msg string) (store.BuildStatus, string, []*store.PathInfo, error) {
		keep = b.s.KeepFailed
		if keep {
			msg += fmt.Sprintf("\nnote: keeping build directory '%s'", hostDir)
		}
		return status, msg, nil, nil
	}
	select {
	case msg := <-timedOut:
		return fail(store.TimedOut, msg)
	default:
	}
	if logs.limitExceeded() {
		return fail(store.LogLimitExceeded, fmt.Sprintf("%s killed after writing more than %d bytes of log output", b.name(), b.s.MaxLogSize))
	}
	if waitErr != nil && ctx.Err() != nil {
		keep = b.s.KeepFailed
		return 0, "", nil, fmt.Errorf("build of '%s' interrupted: %w", b.drvPath, ctx.Err())
	}
	b.ran = true
	if waitErr != nil {
		var exit *exec.ExitError
		if !errors.As(waitErr, &exit) {
			return fail(store.MiscFailure, fmt.Sprintf("builder for '%s': %v", b.drvPath, waitErr))
		}
		msg := fmt.Sprintf("builder for '%s' %s", b.drvPath, exitStatus(exit))
		if tail := logs.lines(); len(tail) > 0 {
			msg += fmt.Sprintf(";\nlast %d log lines:\n> %s", len(tail), strings.Join(tail, "\n> "))
		}
		status := store.PermanentFailure
		if fixed {
			status = store.TransientFailure
		}
		return fail(status, msg)
	}
	var infos []*store.PathInfo
	if typ == derivation.TypeFloating {
		infos, b.finals, b.finalLocks, err = checkFloatingOutputs(ctx, st, b.drvPath, d, outs, closure)
	} else {
		infos, err = checkOutputs(ctx, st, b.drvPath, d, outs, closure)
	}
	if err != nil {
		var oe *outputError
		if errors.As(err, &oe) {
			return fail(store.OutputRejected, oe.msg)
		}
		if ctx.Err() != nil {
			return 0, "", nil, ctx.Err()
		}
		return fail(store.MiscFailure, err.Error())
	}
	return store.Built, "", infos, nil
}

// watch kills the builder when it has been silent for max-silent-time or
// running for longer than timeout (Nix's Worker::waitForInput checks).
func (b *builder) watch(proc *sandbox.Process, logs *logSink, timedOut chan<- string, stop <-chan struct{}) {
	silent, total := b.s.MaxSilentTime, b.s.Timeout
	if silent <= 0 && total <= 0 {
		return
	}
	start := time.Now()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			var msg string
			if silent > 0 && now.Sub(logs.lastOutput()) >= silent {
				msg = fmt.Sprintf("%s timed out after %d seconds of silence", b.name(), int64(silent/time.Second))
			} else if total > 0 && now.Sub(start) >= total {
				msg = fmt.Sprintf("%s timed out after %d seconds", b.name(), int64(total/time.Second))
			}
			if msg != "" {
				timedOut <- msg
				proc.Kill()
				return
			}
		}
	}
}

// sandboxInputs is the input closure plus the closures of the valid store
// paths among the sandbox-paths sources, as logical paths.
func (b *builder) sandboxInputs(ctx context.Context, closure []storepath.Path, paths map[string]string) ([]string, error) {
	set := map[storepath.Path]bool{}
	for _, p := range closure {
		set[p] = true
	}
	var extra []storepath.Path
	for _, src := range paths {
		src = strings.TrimSuffix(src, "?")
		if !strings.HasPrefix(src, string(b.st.Dir())+"/") {
			continue
		}
		rest := strings.TrimPrefix(src, string(b.st.Dir())+"/")
		base, _, _ := strings.Cut(rest, "/")
		p, err := b.st.Dir().Join(base)
		if err != nil {
			continue
		}
		if ok, err := b.st.IsValidPath(ctx, p); err == nil && ok {
			extra = append(extra, p)
		}
	}
	if len(extra) > 0 {
		c, err := b.st.QueryClosure(ctx, extra, false)
		if err != nil {
			return nil, err
		}
		for _, p := range c {
			set[p] = true
		}
	}
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, string(p))
	}
	sort.Strings(out)
	return out, nil
}

// exitStatus is Nix's statusToString.
func exitStatus(e *exec.ExitError) string {
	ws, ok := e.Sys().(syscall.WaitStatus)
	if !ok {
		return "failed: " + e.Error()
	}
	if ws.Signaled() {
		name := ws.Signal().String()
		if name != "" {
			name = strings.ToUpper(name[:1]) + name[1:]
		}
		return fmt.Sprintf("failed due to signal %d (%s)", int(ws.Signal()), name)
	}
	return fmt.Sprintf("failed with exit code %d", ws.ExitStatus())
}
