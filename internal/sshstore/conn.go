package sshstore

import (
	"context"
	"fmt"
	"io"
	"os/exec"

	"ferry/internal/serve"
	"ferry/nix/storepath"
	"ferry/store"
)

// NewStore returns a Store over a session that is already running: r is
// the remote's output and w its input, and closing w ends the session.
// done, if not nil, is closed once the remote has finished (Close waits for
// it). name stands for the host in messages. It is how tests and relays use
// the store without a process: a pipe to an in-process serve.Server.
func NewStore(ctx context.Context, name string, r io.Reader, w io.WriteCloser, done <-chan struct{}, opts *store.OpenOptions) (*Store, error) {
	if opts == nil {
		opts = &store.OpenOptions{}
	}
	logw := opts.Log
	if logw == nil {
		logw = io.Discard
	}
	s := &Store{uri: name, host: name, dir: storepath.DefaultDir, waited: make(chan struct{}), cmd: &exec.Cmd{}, stdin: w}
	s.stderr = newStderrLog(logw, name+"> ")
	go func() {
		if done != nil {
			<-done
		}
		close(s.waited)
	}()
	var trace func(string, ...any)
	if opts.Verbose {
		trace = func(format string, args ...any) { fmt.Fprintf(logw, "%s: %s\n", name, fmt.Sprintf(format, args...)) }
	}
	c, err := serve.NewClient(ctx, r, w, s.dir, &serve.ClientOptions{Closer: w, Trace: trace, Lazy: opts.LazyHandshake})
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	s.client = c
	return s, nil
}
