package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"

	"ferry/internal/buildhook"
	"ferry/internal/hookapi"
	"ferry/internal/schedd"
)

func init() {
	register(&command{
		name:    "build-hook",
		args:    "VERBOSITY",
		summary: "Nix 2.8's build hook (build-hook = ferry-build-hook): remote builds for nix-build through ferry",
		run:     cmdBuildHook,
	})
}

// BuildHookName is the name under which ferry is its build hook:
// "build-hook = /usr/local/bin/ferry-build-hook", a symlink to ferry.
const BuildHookName = "ferry-build-hook"

// onDemandIdle is how long a scheduler the hook starts stays up without
// clients.
const onDemandIdle = 60 * time.Second

// dialScheduler opens the ferry scheduler (internal/schedd) that serves
// the client store whose state directory is stateDir, on its socket
// there. $FERRY_SCHEDULER says what to do when none runs: unset or "auto",
// start one (ferry scheduler --idle-exit 60s, detached, logging to the
// state directory) and use it; "on", use a running one only; "off", never
// ask one. An error wrapping buildhook.ErrNoScheduler means the hook
// places the build itself.
var dialScheduler = func(ctx context.Context, stateDir string) (hookapi.Scheduler, error) {
	mode := os.Getenv("FERRY_SCHEDULER")
	if mode == "off" {
		return nil, fmt.Errorf("%w: FERRY_SCHEDULER=off", buildhook.ErrNoScheduler)
	}
	sock := schedd.SocketPath(stateDir)
	open, err := schedd.Dial(sock)
	if err != nil && errors.Is(err, schedd.ErrNotRunning) && (mode == "" || mode == "auto") {
		self, xerr := os.Executable()
		if xerr == nil {
			if _, serr := schedd.Start(ctx, self, stateDir, "--idle-exit", onDemandIdle.String()); serr == nil {
				open, err = schedd.Dial(sock)
			} else {
				err = fmt.Errorf("%w (starting one: %v)", err, serr)
			}
		}
	}
	if err != nil {
		if errors.Is(err, schedd.ErrNotRunning) {
			return nil, fmt.Errorf("%w: %v", buildhook.ErrNoScheduler, err)
		}
		return nil, err
	}
	return open()
}

// cmdBuildHook is what Nix runs as its build hook: argv
// [basename(hook), VERBOSITY], stdin from Nix, stdout and stderr to it,
// fd 4 the build log (internal/buildhook, docs/protocol.md).
func cmdBuildHook(ctx context.Context, e *Env, args []string) error {
	if len(args) != 1 {
		return usagef("called without required arguments") // build-remote's words
	}
	v, err := strconv.Atoi(args[0])
	if err != nil {
		return usagef("build-hook: the verbosity %q is not a number", args[0])
	}
	code := buildhook.Run(ctx, &buildhook.Options{
		Stdin:     e.Stdin,
		Stderr:    e.Stderr,
		Log:       buildLogFD(e.Stderr),
		Verbosity: v,
		Connect:   dialScheduler,
	})
	if code != 0 {
		return &silentExit{code: code}
	}
	return nil
}

// buildLogFD is fd 4, the build log pipe Nix gives its hook, or stderr
// when fd 4 is not a pipe, file, socket or terminal that was passed in
// (the hook run by hand: the lowest free descriptors are the Go
// runtime's, which are anonymous inodes).
func buildLogFD(stderr io.Writer) io.Writer {
	var st syscall.Stat_t
	if err := syscall.Fstat(4, &st); err != nil {
		return stderr
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFIFO, syscall.S_IFREG, syscall.S_IFCHR, syscall.S_IFSOCK:
		// Nix dup2s it to 4, which clears close-on-exec: set it again,
		// so that a scheduler the hook starts does not hold Nix's log
		// pipe open for its whole life.
		syscall.CloseOnExec(4)
		return os.NewFile(4, "build-log")
	}
	return stderr
}
