package copy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	storecopy "ferry/internal/copy"
	"ferry/internal/localserve"
	"ferry/internal/localstore"
	"ferry/internal/serve"
	"ferry/internal/sshstore"
	"ferry/internal/storetest"
	"ferry/nix/storepath"
	"ferry/store"
)

// delayWriter delivers what is written to it d later, in order, without
// limiting throughput: a one-way link with latency d.
type delayWriter struct {
	q  chan delayed
	pw *io.PipeWriter
}

type delayed struct {
	due  time.Time
	data []byte // nil: close
}

func newDelayLink(d time.Duration) (io.Reader, io.WriteCloser) {
	pr, pw := io.Pipe()
	w := &delayWriter{q: make(chan delayed, 1<<16), pw: pw}
	go func() {
		for item := range w.q {
			time.Sleep(time.Until(item.due))
			if item.data == nil {
				pw.Close()
				return
			}
			if _, err := pw.Write(item.data); err != nil {
				return
			}
		}
	}()
	return pr, w
}

func (w *delayWriter) Write(p []byte) (int, error) {
	w.q <- delayed{time.Now().Add(d(w)), append([]byte(nil), p...)}
	return len(p), nil
}

func (w *delayWriter) Close() error {
	w.q <- delayed{time.Now().Add(d(w)), nil}
	return nil
}

var linkDelay = map[*delayWriter]time.Duration{}

func d(w *delayWriter) time.Duration { return linkDelay[w] }

// fastDir is a temporary directory on tmpfs where there is one: what is
// counted here is round trips, not the disk's file creation.
func fastDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "ferry-copy-test-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// session opens the ssh store over two delayed links to an in-process
// ferry serve --write on a fresh local store.
func session(t *testing.T, delay time.Duration, lazy bool) (*sshstore.Store, *localstore.Store) {
	t.Helper()
	ctx := context.Background()
	remote, err := localstore.Open(filepath.Join(fastDir(t), "remote"), &localstore.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	toServer, clientOut := newDelayLink(delay)
	clientIn, fromServer := newDelayLink(delay)
	linkDelay[clientOut.(*delayWriter)] = delay
	linkDelay[fromServer.(*delayWriter)] = delay
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve.NewServer(localserve.NewBackend(remote, nil, nil), &serve.Options{Write: true}).Serve(ctx, toServer, fromServer)
		fromServer.Close()
	}()
	st, err := sshstore.NewStore(ctx, "delayed", clientIn, clientOut, done, &store.OpenOptions{LazyHandshake: lazy})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(); remote.Close() })
	return st, remote
}

// source makes a local store holding a chain of n text objects and returns
// it with the last one (whose closure is all n).
func source(t *testing.T, n int) (*localstore.Store, storepath.Path) {
	t.Helper()
	ctx := context.Background()
	src, err := localstore.Open(filepath.Join(fastDir(t), "src"), &localstore.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	var prev []storepath.Path
	var last storepath.Path
	for i := range n {
		o := storetest.Text(t, fmt.Sprint("p", i), fmt.Sprintf("path %d after %v\n", i, prev), prev...)
		if err := src.AddToStoreNar(ctx, o.Info, bytes.NewReader(o.NAR)); err != nil {
			t.Fatal(err)
		}
		last = o.Info.Path
		prev = []storepath.Path{last}
	}
	return src, last
}

// TestRoundTripsDoNotGrow counts the round trips of a copy of n missing
// paths in two ways: the waits the client reports, and the time the copy
// takes over links with a one-way delay, less its time without delay,
// divided by the round-trip time. Neither grows with n.
func TestRoundTripsDoNotGrow(t *testing.T) {
	const delay = 100 * time.Millisecond
	ctx := context.Background()
	copyOnce := func(t *testing.T, n int, delay time.Duration, lazy bool) (waits int, elapsed time.Duration) {
		src, top := source(t, n)
		start := time.Now()
		dst, remote := session(t, delay, lazy)
		res, err := storecopy.Copy(ctx, src, dst, []storepath.Path{top}, nil)
		if err != nil {
			t.Fatal(err)
		}
		elapsed = time.Since(start)
		if len(res.Copied) != n {
			t.Fatalf("copied %d paths, want %d", len(res.Copied), n)
		}
		waits = dst.RoundTrips()
		dst.Close()
		if ok, err := remote.IsValidPath(ctx, top); !ok || err != nil {
			t.Fatalf("%s not valid on the remote after the copy: %v", top, err)
		}
		return waits, elapsed
	}
	for _, lazy := range []bool{false, true} {
		// The handshake, one locked query over the closure, one pipelined
		// upload; with a lazy handshake the query goes out with it.
		want := map[bool]int{false: 3, true: 2}[lazy]
		for _, n := range []int{1, 10, 1000} {
			t.Run(fmt.Sprintf("%d/lazy=%v", n, lazy), func(t *testing.T) {
				waits, slow := copyOnce(t, n, delay, lazy)
				_, fast := copyOnce(t, n, 0, lazy)
				rtts := float64(slow-fast) / float64(2*delay)
				t.Logf("%d paths: %d waits; %.1f round trips by the clock (%v with %v each way, %v without)", n, waits, rtts, slow, delay, fast)
				if waits != want {
					t.Errorf("the client waited %d times for %d paths, want %d", waits, n, want)
				}
				if math.Round(rtts) > float64(want+2) {
					t.Errorf("%d paths took %.1f round trips by the clock, want about %d (at most %d)", n, rtts, want, want+2)
				}
			})
		}
	}

	// The same measure finds the round trips of a client that waits for
	// each path, as Nix's does: it is not blind to growth.
	t.Run("per-path client", func(t *testing.T) {
		const n = 10
		src, top := source(t, n)
		start := time.Now()
		dst, _ := session(t, delay, false)
		closure, err := storecopy.Closure(ctx, src, []storepath.Path{top}, false)
		if err != nil {
			t.Fatal(err)
		}
		infos, _ := storecopy.PathInfos(ctx, src, closure)
		var list []*store.PathInfo
		for _, p := range closure {
			list = append(list, infos[p])
		}
		list, _ = storecopy.TopoSort(list)
		dst.QueryValidPaths(ctx, closure)
		for _, info := range list {
			var buf bytes.Buffer
			src.NarFromPath(ctx, info.Path, &buf)
			if err := dst.AddToStoreNar(ctx, info, &buf); err != nil {
				t.Fatal(err)
			}
		}
		rtts := float64(time.Since(start)) / float64(2*delay)
		t.Logf("per-path client, %d paths: %d waits, %.1f round trips by the clock", n, dst.RoundTrips(), rtts)
		if dst.RoundTrips() != n+2 || rtts < n {
			t.Errorf("per-path client: %d waits and %.1f round trips by the clock for %d paths; the measures should see at least %d", dst.RoundTrips(), rtts, n, n)
		}
	})
}
