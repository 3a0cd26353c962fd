package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"ferry/nix/storepath"
)

// The post-build hook, as Nix 2.8's runPostBuildHook
// (src/libstore/build/derivation-goal.cc@2.8.0) runs it after a build
// whose outputs are registered:
//
//   - the program is the post-build-hook setting as written, run with
//     execvp (so a name without a slash is looked up on PATH, and a file
//     the kernel can't execute is run by /bin/sh), argv[0] the setting;
//   - its environment is the caller's, plus DRV_PATH (the derivation's
//     store path; for an in-memory BasicDerivation the path the client
//     sent), OUT_PATHS (the output paths, sorted, separated by spaces)
//     and NIX_CONFIG (the settings as nix.conf lines), each only where
//     the environment doesn't have it already (Nix adds them with
//     std::map::emplace, so a NIX_CONFIG of the caller is passed on
//     unchanged);
//   - its standard output and error, merged, are logged line by line as
//     "post-build-hook: LINE", after a "running post-build-hook 'HOOK'..."
//     line where Nix logs at its default verbosity (not in a serve
//     session: QuietLog). A last line without a newline is logged with
//     one more newline, as Nix's LogSink does;
//   - a hook that exits non-zero or can't be started fails with "program
//     'HOOK' failed with exit code N" (Nix's ExecError); one that can't
//     be started first logs "post-build-hook: error: executing 'HOOK':
//     REASON" and counts as exit code 1, as Nix's forked child does.
//
// The outputs stay registered when the hook fails. Nix throws the error
// out of its worker, so no further build starts; ferry returns a
// *HookError from Build, which BuildGraph treats like a store failure
// (no new builds start) and the serve protocol reports as Nix does.
//
// Nix 2.8.0 passes an empty OUT_PATHS (NixOS/nix#6446, fixed in 2.8.1 by
// 6e7bd2e0b0); ferry passes the outputs, as 2.8.1 and later do.
//
// Two more differences, on purpose: the hook's standard input is
// /dev/null, not the caller's (in ferry serve, that is the protocol
// stream), and hooks of concurrent builds run one at a time but do not
// stop other builds (Nix's single-threaded worker waits for each hook).

// HookError is the failure of the post-build hook after a successful
// build: Build returns it as its error, with a MiscFailure result whose
// message is Msg. The outputs are registered.
type HookError struct {
	// Hook is the post-build-hook setting.
	Hook string
	// Msg is Nix's message, "program 'HOOK' failed with exit code N".
	Msg string
}

func (e *HookError) Error() string { return e.Msg }

// QuietLog wraps a build log so that it receives what Nix's serve side
// prints at its verbosity (nix-store --serve logs at lvlError): the
// builder's output and the post-build hook's lines, but not the
// informational "running post-build-hook" line. A nil w stays nil.
func QuietLog(w io.Writer) io.Writer {
	if w == nil {
		return nil
	}
	return quietLog{w}
}

type quietLog struct{ io.Writer }

func isQuiet(w io.Writer) bool {
	if pw, ok := w.(*PrefixWriter); ok {
		w = pw.w
	}
	_, ok := w.(quietLog)
	return ok
}

// hookMu runs one hook at a time in a process, as Nix's worker does.
var hookMu sync.Mutex

// hooked runs the post-build hook for outs while the build still holds
// the outputs' locks, right after registering them, as Nix's buildDone
// runs it before it unlocks; drive reports its outcome.
func (b *builder) hooked(ctx context.Context, outs map[string]storepath.Path) {
	b.hookErr = b.postBuildHook(ctx, outs)
	b.hookRan = true
}

// postBuildHook runs the configured hook for the outputs outs of a
// successful build. It returns nil when no hook is set or the hook
// succeeded, a *HookError when it failed, and another error when ctx
// ended while it ran.
func (b *builder) postBuildHook(ctx context.Context, outs map[string]storepath.Path) error {
	hook := b.s.PostBuildHook
	if hook == "" {
		return nil
	}
	hookMu.Lock()
	defer hookMu.Unlock()
	log := b.opts.Log
	if log == nil {
		log = io.Discard
	}
	if !isQuiet(log) {
		fmt.Fprintf(log, "running post-build-hook '%s'...\n", hook)
	}
	paths := make([]string, 0, len(outs))
	for _, p := range outs {
		paths = append(paths, string(p))
	}
	sort.Strings(paths)
	env := hookEnv(os.Environ(), map[string]string{
		"DRV_PATH":   string(b.drvPath),
		"OUT_PATHS":  strings.Join(paths, " "),
		"NIX_CONFIG": b.s.KeyValue(),
	})

	lines := &hookLines{w: log}
	status, err := runHook(ctx, hook, env, lines)
	lines.close()
	if err != nil {
		return err
	}
	if status != "" {
		return &HookError{Hook: hook, Msg: fmt.Sprintf("program '%s' %s", hook, status)}
	}
	return nil
}

// hookEnv is environ with each of add that it doesn't set.
func hookEnv(environ []string, add map[string]string) []string {
	env := append([]string(nil), environ...)
	have := map[string]bool{}
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		have[k] = true
	}
	keys := make([]string, 0, len(add))
	for k := range add {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !have[k] {
			env = append(env, k+"="+add[k])
		}
	}
	return env
}

// runHook runs hook with env, its output merged into out, and returns ""
// if it exited 0, else Nix's statusToString of how it ended. A hook that
// can't be started is reported on out as Nix's child reports it, and
// ends as exit code 1.
func runHook(ctx context.Context, hook string, env []string, out io.Writer) (string, error) {
	path := hook
	if !strings.Contains(hook, "/") {
		p, err := exec.LookPath(hook)
		if err != nil && !errors.Is(err, exec.ErrDot) {
			fmt.Fprintf(out, "error: executing '%s': %s\n", hook, strerror(syscall.ENOENT))
			return "failed with exit code 1", nil
		}
		path = p
	}
	start := func(path string, argv ...string) (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, path)
		cmd.Args = argv
		cmd.Env = env
		// One writer for both: one pipe, written in order.
		cmd.Stdout, cmd.Stderr = out, out
		// A background child still holding the pipe can't keep a
		// cancelled build waiting.
		cmd.WaitDelay = time.Second
		return cmd, cmd.Start()
	}
	cmd, err := start(path, hook)
	if errors.Is(err, syscall.ENOEXEC) {
		// execvp runs a file without a #! line with /bin/sh.
		cmd, err = start("/bin/sh", "/bin/sh", path)
	}
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("post-build-hook '%s' interrupted: %w", hook, ctx.Err())
		}
		fmt.Fprintf(out, "error: executing '%s': %s\n", hook, strerror(err))
		return "failed with exit code 1", nil
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		return "", fmt.Errorf("post-build-hook '%s' interrupted: %w", hook, ctx.Err())
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exitStatus(exit), nil
	}
	if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		return "", fmt.Errorf("run post-build-hook '%s': %w", hook, err)
	}
	return "", nil
}

// strerror is the C library's text for the errno in err ("No such file or
// directory"); Go's texts are the same in lower case. Go's own checks
// before exec (fs.ErrPermission for a file without x bits) map to the
// errno execve gives.
func strerror(err error) string {
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
	case errors.Is(err, fs.ErrPermission):
		errno = syscall.EACCES
	case errors.Is(err, fs.ErrNotExist):
		errno = syscall.ENOENT
	default:
		return err.Error()
	}
	s := errno.Error()
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// hookLines logs the hook's output line by line behind "post-build-hook: "
// (Nix's resPostBuildLogLine, as its SimpleLogger prints it).
type hookLines struct {
	w    io.Writer
	line []byte
}

func (h *hookLines) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			h.line = append(h.line, p...)
			break
		}
		h.line = append(h.line, p[:i]...)
		h.emit(string(h.line))
		h.line = h.line[:0]
		p = p[i+1:]
	}
	return n, nil
}

// emit writes one line; a failing log doesn't fail the hook (Nix ignores
// errors writing to its standard error).
func (h *hookLines) emit(line string) {
	h.w.Write([]byte("post-build-hook: " + line + "\n"))
}

// close logs a last line without a newline the way Nix's LogSink does:
// with "\n" appended to the line, so the log shows an empty line after it.
func (h *hookLines) close() {
	if len(h.line) > 0 {
		h.emit(string(h.line) + "\n")
		h.line = nil
	}
}
