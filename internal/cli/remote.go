package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"ferry/internal/hookapi"
	"ferry/internal/localstore"
	"ferry/internal/machines"
	"ferry/internal/remote"
	"ferry/internal/schedd"
	"ferry/internal/settings"
	"ferry/nix/storepath"
)

// runRemoteBuild realises the derivations ops on the build machines ms
// and, with -j N > 0, locally (internal/remote), printing the roots'
// output paths, or with --json every derivation's machine, status,
// outputs and times.
func runRemoteBuild(ctx context.Context, e *Env, st *localstore.Store, ops []string, s *settings.Settings, ms []*machines.Machine, builders string, f *buildFlags) error {
	roots, err := parseDrvPaths(st, ops)
	if err != nil {
		return err
	}
	opts := &remote.Options{
		Machines:       ms,
		LocalJobs:      s.MaxJobs,
		KeepGoing:      f.keepGoing,
		Settings:       s,
		ConnectTimeout: e.ConnectTimeout,
		Log:            e.Stderr,
		LogDir:         f.logDir,
		Messages:       e.Stderr,
	}
	// A ferry scheduler serving this store places the remote builds, as
	// it does the build hook's (FERRY_SCHEDULER=off: never).
	if os.Getenv("FERRY_SCHEDULER") != "off" {
		if open, err := schedd.Dial(schedd.SocketPath(st.StateDir())); err == nil {
			opts.Daemon = func(context.Context) (hookapi.Scheduler, error) { return open() }
			opts.Builders = builders
			opts.StoreURI = e.Store
			if opts.StoreURI == "" {
				opts.StoreURI = st.Root()
			}
			if opts.StoreURI == "" {
				opts.StoreURI = "local"
			}
			if e.Verbose {
				fmt.Fprintf(e.Stderr, "remote builds go through the ferry scheduler at %s\n", schedd.SocketPath(st.StateDir()))
			}
		}
	}
	var display *buildDisplay
	if isTerminal(e.Stderr) && !f.json {
		var order []string
		for _, m := range ms {
			order = append(order, m.URI)
		}
		order = append(order, remote.DaemonMachine, remote.LocalMachine)
		names := remote.MachineNames(ms)
		names[remote.DaemonMachine] = "ferry scheduler"
		display = newBuildDisplay(e.Stderr, names, order, terminalWidth(e.Stderr))
		opts.Progress = display
		opts.Log = display.logWriter()
		opts.Messages = opts.Log
	}
	results, err := remote.Build(ctx, st, roots, opts)
	if display != nil {
		display.finish()
	}
	if results == nil {
		return err
	}
	if f.json {
		list := make([]*remote.Result, 0, len(results))
		for _, r := range results {
			list = append(list, r)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].DrvPath < list[j].DrvPath })
		out, jerr := json.Marshal(list)
		if jerr != nil {
			return jerr
		}
		fmt.Fprintf(e.Stdout, "%s\n", out)
	} else {
		for _, p := range roots {
			r := results[p]
			if r == nil || !r.Success() {
				continue
			}
			names := make([]string, 0, len(r.Outputs))
			for n := range r.Outputs {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				fmt.Fprintln(e.Stdout, r.Outputs[n])
			}
		}
	}
	if err != nil {
		var failed []storepath.Path
		for _, p := range roots {
			if r := results[p]; r == nil || !r.Success() {
				failed = append(failed, p)
			}
		}
		if errors.Is(err, context.Canceled) || len(failed) == 0 {
			return err
		}
		return &buildExitError{msg: err.Error(), code: 100}
	}
	return nil
}
