package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"time"

	"ferry/internal/localstore"
	"ferry/internal/machines"
	"ferry/internal/schedd"
	"ferry/internal/settings"
)

func init() {
	register(&command{name: "scheduler", args: "[--state-dir D] [--metrics 127.0.0.1:PORT] [--builders SPEC | --machines FILE] [--queue-wait D]",
		summary: "run the long-lived build scheduler that ferry build-hook asks for machines (socket D/ferry-scheduler.sock)", run: cmdScheduler})
	register(&command{name: "status", args: "[--state-dir D] [--json]",
		summary: "show the ferry scheduler's machines, load, running builds and recent failures", run: cmdStatus})
}

// stateDirOf is the default state directory: the store's.
func stateDirOf(ctx context.Context, e *Env, s *settings.Settings) (string, error) {
	var dir string
	err := withConfiguredStore(ctx, e, s, func(st *localstore.Store) error {
		dir = st.StateDir()
		return nil
	})
	return dir, err
}

func cmdScheduler(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "scheduler")
	stateDir := fs.String("state-dir", "", "where the socket, lock and state file live (default: the store's state directory, e.g. DIR/nix/var/nix)")
	metrics := fs.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics (a loopback address, e.g. 127.0.0.1:9732)")
	builders := fs.String("builders", "", "build machines, in Nix's machines format (default: nix.conf builders), for clients that name none")
	machinesFile := fs.String("machines", "", "read the build machines from FILE (as --builders @FILE)")
	queueWait := fs.Duration("queue-wait", 2*time.Second, "how long a request waits for a busy machine before Nix is told to postpone")
	backoff := fs.Duration("backoff", 10*time.Second, "first back-off of a machine that failed (doubling, up to 10m)")
	connTimeout := fs.Duration("connect-timeout", 0, "how long a build machine may take to answer (default 10s)")
	idleExit := fs.Duration("idle-exit", 0, "exit once no client has been connected for this long (0: never); a scheduler a build hook starts uses 60s")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) > 0 {
		return usagef("scheduler takes no operands")
	}
	s, err := settings.Load(nil)
	if err != nil {
		return err
	}
	spec := s.Builders
	fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "builders":
			spec = *builders
		case "machines":
			spec = "@" + *machinesFile
		}
	})
	ms, err := machines.Parse(spec, s.System)
	if err != nil {
		return err
	}
	if *stateDir == "" {
		if *stateDir, err = stateDirOf(ctx, e, s); err != nil {
			return err
		}
	}
	if *connTimeout <= 0 {
		*connTimeout = e.ConnectTimeout
	}
	qw := *queueWait
	if qw == 0 {
		qw = -1
	}
	d, err := schedd.Listen(schedd.Options{StateDir: *stateDir, Machines: ms, MetricsAddr: *metrics, QueueWait: qw,
		BackoffBase: *backoff, ConnectTimeout: *connTimeout, Log: e.Stderr, IdleExit: *idleExit, TrustedUsers: s.TrustedUsers})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stderr, "ferry scheduler: listening on %s with %d machines\n", d.SocketPath(), len(ms))
	if a := d.MetricsAddr(); a != "" {
		fmt.Fprintf(e.Stderr, "ferry scheduler: metrics on http://%s/metrics\n", a)
	}
	return d.Serve(ctx)
}

func cmdStatus(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "status")
	stateDir := fs.String("state-dir", "", "the scheduler's state directory (default: the store's state directory)")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) > 0 {
		return usagef("status takes no operands")
	}
	if *stateDir == "" {
		s, err := settings.Load(nil)
		if err != nil {
			return err
		}
		if *stateDir, err = stateDirOf(ctx, e, s); err != nil {
			return err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := schedd.GetStatus(cctx, schedd.SocketPath(*stateDir))
	if err != nil {
		return err
	}
	if *asJSON {
		b, err := json.Marshal(st)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.Stdout, "%s\n", b)
		return nil
	}
	return schedd.WriteStatus(e.Stdout, st)
}
