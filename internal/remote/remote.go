// Package remote builds a graph of derivations across a pool of build
// machines (ferry build --builders): the scheduler (internal/schedule)
// decides where and in which order; this package talks to the machines.
//
// Each machine slot (a machines-file line's max jobs) has one session,
// opened the first time the slot is used, concurrently with every other
// slot, within the connect time-out, and kept for every later build and
// copy on that slot. A build on a slot (BuildOn) sends the input closure
// the machine lacks after one locked query, the derivation in memory, and
// copies the outputs back, verified, into the local store. The slot also
// holds Nix's slot lock (internal/machines.Load) while it builds, so a
// nix-build --builders on the same machine never overbooks it. The local
// store is one more machine when -j N > 0.
//
// A machine that cannot be reached, whose session dies, or that refuses
// the inputs is reported down to the scheduler, which backs it off and
// moves its builds; the log says so once. A build that fails is not moved:
// it is reported with its message and, without KeepGoing, no new build
// starts. Cancelling the context ends every session, which makes ferry
// serve and nix-store --serve kill their builders; nothing half-copied is
// valid on either side, as copies register a path only once it is whole.
package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"ferry/internal/build"
	storecopy "ferry/internal/copy"
	"ferry/internal/hookapi"
	"ferry/internal/localstore"
	"ferry/internal/lock"
	"ferry/internal/machines"
	"ferry/internal/schedule"
	"ferry/internal/serve"
	"ferry/internal/settings"
	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/store"
)

// LocalMachine is the name of the local store among the machines.
const LocalMachine = "local"

// Options configure Build.
type Options struct {
	// Machines are the build machines (a machines file's lines).
	Machines []*machines.Machine
	// LocalJobs is how many builds the local store takes at once (-j);
	// zero builds nothing locally.
	LocalJobs int
	// KeepGoing builds everything that does not depend on a failed
	// build; without it a failure stops new builds.
	KeepGoing bool
	// Settings are the local machine's settings and the limits sent with
	// every remote build (max-silent-time, timeout, max-log-size). Nil
	// means settings.Default().
	Settings *settings.Settings
	// ConnectTimeout bounds opening a session; zero means 10 s.
	ConnectTimeout time.Duration
	// Log receives build logs, each line behind "name@machine> ". Nil
	// discards them.
	Log io.Writer
	// LogDir, if set, receives each build's log in <LogDir>/<drv>.log
	// instead of Log.
	LogDir string
	// Messages receives what a person should know as it happens: a
	// machine down, a build failed. Nil discards it.
	Messages io.Writer
	// Progress, if not nil, hears about builds as they start and end.
	Progress Progress
	// Open opens a machine's store; nil means store.Open. Tests use it.
	Open func(ctx context.Context, uri string, opts *store.OpenOptions) (store.Store, error)
	// Schedule tunes the scheduler (back-off, clock); KeepGoing is set
	// from above.
	Schedule schedule.Options
	// Daemon, if not nil, connects to a running ferry scheduler
	// (internal/schedd): remote builds then go through it, which places
	// them on its machines with its persistent sessions, slot accounting
	// across every client and back-off, while this run still orders the
	// graph and builds locally with LocalJobs. StoreURI names the local
	// store to it and Builders the machines (Nix's format).
	Daemon   func(ctx context.Context) (hookapi.Scheduler, error)
	StoreURI string
	Builders string
}

// DaemonMachine is the name of a running ferry scheduler among the
// machines of a run that uses one (Options.Daemon).
const DaemonMachine = "ferry-scheduler"

// Progress hears about a run, for a live display. Started, Finished and
// Counts are called from one goroutine; the copy progress Copying returns
// is used from the goroutine of that build.
type Progress interface {
	// Started says drv started on machine.
	Started(drv storepath.Path, machine string)
	// Finished says drv ended on machine with status ("failed" or a
	// success's status name).
	Finished(drv storepath.Path, machine string, status string)
	// Counts gives how many jobs are queued, running and final, of all.
	Counts(queued, running, done, total int)
	// Copying gives the progress of a copy to or from machine for drv
	// (nil: none).
	Copying(drv storepath.Path, machine string) storecopy.Progress
}

// Result is what became of one derivation.
type Result struct {
	DrvPath  storepath.Path            `json:"drvPath"`
	Machine  string                    `json:"machine,omitempty"`
	Status   string                    `json:"status"`
	Outputs  map[string]storepath.Path `json:"outputs,omitempty"`
	ErrorMsg string                    `json:"errorMsg,omitempty"`
	Times    Times                     `json:"times"`
	Attempts int                       `json:"attempts,omitempty"`
	// SentPaths and SentBytes are the inputs the last attempt copied to
	// its machine (the machine lacked them and did not substitute them).
	SentPaths int    `json:"sentPaths,omitempty"`
	SentBytes uint64 `json:"sentBytes,omitempty"`
	// BuildResult is the machine's result of the last attempt, if any.
	BuildResult *store.BuildResult `json:"-"`
}

// Success reports whether the derivation's outputs are valid locally.
func (r *Result) Success() bool { return r.Status == "Built" || r.Status == "AlreadyValid" }

// Build realises the derivations roots (.drv files valid in local) and
// the input derivations they need on the machines of opts and, with
// LocalJobs > 0, on local. Every output ends up valid in local. The
// results hold every derivation of the graph; the error is non-nil when
// some could not be built (it names them) or ctx ended.
func Build(ctx context.Context, local *localstore.Store, roots []storepath.Path, opts *Options) (map[storepath.Path]*Result, error) {
	r, err := newRun(ctx, local, roots, opts)
	if err != nil {
		return nil, err
	}
	defer r.close()
	return r.run()
}

type run struct {
	ctx    context.Context
	cancel context.CancelFunc
	local  *localstore.Store
	opts   *Options
	s      *settings.Settings
	g      *build.Graph
	sched  *schedule.Scheduler
	pools  map[string]*pool
	names  map[string]string // machine URI → its name in log prefixes
	load   *machines.Load
	logMu  sync.Mutex

	results map[storepath.Path]*Result
	done    chan outcome
	fatal   error
	// live maps a running job to its attempt's serial and machine; an
	// outcome of an attempt no longer live (its machine was reported down
	// and the job moved) changes nothing but the machine's state.
	live   map[storepath.Path]attempt
	serial int

	// caMu guards caOuts: the realised outputs of the floating and
	// deferred derivations of the graph, once they are all valid.
	caMu   sync.Mutex
	caOuts map[storepath.Path]map[string]storepath.Path
}

type attempt struct {
	serial  int
	machine string
}

// pool is a remote machine's slots, each with its session.
type pool struct {
	m    *machines.Machine
	free chan *slot
	all  []*slot
}

type slot struct {
	sess Session
	log  *SwitchWriter
}

type outcome struct {
	job     storepath.Path
	machine string
	serial  int
	// connected: the attempt opened its slot's session.
	connected bool
	// already: the outputs were found valid before the build started
	// (an earlier attempt, moved off a machine reported down, made them).
	already bool
	step    *StepResult
	res     *store.BuildResult // a local build's
	err     error
	times   Times
}

func newRun(ctx context.Context, local *localstore.Store, roots []storepath.Path, opts *Options) (*run, error) {
	if opts == nil {
		opts = &Options{}
	}
	r := &run{local: local, opts: opts, s: opts.Settings, pools: map[string]*pool{}, names: MachineNames(opts.Machines), results: map[storepath.Path]*Result{}, live: map[storepath.Path]attempt{},
		caOuts: map[storepath.Path]map[string]storepath.Path{}}
	if r.s == nil {
		r.s = settings.Default()
	}
	r.s = build.ForStore(local, r.s)
	r.ctx, r.cancel = context.WithCancel(ctx)
	g, err := build.LoadGraph(r.ctx, local, roots)
	if err != nil {
		return nil, err
	}
	r.g = g

	jobs, err := r.jobs()
	if err != nil {
		return nil, err
	}
	var ms []schedule.Machine
	if opts.Daemon != nil {
		// The scheduler stands for every machine: it can build what any
		// of them can, as many at once as they have slots, and decides
		// which one does.
		dm := schedule.Machine{ID: DaemonMachine, SpeedFactor: 1}
		seen := map[string]bool{}
		for _, m := range opts.Machines {
			dm.MaxJobs += int(m.MaxJobs)
			for _, sys := range m.Systems {
				if !seen["s:"+sys] {
					seen["s:"+sys] = true
					dm.Systems = append(dm.Systems, sys)
				}
			}
			for _, f := range m.AllFeatures() {
				if !seen["f:"+f] {
					seen["f:"+f] = true
					dm.SupportedFeatures = append(dm.SupportedFeatures, f)
				}
			}
		}
		ms = append(ms, dm)
		r.names[DaemonMachine] = DaemonMachine
	}
	for _, m := range opts.Machines {
		if opts.Daemon != nil {
			break
		}
		id := m.URI
		if _, dup := r.pools[id]; dup {
			return nil, fmt.Errorf("machine '%s' is listed twice (%s:%d)", m.URI, m.Source, m.Line)
		}
		p := &pool{m: m, free: make(chan *slot, m.MaxJobs)}
		for i := 0; i < int(m.MaxJobs); i++ {
			sl := &slot{log: &SwitchWriter{}}
			p.all = append(p.all, sl)
			p.free <- sl
		}
		r.pools[id] = p
		ms = append(ms, schedule.Machine{ID: id, Systems: m.Systems, SupportedFeatures: m.SupportedFeatures,
			MandatoryFeatures: m.MandatoryFeatures, MaxJobs: int(m.MaxJobs), SpeedFactor: float64(m.SpeedFactor)})
	}
	// The local store's features are Nix's localStore.systemFeatures:
	// with ca-derivations on they include it (build.StoreFeatures).
	ms = append(ms, schedule.Machine{ID: LocalMachine, Systems: append([]string{r.s.System}, r.s.ExtraPlatforms...),
		SupportedFeatures: build.StoreFeatures(r.local, r.s), MaxJobs: opts.LocalJobs, SpeedFactor: 1, Local: true})
	so := opts.Schedule
	so.KeepGoing = opts.KeepGoing
	if r.sched, err = schedule.New(jobs, ms, so); err != nil {
		return nil, err
	}
	if len(opts.Machines) > 0 && opts.Daemon == nil {
		if r.load, err = machines.OpenLoad(local.StateDir()); err != nil {
			return nil, err
		}
	}
	// Room for every slot's outcome, so a finishing build never blocks.
	r.done = make(chan outcome, len(jobs)+opts.LocalJobs+1)
	return r, nil
}

// jobs describes the graph to the scheduler.
func (r *run) jobs() ([]schedule.Job, error) {
	var jobs []schedule.Job
	paths := make([]storepath.Path, 0, len(r.g.Drvs))
	for p := range r.g.Drvs {
		paths = append(paths, p)
	}
	storepath.Sort(paths)
	for _, p := range paths {
		d := r.g.Drvs[p]
		j := schedule.Job{ID: string(p), System: d.Platform, Features: requiredFeatures(d),
			PreferLocal: d.Env["preferLocalBuild"] == "1", Valid: r.g.Results[p] != nil}
		for _, dep := range r.g.Deps[p] {
			j.Deps = append(j.Deps, string(dep))
		}
		sort.Strings(j.Deps)
		if !j.Valid {
			typ, err := d.Type()
			switch {
			case err != nil:
				// The build reports it.
			case typ == derivation.TypeFloating || typ == derivation.TypeDeferred:
				if err := r.s.RequireFeature(settings.CADerivations); err != nil {
					return nil, fmt.Errorf("cannot build '%s': %w", p, err)
				}
				// Realised and valid already: not built again (Nix's
				// checkPathValidity with ca-derivations).
				outs, err := r.outputs(p)
				if err != nil {
					return nil, err
				}
				j.Valid = outs != nil
			case typ == derivation.TypeFixed:
				// Nix 2.8 resolves a fixed-output derivation with input
				// derivations when ca-derivations is on
				// (DerivationGoal::inputsRealised); ferry resolves only
				// floating and deferred ones.
				for dp := range d.InputDrvs {
					if dd, ok := r.g.Drvs[dp]; ok && !knownOutputs(dd) {
						return nil, fmt.Errorf("cannot build '%s' on build machines: it is a fixed-output derivation that depends on '%s', whose outputs are not known in advance, and ferry build --builders does not resolve fixed-output derivations (build it without --builders)", p, dp)
					}
				}
			case typ != derivation.TypeInputAddressed:
				return nil, fmt.Errorf("cannot build '%s' on build machines: ferry build --builders builds input-addressed, fixed-output and floating content-addressed derivations (and derivations that depend on them) only, not %s ones (build it without --builders)", p, typeName(typ))
			}
		}
		if !j.Valid {
			inputs, err := r.inputSizes(d.InputSrcs)
			if err != nil {
				return nil, err
			}
			j.Inputs = inputs
		}
		jobs = append(jobs, j)
	}
	return jobs, nil
}

// requiredFeatures is Nix's ParsedDerivation::getRequiredSystemFeatures
// (src/libstore/parsed-derivations.cc@2.8.0): requiredSystemFeatures, plus
// "ca-derivations" when the derivation's output paths are not known in
// advance (floating content-addressed, deferred and impure ones), a set.
func requiredFeatures(d *derivation.Derivation) []string {
	var fs []string
	seen := map[string]bool{}
	for _, f := range strings.Fields(d.Env["requiredSystemFeatures"]) {
		if !seen[f] {
			seen[f] = true
			fs = append(fs, f)
		}
	}
	if !knownOutputs(d) && !seen[settings.CADerivations] {
		fs = append(fs, settings.CADerivations)
	}
	return fs
}

// knownOutputs says whether d's output paths are known in advance (Nix's
// hasKnownOutputPaths); a derivation of no valid type counts as known, and
// its build reports the error.
func knownOutputs(d *derivation.Derivation) bool {
	t, err := d.Type()
	return err != nil || build.HasKnownOutputPaths(t)
}

// typeName names a derivation type in messages.
func typeName(t derivation.Type) string {
	switch t {
	case derivation.TypeImpure:
		return "impure"
	case derivation.TypeFloating:
		return "floating content-addressed"
	case derivation.TypeDeferred:
		return "deferred"
	case derivation.TypeFixed:
		return "fixed-output"
	case derivation.TypeInputAddressed:
		return "input-addressed"
	}
	return fmt.Sprintf("type-%d", t)
}

// outputs gives the output paths of p, a derivation of the graph: its own
// for an input-addressed or fixed-output one; for a floating or deferred
// one its realisations, once every output has one whose path is valid
// locally (then kept), else nil.
func (r *run) outputs(p storepath.Path) (map[string]storepath.Path, error) {
	d := r.g.Drvs[p]
	if knownOutputs(d) {
		return d.OutputPaths(), nil
	}
	r.caMu.Lock()
	outs, ok := r.caOuts[p]
	r.caMu.Unlock()
	if ok {
		return outs, nil
	}
	// Also after the run was cancelled: collect reports what is valid.
	outs, err := build.NewRealiser(r.local, r.s, p, d).Realised(context.WithoutCancel(r.ctx))
	if err != nil || outs == nil {
		return nil, err
	}
	r.caMu.Lock()
	r.caOuts[p] = outs
	r.caMu.Unlock()
	return outs, nil
}

// inputSizes is the closure of srcs in the local store with NAR sizes.
func (r *run) inputSizes(srcs []storepath.Path) ([]schedule.Input, error) {
	if len(srcs) == 0 {
		return nil, nil
	}
	closure, err := r.local.QueryClosure(r.ctx, srcs, false)
	if err != nil {
		return nil, err
	}
	infos, err := r.local.QueryPathInfos(r.ctx, closure)
	if err != nil {
		return nil, err
	}
	in := make([]schedule.Input, 0, len(infos))
	for _, info := range infos {
		in = append(in, schedule.Input{Path: string(info.Path), Size: info.NarSize})
	}
	return in, nil
}

func (r *run) close() {
	r.cancel()
	for _, p := range r.pools {
		for _, sl := range p.all {
			if sl.sess != nil {
				sl.sess.Close()
			}
		}
	}
}

func (r *run) say(format string, a ...any) {
	if r.opts.Messages != nil {
		r.logMu.Lock()
		fmt.Fprintf(r.opts.Messages, format+"\n", a...)
		r.logMu.Unlock()
	}
}

// run drives the scheduler until every job is final.
func (r *run) run() (map[storepath.Path]*Result, error) {
	running := 0
	for _, err := range r.sched.Unbuildable() {
		r.say("error: %v", err)
	}
	for {
		for _, ev := range r.sched.Events() {
			r.say("%s", ev)
		}
		if r.sched.Finished() || (r.fatal != nil && running == 0) {
			break
		}
		if r.fatal == nil && r.ctx.Err() == nil {
			for _, a := range r.sched.Next() {
				running++
				r.start(a)
			}
		}
		if r.opts.Progress != nil {
			r.counts(running)
		}
		if running == 0 && (r.fatal != nil || r.ctx.Err() != nil) {
			break
		}
		var wake <-chan time.Time
		if t, ok := r.sched.NextWake(); ok && running == 0 || ok && t.After(time.Now()) {
			d := time.Until(t)
			if d < time.Millisecond {
				d = time.Millisecond
			}
			wake = time.After(d)
		} else if running == 0 {
			if !r.sched.Finished() {
				r.fatal = errors.New("the scheduler has nothing to run and nothing to wait for")
			}
			break
		}
		select {
		case o := <-r.done:
			running--
			r.finish(o)
		case <-wake:
		case <-r.ctx.Done():
			if r.fatal == nil {
				r.fatal = r.ctx.Err()
			}
			// Sessions end (close), builders die; wait for the slots.
			for running > 0 {
				o := <-r.done
				running--
				r.finish(o)
			}
		}
	}
	if r.opts.Progress != nil {
		r.counts(0)
	}
	return r.collect()
}

func (r *run) counts(running int) {
	queued, done := 0, 0
	for p := range r.g.Drvs {
		res, ok := r.sched.Result(string(p))
		switch {
		case ok && res.Status.Final():
			done++
		case ok && res.Status != schedule.Running:
			queued++
		}
	}
	r.opts.Progress.Counts(queued, running, done, len(r.g.Drvs))
}

// start runs an assignment in its own goroutine.
func (r *run) start(a schedule.Assignment) {
	p := storepath.Path(a.Job)
	d := r.g.Drvs[p]
	if r.opts.Progress != nil {
		r.opts.Progress.Started(p, a.Machine)
	}
	r.serial++
	serial := r.serial
	r.live[p] = attempt{serial, a.Machine}
	go func() {
		r.done <- r.attempt(a.Machine, serial, p, d)
	}()
}

// attempt builds p on machine.
func (r *run) attempt(machine string, serial int, p storepath.Path, d *derivation.Derivation) (o outcome) {
	o = outcome{job: p, machine: machine, serial: serial}
	// Another attempt may have made the outputs valid meanwhile (a
	// build moved off a machine that was only slow).
	if outs, err := r.validOutputs(p, d); err == nil && outs != nil {
		o.res = &store.BuildResult{Status: store.AlreadyValid, BuiltOutputs: outs}
		o.already = true
		return o
	}
	log, closeLog := r.buildLog(p, d, machine)
	defer closeLog()
	switch machine {
	case LocalMachine:
		t := time.Now()
		o.res, o.err = build.Build(r.ctx, r.local, p, d, &build.Options{Settings: r.s, Log: log})
		o.times.Build = time.Since(t)
	case DaemonMachine:
		t := time.Now()
		o.res, o.err = r.viaDaemon(p, d, log)
		o.times.Build = time.Since(t)
	default:
		o.step, o.connected, o.err = r.remote(r.pools[machine], p, d, log)
		if o.step != nil {
			o.res, o.times = o.step.Result, o.step.Times
		}
	}
	if pw, ok := log.(*build.PrefixWriter); ok {
		pw.Flush()
	}
	return o
}

// lockOutputs takes the path locks of d's outputs, temp-rooted first (as
// Nix's tryToBuild does).
func (r *run) lockOutputs(d *derivation.Derivation) (unlock func() error, err error) {
	var real []string
	for _, o := range d.OutputPaths() {
		if o == "" {
			continue
		}
		if err := r.local.AddTempRoot(r.ctx, o); err != nil {
			return nil, err
		}
		real = append(real, r.local.RealPath(o))
	}
	locks, err := lock.LockPaths(r.ctx, real, true)
	if err != nil {
		return nil, fmt.Errorf("lock the outputs of '%s': %w", d.Name, err)
	}
	return locks.Unlock, nil
}

// validOutputs gives the outputs of p when all are valid locally (for a
// floating or deferred derivation: realised), else nil.
func (r *run) validOutputs(p storepath.Path, d *derivation.Derivation) (map[string]storepath.Path, error) {
	if !knownOutputs(d) {
		return r.outputs(p)
	}
	return r.knownValid(d)
}

// knownValid gives the outputs of d, whose paths are known, when every
// one is valid locally (made a temp root first), else nil.
func (r *run) knownValid(d *derivation.Derivation) (map[string]storepath.Path, error) {
	outs := d.OutputPaths()
	if len(outs) == 0 || len(outs) != len(d.Outputs) {
		return nil, nil
	}
	paths := make([]storepath.Path, 0, len(outs))
	for _, o := range outs {
		if err := r.local.AddTempRoot(r.ctx, o); err != nil {
			return nil, err
		}
		paths = append(paths, o)
	}
	valid, err := r.local.QueryValidPaths(r.ctx, paths)
	if err != nil || len(valid) != len(paths) {
		return nil, err
	}
	return outs, nil
}

// buildLog is where a build's log goes: a file in LogDir, or Log behind
// "name@machine> ".
func (r *run) buildLog(p storepath.Path, d *derivation.Derivation, machine string) (io.Writer, func()) {
	if r.opts.LogDir != "" {
		f, err := os.Create(filepath.Join(r.opts.LogDir, p.Base()+".log"))
		if err == nil {
			return f, func() { f.Close() }
		}
		r.say("warning: cannot write the log of '%s': %v", p, err)
	}
	if r.opts.Log == nil {
		return io.Discard, func() {}
	}
	return build.NewPrefixWriter(r.opts.Log, &r.logMu, d.Name+"@"+r.names[machine]+"> "), func() {}
}

// hostOf is how log prefixes name a machine: its host (without user).
func hostOf(uri string) string {
	if uri == LocalMachine {
		return uri
	}
	if u, err := store.ParseURI(uri); err == nil && u.Authority != "" {
		a := u.Authority
		if i := strings.LastIndexByte(a, '@'); i >= 0 {
			a = a[i+1:]
		}
		return a
	}
	return uri
}

// MachineNames names each machine (by URI) for log prefixes and
// displays: its host, with "#N" (its place among the machines, from 1)
// when several share the host; LocalMachine is "local".
func MachineNames(ms []*machines.Machine) map[string]string {
	hosts := map[string]int{}
	for _, m := range ms {
		hosts[hostOf(m.URI)]++
	}
	names := map[string]string{LocalMachine: LocalMachine}
	for i, m := range ms {
		h := hostOf(m.URI)
		if hosts[h] > 1 {
			h = fmt.Sprintf("%s#%d", h, i+1)
		}
		names[m.URI] = h
	}
	return names
}

// remote builds p on a slot of pl, opening the slot's session if need be.
//
// A floating or deferred derivation with input derivations is first
// resolved against the local store's realisations (build.Realiser, as a
// local build does), and the resolved derivation is what the machine
// builds; its outputs' realisations, and then the original derivation's,
// are registered locally once they are copied back (buildCA).
func (r *run) remote(pl *pool, p storepath.Path, d *derivation.Derivation, log io.Writer) (res *StepResult, connected bool, err error) {
	step := &Step{DrvPath: p, Drv: d, Outputs: r.outputsOf, Settings: r.buildSettings(), Log: log}
	orig, done, err := r.resolveCA(step, log)
	if err != nil || done != nil {
		return done, false, err
	}
	var sl *slot
	select {
	case sl = <-pl.free:
	case <-r.ctx.Done():
		return nil, false, r.ctx.Err()
	}
	defer func() { pl.free <- sl }()
	lock, err := r.slotLock(pl.m)
	if err != nil {
		return nil, false, err
	}
	defer lock.Release()
	if sl.sess == nil {
		sess, err := r.open(pl.m, sl.log)
		if err != nil {
			return nil, false, err
		}
		sl.sess = sess
		connected = true
	}
	sl.log.Set(log)
	defer sl.log.Set(nil)
	step.Substitute = r.s.BuildersUseSubstitutes
	// Nix's upload lock of the machine, as build-remote takes it: one
	// upload to a machine at a time, shared with Nix's hooks, so a second
	// finds what the first sent.
	step.Upload = UploadLock(r.load, pl.m, 0, func(msg string) { r.say("%s", msg) })
	if r.opts.Progress != nil {
		step.Copy = r.opts.Progress.Copying(p, pl.m.URI)
	}
	res, err = BuildOn(r.ctx, r.local, pl.m.URI, sl.sess, step)
	var me *MachineError
	if errors.As(err, &me) || r.ctx.Err() != nil {
		sl.sess.Close()
		sl.sess = nil
	}
	if err == nil && res.Result.Status.Success() && (!knownOutputs(d) || orig != nil) {
		err = r.registerCA(step, orig, res.Outputs)
	}
	return res, connected, err
}

// resolveCA resolves a floating or deferred derivation with input
// derivations against the local realisations (build.Realiser, as a local
// build does): step then names the resolved derivation, the one a
// machine builds, and orig is the original's Realiser. A resolved
// derivation valid already (another derivation resolved to it) is not
// built again: done is its result, ResolvesToAlreadyValid, as Nix's
// resolvedFinished reports it; a derivation that cannot be resolved gets
// a failed one.
func (r *run) resolveCA(step *Step, log io.Writer) (orig *build.Realiser, done *StepResult, err error) {
	p, d := step.DrvPath, step.Drv
	if knownOutputs(d) || !build.NeedsResolve(d) {
		return nil, nil, nil
	}
	orig = build.NewRealiser(r.local, r.s, p, d)
	rPath, rd, msg, err := orig.Resolve(r.ctx)
	if err != nil {
		return nil, nil, err
	}
	if msg != "" {
		return nil, &StepResult{Result: &store.BuildResult{Status: store.MiscFailure, ErrorMsg: msg}}, nil
	}
	fmt.Fprintf(log, "resolved derivation: '%s' -> '%s'\n", p, rPath)
	step.DrvPath, step.Drv = rPath, rd
	outs, err := r.resolvedValid(rPath, rd)
	if err != nil || outs == nil {
		return orig, nil, err
	}
	if err := r.registerCA(step, orig, outs); err != nil {
		return nil, nil, err
	}
	return orig, &StepResult{Result: &store.BuildResult{Status: store.ResolvesToAlreadyValid, BuiltOutputs: outs}, Outputs: outs}, nil
}

// resolvedValid gives the outputs of the resolved derivation rd at rPath
// when they are valid locally (realised, for a floating one), else nil.
func (r *run) resolvedValid(rPath storepath.Path, rd *derivation.Derivation) (map[string]storepath.Path, error) {
	if !knownOutputs(rd) {
		return build.NewRealiser(r.local, r.s, rPath, rd).Realised(r.ctx)
	}
	return r.knownValid(rd)
}

// registerCA records in the local store the realisations of a floating
// or deferred derivation built on a machine, whose outputs outs are now
// valid locally: those of the derivation the machine built (the resolved
// one, or the floating one itself), as build-remote registers the
// builtOutputs and checkPathValidity the static outputs of a resolved
// deferred one; then, when it was resolved (orig), those of the original
// derivation with their dependent realisations, as resolvedFinished does
// (src/build-remote/build-remote.cc, src/libstore/build/derivation-goal.cc
// @2.8.0). Dependents resolve against them.
func (r *run) registerCA(step *Step, orig *build.Realiser, outs map[string]storepath.Path) error {
	ctx := context.WithoutCancel(r.ctx)
	if err := build.NewRealiser(r.local, r.s, step.DrvPath, step.Drv).RegisterBuilt(ctx, outs); err != nil {
		return fmt.Errorf("register the realisations of '%s': %w", step.DrvPath, err)
	}
	if orig != nil {
		if err := orig.RegisterResolved(ctx, outs); err != nil {
			return err
		}
	}
	return nil
}

// viaDaemon has the ferry scheduler build p: a try (postponed ones are
// retried while the scheduler's machines are busy), then the build, whose
// log it streams, then the release. The scheduler copies the inputs from
// the local store and the outputs back into it. Its transport failing is
// a *MachineError of DaemonMachine; its having no machine, or the build
// failing, a failed result.
func (r *run) viaDaemon(p0 storepath.Path, d0 *derivation.Derivation, log io.Writer) (*store.BuildResult, error) {
	fail := func(err error) (*store.BuildResult, error) {
		if r.ctx.Err() != nil {
			return nil, r.ctx.Err()
		}
		return nil, &MachineError{Machine: DaemonMachine, Err: err}
	}
	// A content-addressed derivation goes resolved, as Nix hands its
	// hook the resolved one; the scheduler registers the realisations of
	// what it builds, and then the original's are registered here.
	step := &Step{DrvPath: p0, Drv: d0}
	orig, done, err := r.resolveCA(step, log)
	if err != nil || done != nil {
		if done != nil {
			return done.Result, nil
		}
		return nil, err
	}
	p, d := step.DrvPath, step.Drv
	// The outputs' path locks are held throughout, as Nix's
	// DerivationGoal holds them around its build hook: the scheduler
	// copies the outputs back without taking them (Nix's locksHeld).
	unlock, err := r.lockOutputs(d)
	if err != nil {
		return nil, err
	}
	defer unlock()
	settings := map[string]string{
		"max-silent-time":          fmt.Sprint(int64(r.s.MaxSilentTime.Seconds())),
		"timeout":                  fmt.Sprint(int64(r.s.Timeout.Seconds())),
		"max-log-size":             fmt.Sprint(r.s.MaxLogSize),
		"builders-use-substitutes": strconv.FormatBool(r.s.BuildersUseSubstitutes),
		"experimental-features":    strings.Join(r.s.ExperimentalFeatures, " "),
	}
	for {
		first, err := r.opts.Daemon(r.ctx)
		if err != nil {
			return fail(err)
		}
		// A scheduler lost mid-build (restarted, crashed) is asked again
		// once one answers, as ferry build-hook does.
		sch := hookapi.NewResilient(first, r.redialDaemon, func(m string) { r.say("%s", m) })
		rep, err := sch.Try(r.ctx, &hookapi.TryRequest{Store: r.opts.StoreURI, Builders: r.opts.Builders, System: d.Platform,
			DrvPath: p, Features: requiredFeatures(d), Settings: settings})
		if err != nil {
			sch.Release()
			return fail(err)
		}
		switch rep.Decision {
		case hookapi.Accept:
			var inputs []storepath.Path
			basic, berr := serve.BasicDerivation(d, r.outputsOf)
			if berr == nil {
				inputs = basic.InputSrcs
			}
			br, err := sch.Build(r.ctx, &hookapi.BuildRequest{DrvPath: p, Inputs: inputs, WantedOutputs: d.OutputNames()}, log)
			sch.Release()
			if err != nil {
				return fail(err)
			}
			if !br.Success {
				return &store.BuildResult{Status: store.PermanentFailure, ErrorMsg: br.Message}, nil
			}
			outs := d.OutputPaths()
			if !knownOutputs(d) {
				if outs, err = build.NewRealiser(r.local, r.s, p, d).Realised(r.ctx); err == nil && outs == nil {
					err = fmt.Errorf("the ferry scheduler built '%s' but registered no realisations of its outputs", p)
				}
				if err != nil {
					return nil, err
				}
			}
			if orig != nil {
				if err := orig.RegisterResolved(context.WithoutCancel(r.ctx), outs); err != nil {
					return nil, err
				}
			}
			return &store.BuildResult{Status: store.Built, BuiltOutputs: outs}, nil
		case hookapi.Postpone:
			sch.Release()
			select {
			case <-time.After(time.Second):
			case <-r.ctx.Done():
				return nil, r.ctx.Err()
			}
		default:
			sch.Release()
			msg := rep.Message
			if msg == "" {
				msg = string(rep.Decision)
			}
			return &store.BuildResult{Status: store.MiscFailure, ErrorMsg: fmt.Sprintf("the ferry scheduler has no machine for '%s': %s", p, msg)}, nil
		}
	}
}

// redialDaemon connects to the ferry scheduler again after it was lost,
// waiting up to daemonRestartWait for one to answer.
func (r *run) redialDaemon(ctx context.Context) (hookapi.Scheduler, error) {
	deadline := time.Now().Add(daemonRestartWait)
	for {
		sch, err := r.opts.Daemon(ctx)
		if err == nil || time.Now().After(deadline) {
			return sch, err
		}
		select {
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// daemonRestartWait is how long a build waits for a lost ferry scheduler
// to answer again (a service manager restarting it).
const daemonRestartWait = 5 * time.Second

// slotLock takes one of Nix's slot locks of m, waiting while other
// processes (a nix-build --builders) hold them all.
func (r *run) slotLock(m *machines.Machine) (*machines.Slot, error) {
	for {
		s, err := r.load.TryAcquire(m)
		if err != nil || s != nil {
			return s, err
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-r.ctx.Done():
			return nil, r.ctx.Err()
		}
	}
}

// open starts a session with m within the connect time-out.
func (r *run) open(m *machines.Machine, log io.Writer) (Session, error) {
	timeout := r.opts.ConnectTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	open := r.opts.Open
	if open == nil {
		open = store.Open
	}
	st, err := open(r.ctx, m.StoreURI(), &store.OpenOptions{Log: log, BareLog: true, ConnectTimeout: timeout})
	if err != nil {
		if r.ctx.Err() != nil {
			return nil, r.ctx.Err()
		}
		return nil, &MachineError{Machine: m.URI, Err: fmt.Errorf("cannot connect: %w", err)}
	}
	sess, ok := st.(Session)
	if !ok {
		st.Close()
		return nil, &MachineError{Machine: m.URI, Err: errors.New("the store cannot build derivations")}
	}
	if st.Dir() != r.local.Dir() {
		st.Close()
		return nil, &MachineError{Machine: m.URI, Err: fmt.Errorf("its store directory is %s, the local one %s", st.Dir(), r.local.Dir())}
	}
	return sess, nil
}

func (r *run) buildSettings() *store.BuildSettings {
	return &store.BuildSettings{MaxSilentTime: r.s.MaxSilentTime, Timeout: r.s.Timeout, MaxLogSize: r.s.MaxLogSize}
}

// outputsOf gives the output paths of an input derivation of the graph:
// for a floating or deferred one its realisations (Nix's
// queryPartialDerivationOutputMap).
func (r *run) outputsOf(p storepath.Path) (map[string]storepath.Path, error) {
	if _, ok := r.g.Drvs[p]; ok {
		return r.outputs(p)
	}
	d, err := r.local.ReadDerivation(r.ctx, p)
	if err != nil {
		return nil, err
	}
	if knownOutputs(d) {
		return d.OutputPaths(), nil
	}
	return build.OutputsOf(r.ctx, r.local, r.s, p)
}

// finish tells the scheduler how an assignment went.
func (r *run) finish(o outcome) {
	if o.connected {
		r.sched.MachineUp(o.machine)
	}
	if a, ok := r.live[o.job]; !ok || a.serial != o.serial {
		// A stale attempt: its job was moved when its machine went
		// down. Its outputs, if it made them, are valid and the next
		// attempt finds them so.
		var me *MachineError
		if errors.As(o.err, &me) && r.ctx.Err() == nil {
			r.machineDown(o.machine, me.Err)
		}
		return
	}
	delete(r.live, o.job)
	res := r.result(o.job)
	if !o.already || res.Machine == "" {
		res.Attempts++
		res.Machine, res.Times = o.machine, o.times
		if o.step != nil {
			res.SentPaths, res.SentBytes = o.step.SentPaths, o.step.SentBytes
		}
	}
	var me *MachineError
	switch {
	case errors.As(o.err, &me):
		res.ErrorMsg = me.Error()
		if r.ctx.Err() == nil {
			r.machineDown(o.machine, me.Err)
		}
	case o.err != nil:
		res.ErrorMsg = o.err.Error()
		if r.fatal == nil {
			r.fatal = fmt.Errorf("build of '%s' on '%s': %w", o.job, o.machine, o.err)
			r.cancel()
		}
	case o.res.Status.Success():
		if !o.already || res.BuildResult == nil {
			res.BuildResult = o.res
		}
		var outs []schedule.Input
		var paths []string
		built, err := r.outputs(o.job)
		if err != nil {
			r.say("warning: the outputs of '%s': %v", o.job, err)
		}
		for _, p := range built {
			paths = append(paths, string(p))
			if info, err := r.local.QueryPathInfo(r.ctx, p); err == nil {
				outs = append(outs, schedule.Input{Path: string(p), Size: info.NarSize})
			}
		}
		r.sched.Done(string(o.job), o.machine, outs...)
		r.sched.Holds(LocalMachine, paths...)
	default:
		res.BuildResult = o.res
		res.ErrorMsg = o.res.ErrorMsg
		if o.machine == LocalMachine {
			r.say("error: %s", o.res.ErrorMsg)
		} else {
			r.say("error: build of '%s' on '%s' failed: %s", o.job, o.machine, o.res.ErrorMsg)
		}
		r.sched.Failed(string(o.job), o.machine, errors.New(o.res.ErrorMsg))
	}
	if r.opts.Progress != nil {
		st := "failed"
		if o.err == nil && o.res.Status.Success() {
			st = o.res.Status.String()
		}
		r.opts.Progress.Finished(o.job, o.machine, st)
	}
}

// machineDown reports m down; the scheduler moves its running jobs,
// whose attempts are no longer live.
func (r *run) machineDown(m string, err error) {
	r.sched.MachineDown(m, err)
	for p, a := range r.live {
		if a.machine == m {
			delete(r.live, p)
		}
	}
}

func (r *run) result(p storepath.Path) *Result {
	res := r.results[p]
	if res == nil {
		res = &Result{DrvPath: p}
		r.results[p] = res
	}
	return res
}

// collect gives every job's final state.
func (r *run) collect() (map[storepath.Path]*Result, error) {
	var failed []string
	for p, d := range r.g.Drvs {
		res := r.result(p)
		sr, _ := r.sched.Result(string(p))
		switch sr.Status {
		case schedule.Built:
			res.Status = "Built"
			if res.BuildResult != nil && res.BuildResult.Status == store.AlreadyValid {
				res.Status = "AlreadyValid"
			}
			res.Outputs = r.collectOutputs(p, d)
		case schedule.Valid:
			res.Status, res.Outputs, res.Machine = "AlreadyValid", r.collectOutputs(p, d), ""
		case schedule.Failed:
			res.Status = "Failed"
			if res.BuildResult != nil {
				res.Status = res.BuildResult.Status.String()
			}
		case schedule.DependencyFailed:
			res.Status, res.Machine = "DependencyFailed", ""
			if sr.Err != nil {
				res.ErrorMsg = sr.Err.Error()
			}
		case schedule.Unbuildable:
			res.Status, res.Machine = "Unbuildable", ""
			if sr.Err != nil {
				res.ErrorMsg = sr.Err.Error()
			}
		default:
			res.Status, res.Machine = "Cancelled", ""
		}
		if !res.Success() {
			failed = append(failed, string(p))
		}
	}
	sort.Strings(failed)
	if r.fatal != nil {
		return r.results, r.fatal
	}
	if len(failed) > 0 {
		return r.results, fmt.Errorf("%d derivations failed to build: '%s'", len(failed), strings.Join(failed, "', '"))
	}
	return r.results, nil
}

// collectOutputs is the outputs of a built or valid p for its result.
func (r *run) collectOutputs(p storepath.Path, d *derivation.Derivation) map[string]storepath.Path {
	if knownOutputs(d) {
		return d.OutputPaths()
	}
	outs, _ := r.outputs(p)
	return outs
}

// SwitchWriter passes writes on to the writer Set last (none: dropped):
// a session's stderr goes to it, and each build on the session points it
// at that build's log. The zero value drops everything.
type SwitchWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// Set makes w (nil: none) receive what is written from now on.
func (s *SwitchWriter) Set(w io.Writer) {
	s.mu.Lock()
	s.w = w
	s.mu.Unlock()
}

func (s *SwitchWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w != nil {
		s.w.Write(p)
	}
	return len(p), nil
}
