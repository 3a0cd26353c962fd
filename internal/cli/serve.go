package cli

import (
	"os"

	"golang.org/x/sys/unix"

	"context"

	"ferry/internal/localserve"
	"ferry/internal/serve"
	"ferry/internal/settings"
)

func init() {
	register(&command{name: "serve", args: "[--write]", summary: "speak the nix-store --serve protocol on standard input and output (one session)", run: cmdServe})
}

func cmdServe(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "serve")
	write := fs.Bool("write", false, "allow imports and builds (as nix-store --serve --write)")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) != 0 {
		return usagef("serve takes no operands")
	}
	return runServe(ctx, e, *write)
}

// runNixServeArgv handles Nix's own argv, "--serve [--write]" (with the
// global --store already taken out), which real Nix clients run on the
// remote side: ssh://host?remote-program=ferry.
func runNixServeArgv(ctx context.Context, e *Env, args []string) error {
	write := false
	for _, a := range args {
		switch a {
		case "--serve":
		case "--write":
			write = true
		default:
			// nix-store --serve accepts nothing else either.
			return usagef("unknown flag %q for --serve", a)
		}
	}
	return runServe(ctx, e, write)
}

// runServe runs one protocol session on the selected store. The store is
// opened for this session only: closing it when the session ends, however
// it ends, releases every temp root the session took.
func runServe(ctx context.Context, e *Env, write bool) error {
	conf, err := settings.Load(nil)
	if err != nil {
		return err
	}
	st, err := openConfiguredStore(ctx, e, conf)
	if err != nil {
		return err
	}
	defer st.Close()
	var autoGC func(context.Context)
	if auto := autoCollector(e, st, conf); auto != nil {
		autoGC = auto.Check
		defer auto.Wait() // before the store closes
	}
	// A copy arrives through a pipe from sshd; a pipe of 1 MiB rather than
	// 64 KiB lets sshd go on decrypting while ferry writes (BENCHMARKS.md).
	growPipe(e.Stdin)
	// serve.Main buffers both directions itself and flushes after each reply.
	return serve.Main(ctx, localserve.NewBackend(st, conf, autoGC), e.Stdin, e.Stdout, &serve.Options{Write: write, Log: e.Stderr})
}

// growPipe raises the buffer of f to 1 MiB (the unprivileged maximum) if f
// is a pipe; anything else, or a refusal, leaves it as it is.
func growPipe(f any) {
	if file, ok := f.(*os.File); ok {
		unix.FcntlInt(file.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	}
}
