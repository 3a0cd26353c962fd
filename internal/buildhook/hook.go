// Package buildhook is ferry build-hook: a drop-in for Nix 2.8's build
// hook (the build-hook setting, by default build-remote), which a nix
// process runs to have derivations built on other machines
// (src/libstore/build/hook-instance.cc@2.8.0,
// src/libstore/build/derivation-goal.cc@2.8.0 tryBuildHook,
// src/build-remote/build-remote.cc@2.8.0; docs/protocol.md §7.1 and
// §13).
//
// Nix starts the hook as [basename(hook), VERBOSITY] with its stdin a
// pipe from Nix, stdout and stderr one pipe to Nix (replies and
// messages), and fd 4 the build log (what Nix shows as the build's
// output and counts against max-log-size). Run speaks that protocol:
// the settings records, then tries answered "# accept" (and the
// machine), "# decline", "# decline-permanently" or "# postpone", and
// after an accept the inputs and wanted outputs, then the build; the
// exit status says how it went, and Nix checks the outputs are valid.
//
// Where a build goes is a hookapi.Scheduler's decision: the long-lived
// ferry scheduler's when one runs (Options.Connect), else Local, the
// hook's own placement, which is build-remote's.
package buildhook

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"time"

	"ferry/internal/hookapi"
	"ferry/internal/localstore"
	"ferry/internal/machines"
	"ferry/internal/settings"
	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

// Config is what the hook takes from the settings records Nix sent.
type Config struct {
	// Settings are nix.conf's with Nix's records applied, max-jobs forced
	// to 1 as build-remote does.
	Settings *settings.Settings
	// Store is the "store" setting: the client's store, where the .drv
	// is and the outputs go ("auto" by default).
	Store string
	// ConnectTimeout is connect-timeout (0: the ssh store's default).
	ConnectTimeout time.Duration
	// BuildRepeat and EnforceDeterminism are repeat and
	// enforce-determinism, sent with every build.
	BuildRepeat        uint64
	EnforceDeterminism bool
	// Sent is every record, by name.
	Sent map[string]string
}

// settingAliases are Nix 2.8 setting names that internal/settings knows
// by another of their names.
var settingAliases = map[string]string{
	"max-build-log-size": "max-log-size",
}

// travelling are the settings that go with a build to a scheduler
// (hookapi.TryRequest.Settings), by Nix's names.
var travelling = []string{"max-silent-time", "timeout", "max-build-log-size", "cores", "repeat",
	"enforce-determinism", "keep-failed", "builders-use-substitutes", "connect-timeout", "system",
	"system-features", "extra-platforms", "sandbox", "experimental-features"}

// NewConfig applies the records to base (nix.conf's settings; nil means
// the defaults) as build-remote's settings.set does. A value ferry cannot
// read is reported to warn and skipped.
func NewConfig(base *settings.Settings, records []Setting, warn func(string)) *Config {
	if base == nil {
		base = settings.Default()
	}
	s := *base
	c := &Config{Settings: &s, Sent: map[string]string{}}
	for _, r := range records {
		c.Sent[r.Name] = r.Value
		var err error
		switch r.Name {
		case "store":
			c.Store = r.Value
		case "connect-timeout":
			var n uint64
			if n, err = strconv.ParseUint(r.Value, 10, 32); err == nil {
				c.ConnectTimeout = time.Duration(n) * time.Second
			}
		case "repeat", "build-repeat":
			c.BuildRepeat, err = strconv.ParseUint(r.Value, 10, 64)
		case "enforce-determinism":
			c.EnforceDeterminism, err = settings.ParseBool(r.Name, r.Value)
		default:
			name := r.Name
			if a, ok := settingAliases[name]; ok {
				name = a
			}
			err = s.Set(name, r.Value)
		}
		if err != nil && warn != nil {
			warn(fmt.Sprintf("ignoring the setting '%s' = '%s' from Nix: %v", r.Name, r.Value, err))
		}
	}
	s.MaxJobs = 1 // as build-remote: "hack to make tests with local?root= work"
	return c
}

// BuildSettings are the settings Nix's legacy ssh store sends with a
// build (src/libstore/legacy-ssh-store.cc@2.8.0 putBuildSettings).
func (c *Config) BuildSettings() *store.BuildSettings {
	s := c.Settings
	return &store.BuildSettings{MaxSilentTime: s.MaxSilentTime, Timeout: s.Timeout, MaxLogSize: s.MaxLogSize,
		BuildRepeat: c.BuildRepeat, EnforceDeterminism: c.EnforceDeterminism, KeepFailed: s.KeepFailed}
}

// travellingSettings are the records that go with a try to a scheduler.
func (c *Config) travellingSettings() map[string]string {
	m := map[string]string{}
	for _, n := range travelling {
		if v, ok := c.Sent[n]; ok {
			m[n] = v
		}
	}
	return m
}

// ErrNoScheduler is what Options.Connect returns (wrapped) when no ferry
// scheduler runs: the hook then places builds itself (Local).
var ErrNoScheduler = errors.New("no ferry scheduler is running")

// Options configure Run.
type Options struct {
	// Stdin is the pipe from Nix; Stderr the pipe to it (replies and
	// messages); Log the build log (fd 4).
	Stdin  io.Reader
	Stderr io.Writer
	Log    io.Writer
	// Verbosity is the hook's argv[1]: messages above it are dropped.
	Verbosity int
	// Settings gives the settings the records apply to (nix.conf's);
	// nil means settings.Load(nil).
	Settings func() (*settings.Settings, error)
	// Connect opens the ferry scheduler serving the client store whose
	// state directory is stateDir. An error wrapping ErrNoScheduler means
	// none runs; any error makes the hook place builds itself. Nil: the
	// hook always does.
	Connect func(ctx context.Context, stateDir string) (hookapi.Scheduler, error)
	// Open opens stores (the client's and the machines'); nil means
	// store.Open.
	Open func(ctx context.Context, uri string, opts *store.OpenOptions) (store.Store, error)
	// UploadWait is Local's (zero: 15 minutes).
	UploadWait time.Duration
}

// Run is one run of the hook: it returns the exit status, 0 when Nix
// ended the session or the accepted build succeeded, 1 (with Nix's
// "error: …" message on Stderr) when it failed.
func Run(ctx context.Context, o *Options) int {
	lg := newLogger(o.Stderr, o.Verbosity)
	if err := run(ctx, o, lg); err != nil {
		lg.errorInfo(err.Error())
		return 1
	}
	return 0
}

// buildFailed is an accepted build that failed, already described.
type buildFailed struct{ msg string }

func (b *buildFailed) Error() string { return b.msg }

func run(ctx context.Context, o *Options, lg *logger) error {
	in := wire.NewReader(bufio.NewReader(o.Stdin))
	records, err := ReadSettings(in)
	if err != nil {
		return err
	}
	load := o.Settings
	if load == nil {
		load = func() (*settings.Settings, error) { return settings.Load(nil) }
	}
	base, err := load()
	if err != nil {
		return err
	}
	cfg := NewConfig(base, records, func(m string) { lg.msg(LvlWarn, "warning: "+m) })

	// As build-remote: no machines at all, and Nix stops asking, before
	// it has asked anything.
	ms, err := machines.Parse(cfg.Settings.Builders, cfg.Settings.System)
	if err != nil {
		return err
	}
	if len(ms) == 0 {
		return WriteReply(o.Stderr, hookapi.DeclinePermanently, "")
	}

	open := o.Open
	if open == nil {
		open = store.Open
	}
	st, err := open(ctx, cfg.Store, &store.OpenOptions{Log: o.Stderr, ConnectTimeout: cfg.ConnectTimeout})
	if err != nil {
		return err
	}
	defer st.Close()
	local, ok := st.(*localstore.Store)
	if !ok {
		return fmt.Errorf("ferry build-hook needs a local store, not '%s'", cfg.Store)
	}

	first, err := connect(ctx, o, cfg, local, lg)
	if err != nil {
		return err
	}
	sched := hookapi.NewResilient(first,
		func(ctx context.Context) (hookapi.Scheduler, error) { return reconnect(ctx, o, cfg, local, lg) },
		func(m string) { lg.msg(LvlWarn, m) })
	defer sched.Release()

	features := storeFeatures(local, cfg.Settings)
	var drvPath storepath.Path
	for {
		t, err := ReadTry(in)
		if err == ErrEnd {
			return nil
		}
		if err != nil {
			return err
		}
		if drvPath, err = local.Dir().Parse(t.DrvPath); err != nil {
			return err
		}
		req := &hookapi.TryRequest{Store: cfg.Store, Builders: cfg.Settings.Builders, AmWilling: t.AmWilling,
			System: t.System, DrvPath: drvPath, Features: t.Features, Settings: cfg.travellingSettings()}
		rep, err := sched.Try(ctx, req)
		if err != nil {
			return err
		}
		if rep.Message != "" {
			// build-remote warns when the build cannot go anywhere, and
			// says it only at chatty level when it can run locally.
			level := LvlWarn
			if rep.Decision == hookapi.Decline && CanBuildLocally(cfg.Settings, features, req) {
				level = LvlChatty
			}
			lg.msg(level, rep.Message)
		}
		if err := WriteReply(o.Stderr, rep.Decision, rep.Machine); err != nil {
			return err
		}
		switch rep.Decision {
		case hookapi.DeclinePermanently:
			return nil
		case hookapi.Accept:
			return build(ctx, o, sched, local, drvPath, rep.Machine, in)
		}
	}
}

// connect opens the ferry scheduler, or the in-process one when none
// answers.
func connect(ctx context.Context, o *Options, cfg *Config, local *localstore.Store, lg *logger) (hookapi.Scheduler, error) {
	if o.Connect != nil {
		sched, err := o.Connect(ctx, local.StateDir())
		if err == nil {
			return sched, nil
		}
		if errors.Is(err, ErrNoScheduler) {
			lg.msg(LvlChatty, fmt.Sprintf("placing builds in the hook: %v", err))
		} else {
			lg.msg(LvlWarn, fmt.Sprintf("warning: placing builds in the hook: %v", err))
		}
	}
	return NewLocal(local, cfg, &LocalOptions{
		ConnectTimeout: cfg.ConnectTimeout,
		Log:            o.Log,
		Message:        lg.msg,
		Activity:       lg.activity,
		UploadWait:     o.UploadWait,
		Open:           o.Open,
	})
}

// restartWait is how long a hook that lost its scheduler waits for one
// to answer again (a service manager restarting it) before it places the
// build itself.
const restartWait = 5 * time.Second

// reconnect is connect after the scheduler was lost: it waits up to
// restartWait for a scheduler to answer, then falls back as connect does.
func reconnect(ctx context.Context, o *Options, cfg *Config, local *localstore.Store, lg *logger) (hookapi.Scheduler, error) {
	if o.Connect != nil {
		for deadline := time.Now().Add(restartWait); time.Now().Before(deadline); {
			sched, err := o.Connect(ctx, local.StateDir())
			if err == nil {
				return sched, nil
			}
			if !errors.Is(err, ErrNoScheduler) {
				break
			}
			select {
			case <-time.After(250 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	return connect(ctx, o, cfg, local, lg)
}

// build reads what follows an accept and runs the build.
func build(ctx context.Context, o *Options, sched hookapi.Scheduler, local *localstore.Store, drvPath storepath.Path, machine string, in *wire.Reader) error {
	acc, err := ReadAccepted(in)
	if err != nil {
		return err
	}
	req := &hookapi.BuildRequest{DrvPath: drvPath, WantedOutputs: acc.WantedOutputs}
	for _, s := range acc.Inputs {
		p, err := local.Dir().Parse(s)
		if err != nil {
			return err
		}
		req.Inputs = append(req.Inputs, p)
	}
	rep, err := sched.Build(ctx, req, o.Log)
	if err != nil {
		return fmt.Errorf("build of '%s' on '%s' failed: %w", drvPath, machine, err)
	}
	if !rep.Success {
		msg := rep.Message
		if msg == "" {
			msg = fmt.Sprintf("build of '%s' on '%s' failed", drvPath, machine)
		}
		return &buildFailed{msg: msg}
	}
	return nil
}

// drvName is a derivation's store path without its directory, as
// build-remote names it in its messages.
func drvName(p storepath.Path) string { return path.Base(string(p)) }
