package schedd

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"ferry/internal/hookapi"
	"ferry/internal/lock"
)

// ErrNotRunning is returned (wrapped) by Connect and GetStatus when no
// scheduler listens on the socket: the hook then schedules in-process
// (or starts one with Start).
var ErrNotRunning = errors.New("the ferry scheduler is not running")

// Client is one connection to the daemon: one hook attempt (Try, Build,
// Release). It implements hookapi.Scheduler. Closing the connection (Release,
// or the process ending) frees whatever slot it holds.
type Client struct {
	socket string
	conn   net.Conn
	r      *bufio.Reader
	mu     sync.Mutex
	closed bool
	drv    string
}

var _ hookapi.Scheduler = (*Client)(nil)

// Connect opens a connection to the scheduler listening on socketPath.
func Connect(ctx context.Context, socketPath string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w (no socket at %s): %v", ErrNotRunning, socketPath, err)
		}
		return nil, fmt.Errorf("connect to the ferry scheduler at %s: %w", socketPath, err)
	}
	return &Client{socket: socketPath, conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}, nil
}

// Dial checks that a scheduler answers on socketPath and returns a
// function that opens one connection (one hook attempt) per call.
func Dial(socketPath string) (func() (hookapi.Scheduler, error), error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := GetStatus(ctx, socketPath); err != nil {
		return nil, err
	}
	return func() (hookapi.Scheduler, error) {
		c, err := Connect(context.Background(), socketPath)
		if err != nil {
			return nil, err
		}
		return c, nil
	}, nil
}

func (c *Client) send(ctx context.Context, req *Request) error {
	req.V = Protocol
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(dl)
		defer c.conn.SetWriteDeadline(time.Time{})
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return c.lost(err)
	}
	return nil
}

// lost is the error of a connection that broke.
func (c *Client) lost(err error) error {
	what := ""
	if c.drv != "" {
		what = fmt.Sprintf(" during the build of '%s' (nothing of it was registered unless copied back whole; building it again is safe)", c.drv)
	}
	return fmt.Errorf("%w at %s%s: %v", hookapi.ErrLost, c.socket, what, err)
}

// recv reads one response; cancelling ctx closes the connection.
func (c *Client) recv(ctx context.Context) (*Response, error) {
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	defer stop()
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, io.EOF) {
			err = errors.New("the scheduler closed the connection (it stopped or crashed)")
		}
		return nil, c.lost(err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return nil, fmt.Errorf("ferry scheduler at %s: bad response %q: %v", c.socket, line, err)
	}
	if resp.Error != "" {
		return nil, fmt.Errorf("ferry scheduler: %s", resp.Error)
	}
	return &resp, nil
}

// Try sends Nix's "try".
func (c *Client) Try(ctx context.Context, req *hookapi.TryRequest) (*hookapi.TryReply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.send(ctx, &Request{Op: "try", Try: req}); err != nil {
		return nil, err
	}
	resp, err := c.recv(ctx)
	if err != nil {
		return nil, err
	}
	if resp.Try == nil {
		return nil, fmt.Errorf("ferry scheduler at %s: no reply to try", c.socket)
	}
	return resp.Try, nil
}

// Build runs the accepted build, copying the log lines to log.
func (c *Client) Build(ctx context.Context, req *hookapi.BuildRequest, log io.Writer) (*hookapi.BuildReply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drv = string(req.DrvPath)
	defer func() { c.drv = "" }()
	if err := c.send(ctx, &Request{Op: "build", Build: req}); err != nil {
		return nil, err
	}
	for {
		resp, err := c.recv(ctx)
		if err != nil {
			return nil, err
		}
		switch {
		case resp.Log != nil:
			if log != nil {
				io.WriteString(log, *resp.Log+"\n")
			}
		case resp.Build != nil:
			return resp.Build, nil
		default:
			return nil, fmt.Errorf("ferry scheduler at %s: unexpected response to build", c.socket)
		}
	}
}

// Release frees the slot and closes the connection. It waits for the
// daemon's acknowledgement, so a slot is free for others when it returns.
func (c *Client) Release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	defer c.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.send(ctx, &Request{Op: "release"}); err != nil {
		return nil // the connection is gone: so is the slot
	}
	c.recv(ctx)
	return nil
}

// GetStatus asks the scheduler on socketPath for its status.
func GetStatus(ctx context.Context, socketPath string) (*Status, error) {
	c, err := Connect(ctx, socketPath)
	if err != nil {
		return nil, err
	}
	defer c.conn.Close()
	if err := c.send(ctx, &Request{Op: "status"}); err != nil {
		return nil, err
	}
	resp, err := c.recv(ctx)
	if err != nil {
		return nil, err
	}
	if resp.Status == nil {
		return nil, fmt.Errorf("ferry scheduler at %s: no status in its reply", socketPath)
	}
	return resp.Status, nil
}

// Start makes sure a scheduler serves stateDir: if none answers on its
// socket, it starts "ferryBinary scheduler --state-dir stateDir args...",
// detached (its own session; output appended to
// stateDir/ferry-scheduler.log), and waits until it answers or ctx ends.
// Concurrent Starts are safe: the daemon takes stateDir's lock file, so
// only one of them runs; the others exit and every caller finds it.
// It returns the socket path.
func Start(ctx context.Context, ferryBinary, stateDir string, args ...string) (string, error) {
	sock := SocketPath(stateDir)
	if _, err := GetStatus(ctx, sock); err == nil {
		return sock, nil
	}
	logf, err := os.OpenFile(filepath.Join(stateDir, "ferry-scheduler.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return "", err
	}
	defer logf.Close()
	cmd := exec.Command(ferryBinary, append([]string{"scheduler", "--state-dir", stateDir}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start the ferry scheduler: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var exitErr error
	var giveUp <-chan time.Time
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := GetStatus(cctx, sock)
		cancel()
		if err == nil {
			return sock, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the ferry scheduler did not answer on %s: %w (see %s)", sock, ctx.Err(), logf.Name())
		case err := <-exited:
			// Another Start's daemon may hold the lock and be starting:
			// wait for it while it holds the lock (up to startWait), or
			// two seconds more if none does.
			exited = nil
			exitErr = fmt.Errorf("the ferry scheduler exited (%v) before answering on %s; see %s", err, sock, logf.Name())
			giveUp = time.After(2 * time.Second)
			if lockHeld(stateDir) {
				giveUp = time.After(startWait)
			}
		case <-giveUp:
			return "", exitErr
		case <-tick.C:
		}
	}
}

// startWait is how long Start waits for a scheduler that another Start
// launched (it holds the lock) to answer: a loaded machine can take
// seconds to start one.
const startWait = 30 * time.Second

// lockHeld reports whether a scheduler holds stateDir's lock.
func lockHeld(stateDir string) bool {
	f, err := lock.OpenLockFile(lockPath(stateDir))
	if err != nil {
		return false
	}
	defer f.Close()
	ok, err := lock.TryFlock(f, lock.Shared)
	return err == nil && !ok
}
