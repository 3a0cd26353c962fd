package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"ferry/internal/gc"
	"ferry/internal/localstore"
	"ferry/internal/settings"
)

func init() {
	register(&command{name: "gc", args: "[--dry-run] [--max-freed BYTES] [--print-dead|--print-live] [--keep-outputs]", summary: "delete unreachable store paths (as nix-store --gc)", run: cmdGC})
	register(&command{name: "store delete", args: "PATH...", summary: "delete store paths that nothing keeps alive (as nix-store --delete)", run: cmdStoreDelete})
	register(&command{name: "store add-root", args: "LINK PATH", summary: "make LINK a symlink to PATH that keeps it from garbage collection (as nix-store --add-root)", run: cmdStoreAddRoot})
}

// gcArgs are the options of ferry gc.
type gcArgs struct {
	dryRun, printDead, printLive bool
	keepOutputs                  bool
	maxFreed                     uint64 // 0: no limit
	freeNothing                  bool   // --max-freed 0: Nix deletes nothing
	paths                        []string
	// conf supplies keep-outputs (after the flag), keep-derivations and
	// gc-reserved-space.
	conf *settings.Settings
}

func cmdGC(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "gc")
	var a gcArgs
	var maxFreed string
	fs.BoolVar(&a.dryRun, "dry-run", false, "show how much would be freed, delete nothing")
	fs.BoolVar(&a.printDead, "print-dead", false, "print the paths that would be deleted, delete nothing")
	fs.BoolVar(&a.printLive, "print-live", false, "print the paths that are kept, delete nothing")
	fs.BoolVar(&a.keepOutputs, "keep-outputs", false, "keep the outputs of live derivations (default: nix.conf keep-outputs)")
	fs.StringVar(&maxFreed, "max-freed", "", "stop after freeing more than `BYTES` (suffixes K, M, G, T)")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) > 0 {
		return usagef("gc takes no operands")
	}
	if a.conf, err = settings.Load(nil); err != nil {
		return err
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "keep-outputs" {
			a.conf.KeepOutputs = a.keepOutputs
		}
	})
	if a.printDead && a.printLive {
		return usagef("--print-dead and --print-live exclude each other")
	}
	if maxFreed != "" {
		if a.maxFreed, err = parseBytes(maxFreed); err != nil {
			return usagef("--max-freed: %v", err)
		}
		a.freeNothing = a.maxFreed == 0
	}
	return runGC(ctx, e, &a)
}

func cmdStoreDelete(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "store delete")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) == 0 {
		return usagef("store delete needs at least one PATH")
	}
	conf, err := settings.Load(nil)
	if err != nil {
		return err
	}
	return runGC(ctx, e, &gcArgs{paths: ops, conf: conf})
}

// parseBytes reads a byte count with an optional binary suffix, as Nix's
// string2IntWithUnitPrefix does.
func parseBytes(s string) (uint64, error) {
	mult := uint64(1)
	if n := len(s); n > 0 {
		switch strings.ToUpper(s[n-1:]) {
		case "K":
			mult = 1 << 10
		case "M":
			mult = 1 << 20
		case "G":
			mult = 1 << 30
		case "T":
			mult = 1 << 40
		}
		if mult != 1 {
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid byte count %q", s)
	}
	if v > ^uint64(0)/mult {
		return 0, fmt.Errorf("byte count %q is too large", s)
	}
	return v * mult, nil
}

func runGC(ctx context.Context, e *Env, a *gcArgs) error {
	conf := a.conf
	return withConfiguredStore(ctx, e, conf, func(st *localstore.Store) error {
		paths, err := parsePaths(st, a.paths)
		if err != nil {
			return err
		}
		opts := &gc.Options{
			DryRun:             a.dryRun || a.printDead || a.printLive,
			MaxFreed:           a.maxFreed,
			KeepOutputs:        conf.KeepOutputs,
			DiscardDerivations: !conf.KeepDerivations,
			Paths:              paths,
			Log:                e.Stderr,
		}
		c, err := gc.Plan(ctx, st, opts)
		if err != nil {
			return err
		}
		switch {
		case a.printDead:
			c.Close()
			var names []string
			for _, d := range c.Dead {
				names = append(names, d.String())
			}
			return printSorted(e.Stdout, names)
		case a.printLive:
			c.Close()
			var names []string
			for _, p := range c.Live {
				names = append(names, p.String())
			}
			return printSorted(e.Stdout, names)
		}
		if a.freeNothing {
			c.Close()
			_, err := fmt.Fprintln(e.Stdout, (&gc.Result{}).Summary(a.dryRun))
			return err
		}
		res, err := gc.Execute(ctx, c)
		if res != nil && (err == nil || len(res.Deleted) > 0) {
			fmt.Fprintln(e.Stdout, res.Summary(a.dryRun))
		}
		return err
	})
}

func printSorted(w io.Writer, lines []string) error {
	sort.Strings(lines)
	for _, l := range lines {
		if _, err := fmt.Fprintln(w, l); err != nil {
			return err
		}
	}
	return nil
}

func cmdStoreAddRoot(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "store add-root")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) != 2 {
		return usagef("store add-root needs LINK and PATH")
	}
	return withStore(ctx, e, func(st *localstore.Store) error {
		ps, err := parsePaths(st, ops[1:])
		if err != nil {
			return err
		}
		link, err := gc.AddRoot(ctx, st, ops[0], ps[0])
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(e.Stdout, link)
		return err
	})
}

// autoCollector is the automatic collector nix.conf's min-free and
// max-free ask for, or nil when min-free is 0. Like Nix it honours
// _NIX_TEST_FREE_SPACE_FILE, a file holding the free space to assume, so
// that tests need no full disk.
func autoCollector(e *Env, st *localstore.Store, conf *settings.Settings) *gc.AutoCollector {
	if conf.MinFree == 0 {
		return nil
	}
	opts := &gc.AutoOptions{
		MinFree:            conf.MinFree,
		MaxFree:            conf.MaxFree,
		CheckInterval:      conf.MinFreeCheckInterval,
		KeepOutputs:        conf.KeepOutputs,
		DiscardDerivations: !conf.KeepDerivations,
		Log:                e.Stderr,
	}
	if fake := os.Getenv("_NIX_TEST_FREE_SPACE_FILE"); fake != "" {
		opts.FreeSpace = func() (uint64, error) {
			b, err := os.ReadFile(fake)
			if err != nil {
				return 0, err
			}
			n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read %s: %w", fake, err)
			}
			return n, nil
		}
	}
	return gc.NewAuto(st, opts)
}
