package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"sort"
	"strings"
	"time"

	"ferry/internal/build"
	"ferry/internal/localstore"
	"ferry/internal/machines"
	"ferry/internal/settings"
	"ferry/nix/storepath"
	"ferry/store"
)

func init() {
	register(&command{name: "build", args: "[--builders SPEC | --machines FILE] [-j N] [--keep-going] [--log-dir D] [--connect-timeout D] [--keep-failed] [--max-silent-time S] [--timeout S] [--max-log-size N] [--cores N] [--sandbox=BOOL] [--json] DRV...",
		summary: "build .drv files in the store and their dependencies, on build machines or locally, printing the output paths (as nix-build/nix-store -r)", run: cmdBuild})
}

// buildExitError carries nix-build's exit status for failed builds:
// 100, plus 1 if one timed out, 2 if a fixed-output hash mismatched.
type buildExitError struct {
	msg  string
	code int
}

func (b *buildExitError) Error() string { return b.msg }
func (b *buildExitError) ExitCode() int { return b.code }

// buildFlags are the command's settings flags; each overrides nix.conf
// only when given.
type buildFlags struct {
	jobs          int
	keepFailed    bool
	maxSilentTime int
	timeout       int
	maxLogSize    uint64
	cores         int
	sandbox       string
	json          bool
	builders      string
	machinesFile  string
	keepGoing     bool
	logDir        string
	connTimeout   time.Duration
}

func cmdBuild(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "build")
	var f buildFlags
	fs.IntVar(&f.jobs, "j", 0, "run up to N builds at once (default: nix.conf max-jobs)")
	fs.IntVar(&f.jobs, "max-jobs", 0, "same as -j")
	fs.BoolVar(&f.keepFailed, "keep-failed", false, "keep the build directory of a failed build")
	fs.BoolVar(&f.keepFailed, "K", false, "same as --keep-failed")
	fs.IntVar(&f.maxSilentTime, "max-silent-time", 0, "kill a builder silent for S seconds (0: never)")
	fs.IntVar(&f.timeout, "timeout", 0, "kill a builder running for S seconds (0: never)")
	fs.Uint64Var(&f.maxLogSize, "max-log-size", 0, "kill a builder writing more than N bytes of log (0: no limit)")
	fs.IntVar(&f.cores, "cores", 0, "NIX_BUILD_CORES for builders")
	fs.StringVar(&f.sandbox, "sandbox", "", "true, false or relaxed: run builders in a sandbox (forced for a store not at /nix/store)")
	fs.BoolVar(&f.json, "json", false, "print the results as JSON")
	fs.StringVar(&f.builders, "builders", "", "build machines, in Nix's machines format (default: nix.conf builders)")
	fs.StringVar(&f.machinesFile, "machines", "", "read the build machines from FILE (as --builders @FILE)")
	fs.BoolVar(&f.keepGoing, "keep-going", false, "after a failed build, go on with everything that does not depend on it")
	fs.BoolVar(&f.keepGoing, "k", false, "same as --keep-going")
	fs.StringVar(&f.logDir, "log-dir", "", "with build machines: write each build's log to D/<drv>.log")
	fs.DurationVar(&f.connTimeout, "connect-timeout", 0, "how long a build machine may take to answer (default 10s)")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) == 0 {
		return usagef("build needs at least one DRV")
	}
	s, err := settings.Load(nil)
	if err != nil {
		return err
	}
	if err := applyBuildFlags(fs, &f, s); err != nil {
		return err
	}
	builders := s.Builders
	fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "builders":
			builders = f.builders
		case "machines":
			builders = "@" + f.machinesFile
		}
	})
	if f.connTimeout > 0 {
		e.ConnectTimeout = f.connTimeout
	}
	ms, err := machines.Parse(builders, s.System)
	if err != nil {
		return err
	}
	return withConfiguredStore(ctx, e, s, func(st *localstore.Store) error {
		if len(ms) > 0 {
			return runRemoteBuild(ctx, e, st, ops, s, ms, builders, &f)
		}
		return runBuild(ctx, e, st, ops, s, f.json)
	})
}

// applyBuildFlags overrides s with the flags that were given.
func applyBuildFlags(fs *flag.FlagSet, f *buildFlags, s *settings.Settings) error {
	var err error
	fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "j", "max-jobs":
			s.MaxJobs = f.jobs
		case "keep-failed", "K":
			s.KeepFailed = f.keepFailed
		case "max-silent-time":
			s.MaxSilentTime = time.Duration(f.maxSilentTime) * time.Second
		case "timeout":
			s.Timeout = time.Duration(f.timeout) * time.Second
		case "max-log-size":
			s.MaxLogSize = f.maxLogSize
		case "cores":
			s.Cores = f.cores
		case "sandbox":
			if e := s.Set("sandbox", f.sandbox); e != nil {
				err = usagef("--sandbox: %v", e)
			}
		}
	})
	if f.maxSilentTime < 0 || f.timeout < 0 || f.cores < 0 || f.jobs < 0 {
		return usagef("build: negative limits are not allowed")
	}
	return err
}

// buildResultJSON is one element of --json: nix build --json's drvPath and
// outputs, plus the status and message.
type buildResultJSON struct {
	DrvPath  string            `json:"drvPath"`
	Outputs  map[string]string `json:"outputs"`
	Status   string            `json:"status"`
	ErrorMsg string            `json:"errorMsg,omitempty"`
}

// runBuild realises the derivations ops (store paths of .drv files) and
// their dependencies, printing the output paths of ops in order (or JSON).
// Builder logs go to standard error.
func runBuild(ctx context.Context, e *Env, st *localstore.Store, ops []string, s *settings.Settings, asJSON bool) error {
	roots, err := parseDrvPaths(st, ops)
	if err != nil {
		return err
	}
	s = build.ForStore(st, s)
	opts := &build.Options{Settings: s, Log: e.Stderr}
	if auto := autoCollector(e, st, s); auto != nil {
		opts.AutoGC = auto.Check
		// The store closes after this: let a running collection end.
		defer auto.Wait()
	}
	results, err := build.BuildGraph(ctx, st, roots, s.MaxJobs, opts)
	if err != nil {
		return err
	}
	// Every failure that is not only a consequence of another is reported.
	var failedRoots []string
	code := 100
	for _, r := range results {
		if r.Status.Success() || r.Status == store.DependencyFailed {
			continue
		}
		fmt.Fprintf(e.Stderr, "error: %s\n", r.ErrorMsg)
		if r.Status == store.TimedOut {
			code |= 1
		}
		if strings.Contains(r.ErrorMsg, "hash mismatch in fixed-output derivation") {
			code |= 2
		}
	}
	var list []buildResultJSON
	for _, p := range roots {
		r := results[p]
		if !r.Status.Success() {
			failedRoots = append(failedRoots, string(p))
		}
		j := buildResultJSON{DrvPath: string(p), Outputs: map[string]string{}, Status: r.Status.String(), ErrorMsg: r.ErrorMsg}
		names := make([]string, 0, len(r.BuiltOutputs))
		for name, out := range r.BuiltOutputs {
			j.Outputs[name] = string(out)
			names = append(names, name)
		}
		list = append(list, j)
		if !asJSON && r.Status.Success() {
			sort.Strings(names)
			for _, name := range names {
				fmt.Fprintln(e.Stdout, r.BuiltOutputs[name])
			}
		}
	}
	if asJSON {
		out, err := json.Marshal(list)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.Stdout, "%s\n", out)
	}
	if len(failedRoots) > 0 {
		msg := "build of '" + strings.Join(failedRoots, "', '") + "' failed"
		return &buildExitError{msg: msg, code: code}
	}
	return nil
}

// parseDrvPaths parses ops as store paths of .drv files in st.
func parseDrvPaths(st store.Store, ops []string) ([]storepath.Path, error) {
	roots, err := parsePaths(st, ops)
	if err != nil {
		return nil, err
	}
	for _, p := range roots {
		if !p.IsDerivation() {
			return nil, usagef("'%s' is not a derivation (.drv) path", p)
		}
	}
	return roots, nil
}
