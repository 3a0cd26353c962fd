package cli

import (
	"context"
	"os"

	"golang.org/x/sys/unix"

	"ferry/internal/localserve"
	"ferry/internal/localstore"
	"ferry/internal/serve"
	"ferry/internal/settings"
	"ferry/store"
)

func init() {
	register(&command{name: "serve", args: "[--write]", summary: "speak the nix-store --serve protocol on standard input and output (one session); with --store ssh://..., relay to that store", run: cmdServe})
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
// it ends, releases every temp root the session took. A store that is not
// local (ssh://...) is relayed: the session is served from it, as
// `nix-store --serve --store ssh://...` does, with the far end's temp roots
// (serve.NewRelayBackend).
func runServe(ctx context.Context, e *Env, write bool) error {
	conf, err := settings.Load(nil)
	if err != nil {
		return err
	}
	// A remote store's handshake shares its first request's round trip,
	// as Nix's relay connects only when the first command needs it.
	// A relay passes the far side's stderr on as it comes, as Nix's does:
	// the client sees the far build log as it would without the relay.
	opts := storeOptions(e, conf, true)
	opts.BareLog = true
	st, err := store.Open(ctx, e.Store, opts)
	if err != nil {
		return err
	}
	defer st.Close()
	// A copy arrives through a pipe from sshd; a pipe of 1 MiB rather than
	// 64 KiB lets sshd go on decrypting while ferry writes (BENCHMARKS.md).
	growPipe(e.Stdin)
	sopts := &serve.Options{Write: write, Log: e.Stderr}
	local, ok := st.(*localstore.Store)
	if !ok {
		// serve.Main buffers both directions itself and flushes after each reply.
		return serve.Main(ctx, serve.NewRelayBackend(st, e.Store), e.Stdin, e.Stdout, sopts)
	}
	var autoGC func(context.Context)
	if auto := autoCollector(e, local, conf); auto != nil {
		autoGC = auto.Check
		defer auto.Wait() // before the store closes
	}
	return serve.Main(ctx, localserve.NewBackend(local, conf, autoGC), e.Stdin, e.Stdout, sopts)
}

// growPipe raises the buffer of f to 1 MiB (the unprivileged maximum) if f
// is a pipe; anything else, or a refusal, leaves it as it is.
func growPipe(f any) {
	if file, ok := f.(*os.File); ok {
		unix.FcntlInt(file.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	}
}
