package schedd_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ferry/internal/hookapi"
	"ferry/internal/nixtest"
	"ferry/internal/schedd"
	"ferry/nix/storepath"
)

// watchWriter calls fn with everything written to it.
type watchWriter struct {
	mu  sync.Mutex
	buf strings.Builder
	fn  func(string)
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	s := w.buf.String()
	w.mu.Unlock()
	w.fn(s)
	return len(p), nil
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// kill -9 of the scheduler (a ferry scheduler process, started by
// schedd.Start as ferry build-hook would) while two builds run, one on a
// ferry builder and one on nix-store --serve: both clients get a clear
// error, every store verifies, nothing of the interrupted builds is
// valid, the restarted daemon reports them as interrupted, and building
// them again succeeds.
func TestRestartAfterKill9(t *testing.T) {
	e := newEnv(t)
	spec := e.ferryBuilder("b1", "1 1") + "\n" + e.nixBuilder("b2", "1 1")
	stateDir, err := os.MkdirTemp("", "schedd-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(stateDir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var pids []int
	defer func() {
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}()
	start := func() (string, int) {
		t.Helper()
		sock, err := schedd.Start(ctx, e.ferry, stateDir, "--builders", spec, "--queue-wait", "0")
		if err != nil {
			t.Fatal(err)
		}
		st, err := schedd.GetStatus(ctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, st.PID)
		return sock, st.PID
	}
	sock, pid := start()
	if again, _ := start(); again != sock || pids[1] != pid {
		t.Fatalf("a second Start started another daemon: %v", pids)
	}
	pids = pids[:1]

	st := filepath.Join(e.dir, "client")
	ps := e.drvs(st, "k", 2, 4, "")
	started := make(chan struct{}, 2)
	errs := make([]error, 2)
	machinesUsed := map[string]bool{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := schedd.Connect(ctx, sock)
			if err != nil {
				errs[i] = err
				started <- struct{}{}
				return
			}
			defer c.Release()
			r, err := c.Try(ctx, &hookapi.TryRequest{Store: st, System: e.system, DrvPath: p})
			if err != nil || r.Decision != hookapi.Accept {
				t.Errorf("try: %+v %v", r, err)
				started <- struct{}{}
				return
			}
			mu.Lock()
			machinesUsed[r.Machine] = true
			mu.Unlock()
			once := sync.Once{}
			w := &watchWriter{fn: func(s string) {
				if strings.Contains(s, "started k-") {
					once.Do(func() { started <- struct{}{} })
				}
			}}
			_, errs[i] = c.Build(ctx, &hookapi.BuildRequest{DrvPath: p}, w)
			once.Do(func() { started <- struct{}{} })
		}()
	}
	<-started
	<-started
	if len(machinesUsed) != 2 {
		t.Errorf("the two builds were not on both machines: %v", machinesUsed)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "lost the connection to the ferry scheduler") ||
			!strings.Contains(err.Error(), string(ps[i])) || !strings.Contains(err.Error(), "building it again is safe") {
			t.Errorf("client %d after kill -9: %v", i, err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); alive(pid) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	stores := []string{st, filepath.Join(e.dir, "b1"), filepath.Join(e.dir, "b2")}
	for _, s := range stores {
		nixtest.Verify(t, s)
	}
	outputs := func() []storepath.Path {
		var outs []storepath.Path
		for _, p := range ps {
			outs = append(outs, storepath.Path(nixtest.Line(t, "nix-store", "--store", st, "-q", "--outputs", string(p))))
		}
		return outs
	}
	for _, o := range outputs() {
		if _, _, err := nixtest.Try(t, nil, "nix-store", "--store", st, "--check-validity", string(o)); err == nil {
			t.Errorf("%s is valid after the kill", o)
		}
	}

	// The restarted daemon knows what was interrupted.
	sock, pid2 := start()
	if pid2 == pid {
		t.Fatal("the daemon was not restarted")
	}
	status, err := schedd.GetStatus(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	interrupted := map[storepath.Path]bool{}
	for _, f := range status.Recent {
		if strings.Contains(f.Message, "interrupted") && strings.Contains(f.Message, "none of its outputs is valid") {
			interrupted[f.DrvPath] = true
		}
	}
	if !interrupted[ps[0]] || !interrupted[ps[1]] {
		t.Errorf("the restarted daemon's recent failures: %+v", status.Recent)
	}
	// The retry builds cleanly.
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := hookBuild(ctx, sock, st, p, e.system)
			if err != nil || !b.reply.Success {
				t.Errorf("retry of %s: %+v %v", p, b, err)
			}
		}()
	}
	wg.Wait()
	for _, o := range outputs() {
		nixtest.Line(t, "nix-store", "--store", st, "--check-validity", string(o))
	}
	for _, s := range stores {
		nixtest.Verify(t, s)
	}
	syscall.Kill(pid2, syscall.SIGTERM)
	for deadline := time.Now().Add(10 * time.Second); alive(pid2) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(pid2) {
		t.Errorf("the daemon did not end on SIGTERM")
	}
	if _, err := os.Stat(schedd.SocketPath(stateDir)); !os.IsNotExist(err) {
		t.Errorf("socket left after SIGTERM: %v", err)
	}
}
