// Package cli is ferry's command tree: global flags, one file per command
// group, and the one place that turns errors into exit codes. Each command
// splits flag parsing from a run function that tests call directly.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Env is what a command may touch of the outside world.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Store is the value of the global --store flag ("" if not given).
	Store string
	// Verbose is set by the global -v flag.
	Verbose bool
	// ConnectTimeout is the global --connect-timeout (zero: each store's
	// default).
	ConnectTimeout time.Duration
}

// command is one leaf of the command tree.
type command struct {
	name    string // "nar dump"
	args    string // synopsis of the operands
	summary string
	run     func(ctx context.Context, e *Env, args []string) error
}

var commands []*command

func register(c *command) { commands = append(commands, c) }

// usageError is an error in how ferry was called; it exits with status 2.
type usageError struct{ msg string }

func (u *usageError) Error() string { return u.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// silentExit is an exit status whose reason was already said (in the
// command's own words, as ferry build-hook says it to Nix).
type silentExit struct{ code int }

func (s *silentExit) Error() string { return fmt.Sprintf("exit status %d", s.code) }

// Main runs ferry with args (without the program name) and returns the
// exit status.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := &Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	return Run(ctx, e, args)
}

// Run is Main with an explicit environment.
func Run(ctx context.Context, e *Env, args []string) int {
	err := dispatch(ctx, e, args)
	return report(e.Stderr, err)
}

// report prints err the way Nix does ("error: ...") and maps it to an
// exit status: 0 for success, 2 for usage errors, 1 otherwise.
func report(stderr io.Writer, err error) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var silent *silentExit
	if errors.As(err, &silent) {
		return silent.code
	}
	fmt.Fprintf(stderr, "error: %v\n", err)
	var u *usageError
	if errors.As(err, &u) {
		fmt.Fprintln(stderr, "Try 'ferry help' for more information.")
		return 2
	}
	var x interface{ ExitCode() int }
	if errors.As(err, &x) && x.ExitCode() != 0 {
		return x.ExitCode()
	}
	return 1
}

// globalFlags removes the global options from args, wherever they stand
// before a "--": --store X, --store=X and -v/--verbose.
func globalFlags(e *Env, args []string) ([]string, error) {
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return append(rest, args[i:]...), nil
		case a == "--store" || a == "-store":
			if i+1 >= len(args) {
				return nil, usagef("flag --store needs an argument")
			}
			e.Store = args[i+1]
			i++
		case strings.HasPrefix(a, "--store="):
			e.Store = strings.TrimPrefix(a, "--store=")
		case a == "-v" || a == "--verbose":
			e.Verbose = true
		default:
			rest = append(rest, a)
		}
	}
	return rest, nil
}

func dispatch(ctx context.Context, e *Env, args []string) error {
	args, err := globalFlags(e, args)
	if err != nil {
		return err
	}
	// Nix's own argv for the serve protocol: `nix-store --serve [--write]`,
	// so ssh://host?remote-program=ferry works.
	for _, a := range args {
		if a == "--serve" {
			return runNixServeArgv(ctx, e, args)
		}
	}
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-V") {
		return cmdVersion(ctx, e, args[1:])
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printHelp(e.Stdout, args)
		if len(args) == 0 {
			return usagef("no command given")
		}
		return nil
	}
	// Longest match: "nar dump" before "nar".
	var best *command
	var n int
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(words) <= len(args) && len(words) > n && equalWords(words, args[:len(words)]) {
			best, n = c, len(words)
		}
	}
	if best == nil {
		return usagef("unknown command %q", strings.Join(firstWords(args, 2), " "))
	}
	return best.run(ctx, e, args[n:])
}

func equalWords(a, b []string) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func firstWords(args []string, n int) []string {
	if len(args) < n {
		return args
	}
	return args[:n]
}

func printHelp(w io.Writer, args []string) {
	if len(args) > 1 {
		prefix := strings.Join(args[1:], " ")
		for _, c := range commands {
			if strings.HasPrefix(c.name, prefix) {
				fmt.Fprintf(w, "ferry %s %s\n    %s\n", c.name, c.args, c.summary)
			}
		}
		return
	}
	fmt.Fprint(w, `ferry moves Nix store paths and builds between machines.

Usage: ferry [--store STORE] [-v] COMMAND [ARGS]

Commands:
`)
	sorted := append([]*command(nil), commands...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].name < sorted[j].name })
	for _, c := range sorted {
		fmt.Fprintf(w, "  %-22s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Global options:
  --store STORE   the store to use, named as for Nix: a directory (a chroot
                  store whose logical store directory is /nix/store),
                  "local" for the store with no root, parameters such as
                  DIR?store=/logical/dir&state=S&log=L&real=R, local?root=DIR
                  or DIR?system-features=kvm, or ssh://host?remote-store=...
  -v              say more, e.g. which store was chosen

Nix compatibility: "ferry --serve [--write] [--store STORE]" speaks the
nix-store --serve protocol on stdin/stdout; with an ssh:// store it relays.

Run "ferry help COMMAND" or "ferry COMMAND -h" for a command's options.
`)
}

// newFlags makes the flag set of the registered command name, printing
// its usage on -h.
func newFlags(e *Env, name string) *flag.FlagSet {
	c := &command{name: name}
	for _, r := range commands {
		if r.name == name {
			c = r
		}
	}
	fs := flag.NewFlagSet("ferry "+c.name, flag.ContinueOnError)
	fs.SetOutput(e.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.Stderr, "Usage: ferry %s %s\n\n%s\n", c.name, c.args, c.summary)
		if hasFlags(fs) {
			fmt.Fprintln(e.Stderr, "\nOptions:")
			fs.PrintDefaults()
		}
	}
	return fs
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// parseFlags parses args allowing flags and operands to be interleaved, as
// Nix's commands do.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var operands []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return operands, nil
		}
		if args[0] == "--" {
			return append(operands, args[1:]...), nil
		}
		operands = append(operands, args[0])
		args = args[1:]
	}
}
