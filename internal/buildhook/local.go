package buildhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	storecopy "ferry/internal/copy"
	"ferry/internal/hookapi"
	"ferry/internal/localstore"
	"ferry/internal/machines"
	"ferry/internal/remote"
	"ferry/internal/settings"
	"ferry/nix/storepath"
	"ferry/store"
)

// Local is the hook's in-process Scheduler, used when no ferry scheduler
// runs: build-remote's own placement (src/build-remote/build-remote.cc
// @2.8.0). Try chooses a machine of the builders setting with Nix's slot
// locks (machines.Load.Select on the client store's current-load), and
// connects to it (the handshake) before accepting: a machine that cannot
// be reached is reported ("cannot build on '…': …"), disabled for the
// rest of the hook's life and the choice made again. Build copies the
// inputs under the machine's upload lock, builds the derivation in
// memory and copies the outputs back (remote.BuildOn). The slot is held
// from the accept to Release.
type Local struct {
	local *localstore.Store
	cfg   *Config
	s     *settings.Settings
	opts  LocalOptions

	load     *machines.Load
	builders string
	ms       []*machines.Machine
	disabled map[*machines.Machine]bool

	mu   sync.Mutex
	slot *machines.Slot
	sess remote.Session
	logw *remote.SwitchWriter
}

var _ hookapi.Scheduler = (*Local)(nil)

// LocalOptions configure Local.
type LocalOptions struct {
	// ConnectTimeout bounds the handshake with a machine; zero means the
	// store's default (10 s).
	ConnectTimeout time.Duration
	// Log receives a machine's stderr (its build log) outside Build; nil
	// discards it. Build sends it to its own log.
	Log io.Writer
	// Message receives what build-remote prints as it chooses
	// ("cannot build on …"), with its Nix verbosity level.
	Message func(level int, text string)
	// Activity, if set, reports a step that takes time (Nix's
	// activities: "connecting to …"), returning its end.
	Activity func(level int, text string) func()
	// UploadWait is how long Build waits for the machine's upload lock
	// before going on without it; zero means Nix's 15 minutes.
	UploadWait time.Duration
	// Open opens a machine's store; nil means store.Open.
	Open func(ctx context.Context, uri string, opts *store.OpenOptions) (store.Store, error)
}

// NewLocal makes the in-process scheduler for the client store local,
// with the settings Nix sent (cfg.Settings.System is the default system
// of the machines).
func NewLocal(local *localstore.Store, cfg *Config, opts *LocalOptions) (*Local, error) {
	l := &Local{local: local, cfg: cfg, s: cfg.Settings, disabled: map[*machines.Machine]bool{}, logw: &remote.SwitchWriter{}}
	if opts != nil {
		l.opts = *opts
	}
	l.logw.Set(l.opts.Log)
	return l, nil
}

func (l *Local) message(level int, text string) {
	if l.opts.Message != nil {
		l.opts.Message(level, text)
	}
}

func (l *Local) activity(level int, text string) func() {
	if l.opts.Activity != nil {
		return l.opts.Activity(level, text)
	}
	return func() {}
}

// machines parses builders once per value.
func (l *Local) machines(builders string) ([]*machines.Machine, error) {
	if l.ms != nil && builders == l.builders {
		return l.ms, nil
	}
	ms, err := machines.Parse(builders, l.s.System)
	if err != nil {
		return nil, err
	}
	l.builders, l.ms = builders, ms
	if ms == nil {
		l.ms = []*machines.Machine{}
	}
	return l.ms, nil
}

// CanBuildLocally is build-remote's canBuildLocally: Nix is willing
// (amWilling), the system is the local one or an extra platform, and the
// local store supports every required feature. features are the local
// store's system features.
func CanBuildLocally(s *settings.Settings, features []string, req *hookapi.TryRequest) bool {
	if !req.AmWilling {
		return false
	}
	ok := req.System == s.System
	for _, p := range s.ExtraPlatforms {
		ok = ok || p == req.System
	}
	if !ok {
		return false
	}
	have := map[string]bool{}
	for _, f := range features {
		have[f] = true
	}
	for _, f := range req.Features {
		if !have[f] {
			return false
		}
	}
	return true
}

// Try answers one of Nix's tries as build-remote does.
func (l *Local) Try(ctx context.Context, req *hookapi.TryRequest) (*hookapi.TryReply, error) {
	l.Release()
	ms, err := l.machines(req.Builders)
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return &hookapi.TryReply{Decision: hookapi.DeclinePermanently}, nil
	}
	if l.load == nil {
		if l.load, err = machines.OpenLoad(l.local.StateDir()); err != nil {
			return nil, err
		}
	}
	canLocal := CanBuildLocally(l.s, storeFeatures(l.local, l.s), req)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var enabled []*machines.Machine
		for _, m := range ms {
			if !l.disabled[m] {
				enabled = append(enabled, m)
			}
		}
		slot, rightType, err := l.load.Select(enabled, req.System, req.Features)
		if err != nil {
			return nil, err
		}
		if slot == nil {
			if rightType && !canLocal {
				return &hookapi.TryReply{Decision: hookapi.Postpone}, nil
			}
			return &hookapi.TryReply{Decision: hookapi.Decline,
				Message: NoMachineMessage(drvName(req.DrvPath), req.System, req.Features, ms)}, nil
		}
		m := slot.Machine
		done := l.activity(LvlTalkative, fmt.Sprintf("connecting to '%s'", m.URI))
		sess, err := l.open(ctx, m)
		done()
		if err != nil {
			slot.Release()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			l.message(LvlError, fmt.Sprintf("cannot build on '%s': %serror:%s %v", m.URI, ansiRed, ansiNormal, err))
			l.disabled[m] = true
			continue
		}
		l.mu.Lock()
		l.slot, l.sess = slot, sess
		l.mu.Unlock()
		return &hookapi.TryReply{Decision: hookapi.Accept, Machine: m.URI}, nil
	}
}

// open connects to m's store as Machine::openStore and connect() do.
func (l *Local) open(ctx context.Context, m *machines.Machine) (remote.Session, error) {
	open := l.opts.Open
	if open == nil {
		open = store.Open
	}
	st, err := open(ctx, m.StoreURI(), &store.OpenOptions{Log: l.logw, BareLog: true, ConnectTimeout: l.opts.ConnectTimeout})
	if err != nil {
		return nil, err
	}
	sess, ok := st.(remote.Session)
	if !ok {
		st.Close()
		return nil, errors.New("the store cannot build derivations")
	}
	if st.Dir() != l.local.Dir() {
		st.Close()
		return nil, fmt.Errorf("its store directory is %s, the local one %s", st.Dir(), l.local.Dir())
	}
	return sess, nil
}

// Build runs the accepted build as build-remote does after "# accept".
func (l *Local) Build(ctx context.Context, req *hookapi.BuildRequest, log io.Writer) (*hookapi.BuildReply, error) {
	l.mu.Lock()
	slot, sess := l.slot, l.sess
	l.mu.Unlock()
	if sess == nil {
		return nil, errors.New("no accepted build to run")
	}
	m := slot.Machine
	start := time.Now()
	if log != nil {
		l.logw.Set(log)
		defer l.logw.Set(l.opts.Log)
	}
	drv, err := l.local.ReadDerivation(ctx, req.DrvPath)
	if err != nil {
		return nil, err
	}
	// As build-remote, a derivation with input derivations is sent with
	// the whole input closure Nix gave as its input sources (those without
	// keep theirs, so that content-addressed output ids do not change).
	if len(drv.InputDrvs) > 0 {
		drv = drv.Clone()
		drv.InputSrcs = append([]storepath.Path(nil), req.Inputs...)
		storepath.Sort(drv.InputSrcs)
	}
	reply := &hookapi.BuildReply{Machine: m.URI}
	fail := func(msg string) (*hookapi.BuildReply, error) {
		reply.Message = fmt.Sprintf("build of '%s' on '%s' failed: %s", req.DrvPath, m.URI, msg)
		reply.Duration = time.Since(start)
		return reply, nil
	}

	// The inputs, under the machine's upload lock, which Nix waits 15
	// minutes for and then goes on without.
	if err := l.upload(ctx, m, sess, req.Inputs); err != nil {
		var me *remote.MachineError
		if errors.As(err, &me) {
			return fail(me.Err.Error())
		}
		return nil, err
	}

	// The nix process that runs the hook holds the outputs' path locks
	// while it waits: copying them back must not take them again.
	var outs []storepath.Path
	for _, p := range drv.OutputPaths() {
		if p != "" {
			outs = append(outs, p)
		}
	}
	defer l.local.LocksHeld(outs...)()
	step := &remote.Step{DrvPath: req.DrvPath, Drv: drv, Outputs: l.outputsOf(ctx), Settings: l.cfg.BuildSettings(), Log: log}
	done := l.activity(LvlTalkative, fmt.Sprintf("building on '%s'", m.URI))
	res, err := remote.BuildOn(ctx, l.local, m.URI, sess, step)
	done()
	if err != nil {
		var me *remote.MachineError
		if errors.As(err, &me) {
			return fail(me.Err.Error())
		}
		return nil, err
	}
	if !res.Result.Status.Success() {
		return fail(res.Result.ErrorMsg)
	}
	if err := remote.RegisterRealisations(ctx, l.local, l.cfg.Settings, req.DrvPath, drv, res.Outputs); err != nil {
		return fail(err.Error())
	}
	reply.Success = true
	reply.Duration = time.Since(start)
	return reply, nil
}

// upload copies the inputs the machine lacks while holding its upload
// lock.
func (l *Local) upload(ctx context.Context, m *machines.Machine, sess remote.Session, inputs []storepath.Path) error {
	done := l.activity(LvlTalkative, fmt.Sprintf("waiting for the upload lock to '%s'", m.URI))
	release, err := remote.UploadLock(l.load, m, l.opts.UploadWait, func(msg string) { l.message(LvlError, msg) })(ctx)
	done()
	if err != nil {
		return err
	}
	defer release()
	done = l.activity(LvlTalkative, fmt.Sprintf("copying dependencies to '%s'", m.URI))
	defer done()
	if _, err := storecopy.Copy(ctx, l.local, sess, inputs, &storecopy.Options{Substitute: l.cfg.Settings.BuildersUseSubstitutes}); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &remote.MachineError{Machine: m.URI, Err: fmt.Errorf("copy the inputs: %w", err)}
	}
	return nil
}

func (l *Local) outputsOf(ctx context.Context) func(storepath.Path) (map[string]storepath.Path, error) {
	return func(p storepath.Path) (map[string]storepath.Path, error) {
		d, err := l.local.ReadDerivation(ctx, p)
		if err != nil {
			return nil, err
		}
		return d.OutputPaths(), nil
	}
}

// Release closes the machine's session and frees the slot.
func (l *Local) Release() error {
	l.mu.Lock()
	slot, sess := l.slot, l.sess
	l.slot, l.sess = nil, nil
	l.mu.Unlock()
	var err error
	if sess != nil {
		err = sess.Close()
	}
	if rerr := slot.Release(); err == nil {
		err = rerr
	}
	return err
}

// storeFeatures are the local store's system features (its URI's
// system-features=, else the setting), as Nix's Store::systemFeatures.
func storeFeatures(st *localstore.Store, s *settings.Settings) []string {
	if f := st.SystemFeatures(); f != nil {
		return f
	}
	return s.SystemFeatures
}
