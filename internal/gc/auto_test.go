package gc

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"ferry/internal/db"
	"ferry/internal/localstore"
	"ferry/internal/nixtest"
	"ferry/nix/storepath"
)

// garbageStore makes a store with n unreferenced paths and opens it.
func garbageStore(t *testing.T, n int) (*localstore.Store, []storepath.Path) {
	t.Helper()
	root := t.TempDir()
	var paths []storepath.Path
	build(t, root, func(s *localstore.Store) {
		for i := 0; i < n; i++ {
			paths = append(paths, addText(t, s, "g", strings.Repeat("x", 100+i)))
		}
	})
	return openStore(t, root), paths
}

func TestAutoCollect(t *testing.T) {
	s, garbage := garbageStore(t, 3)
	ctx := context.Background()
	var free atomic.Uint64
	log := &nixtest.SyncBuffer{}
	a := NewAuto(s, &AutoOptions{
		MinFree: 1000, MaxFree: 5000, Log: log, noRuntimeRoots: true,
		FreeSpace: func() (uint64, error) { return free.Load(), nil },
	})
	reserved := db.ReservedPath(filepath.Join(s.StateDir(), "db"))

	// Enough space: nothing happens.
	free.Store(2000)
	a.CheckWait(ctx)
	if !exists(s, garbage[0]) || log.String() != "" {
		t.Fatalf("collected with enough free space: %q", log.String())
	}
	if _, err := os.Stat(reserved); err != nil {
		t.Fatalf("reserved file: %v", err)
	}

	// Below min-free: collect max-free minus free, in the background.
	free.Store(600)
	a.Check(ctx)
	a.Wait()
	if !strings.Contains(log.String(), "running auto-GC to free 4400 bytes\n") {
		t.Errorf("log %q", log.String())
	}
	for _, p := range garbage {
		if exists(s, p) || valid(t, s, p) {
			t.Errorf("%s survived the auto-GC", p)
		}
	}
	if _, err := os.Stat(reserved); !os.IsNotExist(err) {
		t.Errorf("db/reserved not deleted by the auto-GC: %v", err)
	}

	// Still 600 free after the collection: no new one until free space
	// drops more than 3% below that.
	log.Reset()
	free.Store(590)
	a.CheckWait(ctx)
	if log.String() != "" {
		t.Errorf("collected again within 3%% of the last result: %q", log.String())
	}
	free.Store(580)
	a.CheckWait(ctx)
	if !strings.Contains(log.String(), "running auto-GC to free 4420 bytes") {
		t.Errorf("no collection 3%% below the last result: %q", log.String())
	}
	a.Wait()
}

func TestAutoCheckInterval(t *testing.T) {
	s, garbage := garbageStore(t, 1)
	ctx := context.Background()
	var free atomic.Uint64
	var looks atomic.Int32
	a := NewAuto(s, &AutoOptions{
		MinFree: 1000, MaxFree: 5000, CheckInterval: time.Hour, noRuntimeRoots: true,
		FreeSpace: func() (uint64, error) { looks.Add(1); return free.Load(), nil },
	})
	free.Store(2000)
	a.Check(ctx) // the first call always looks
	free.Store(10)
	a.Check(ctx) // within the interval: doesn't look
	a.Wait()
	if n := looks.Load(); n != 1 || !exists(s, garbage[0]) {
		t.Errorf("%d looks at free space within the interval; garbage exists: %v", n, exists(s, garbage[0]))
	}
}

func TestAutoDisabled(t *testing.T) {
	s, garbage := garbageStore(t, 1)
	for _, opts := range []*AutoOptions{
		nil,
		{MinFree: 0, MaxFree: 5000},
		{MinFree: 1000, MaxFree: 0},  // free space is always >= max-free
		{MinFree: 1000, MaxFree: 50}, // likewise
	} {
		if opts != nil {
			opts.FreeSpace = func() (uint64, error) { return 100, nil }
			opts.noRuntimeRoots = true
		}
		a := NewAuto(s, opts)
		a.CheckWait(context.Background())
		if !exists(s, garbage[0]) {
			t.Fatalf("%+v collected", opts)
		}
	}
}

// TestAutoOneAtATime: a Check while a collection runs starts no second
// one; CheckWait waits for the running one.
func TestAutoOneAtATime(t *testing.T) {
	s, _ := garbageStore(t, 2)
	log := &nixtest.SyncBuffer{}
	a := NewAuto(s, &AutoOptions{
		MinFree: 1000, MaxFree: 5000, noRuntimeRoots: true, Log: log,
		FreeSpace: func() (uint64, error) { return 10, nil },
	})
	// Hold the GC lock so the first collection blocks in Plan.
	c, err := Plan(context.Background(), s, &Options{DryRun: true, NoRuntimeRoots: true})
	if err != nil {
		t.Fatal(err)
	}
	a.Check(context.Background())
	for i := 0; i < 5; i++ {
		a.Check(context.Background())
	}
	done := make(chan struct{})
	go func() {
		a.CheckWait(context.Background())
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("CheckWait returned while the collection is blocked")
	case <-time.After(100 * time.Millisecond):
	}
	c.Close()
	<-done
	a.Wait()
	if n := strings.Count(log.String(), "running auto-GC"); n != 1 {
		t.Errorf("%d collections started, want 1:\n%s", n, log.String())
	}
}

// TestPlanUnreserves: a deleting collection removes db/reserved first; a
// dry run (print-dead, print-live) leaves it, as in Nix 2.8.
func TestPlanUnreserves(t *testing.T) {
	s := openStore(t, t.TempDir())
	reserved := db.ReservedPath(filepath.Join(s.StateDir(), "db"))
	c, err := Plan(context.Background(), s, &Options{DryRun: true, NoRuntimeRoots: true})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := os.Stat(reserved); err != nil {
		t.Fatalf("dry run deleted db/reserved: %v", err)
	}
	if _, _, err := Collect(context.Background(), s, &Options{NoRuntimeRoots: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(reserved); !os.IsNotExist(err) {
		t.Fatalf("collection left db/reserved: %v", err)
	}
}
