package build

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ferry/internal/gc"
	"ferry/internal/localstore"
	"ferry/nix/storepath"
	"ferry/store"
)

func TestStartAutoGC(t *testing.T) {
	defer func(d time.Duration) { autoGCPoll = d }(autoGCPoll)
	autoGCPoll = 100 * time.Millisecond
	if stop := startAutoGC(context.Background(), nil); stop == nil {
		t.Fatal("nil stop")
	} else {
		stop()
	}
	var calls atomic.Int32
	stop := startAutoGC(context.Background(), func(context.Context) { calls.Add(1) })
	if calls.Load() != 1 {
		t.Errorf("%d calls at the start, want 1", calls.Load())
	}
	time.Sleep(autoGCPoll + autoGCPoll/2)
	stop()
	n := calls.Load()
	if n != 2 {
		t.Errorf("%d calls after 1.5 polls, want 2", n)
	}
	time.Sleep(autoGCPoll + autoGCPoll/2)
	if calls.Load() != n {
		t.Error("called after stop")
	}
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// TestAutoGCDuringBuild: free space "drops" while a builder runs; the
// hook, wired to a real gc.AutoCollector, collects the store's garbage in
// the background while the build's input and output stay.
func TestAutoGCDuringBuild(t *testing.T) {
	requireSandbox(t)
	ctx := context.Background()
	root := t.TempDir()
	// Garbage, added through a handle that is closed again so that this
	// process holds no temp root for it.
	old, err := localstore.Open(root, &localstore.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	junk, err := old.AddText(ctx, "junk", []byte(strings.Repeat("j", 5000)), nil)
	if err != nil {
		t.Fatal(err)
	}
	src, err := old.AddText(ctx, "src", []byte("input"), nil)
	if err != nil {
		t.Fatal(err)
	}
	old.Close()

	st, err := localstore.Open(root, &localstore.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	d := makeDrv(t, st, drvSpec{name: "slow", srcs: []storepath.Path{src.Path},
		script: `sleep 2; mkdir $out; cat ` + string(src.Path) + ` > $out/copy`})
	dp := drvPathOf(t, st, d)

	var looks atomic.Int32
	var gcStarted atomic.Int64
	log := &lockedLog{}
	auto := gc.NewAuto(st, &gc.AutoOptions{
		MinFree: 1 << 20, MaxFree: 2 << 20, Log: log,
		FreeSpace: func() (uint64, error) {
			if looks.Add(1) == 1 {
				return 10 << 20, nil // plenty when the build starts
			}
			gcStarted.CompareAndSwap(0, time.Now().UnixNano())
			return 4096, nil
		},
	})
	res, err := Build(ctx, st, dp, d, &Options{Settings: testSettings(), AutoGC: auto.Check, InMemory: true})
	auto.Wait()
	if err != nil || res.Status != store.Built {
		t.Fatalf("build: %+v %v", res, err)
	}
	if s := gcStarted.Load(); s == 0 || s > res.StopTime.UnixNano() {
		t.Fatalf("auto-GC did not start during the build (looks %d)\n%s", looks.Load(), log.b.String())
	}
	if !strings.Contains(log.b.String(), "running auto-GC to free 2093056 bytes") {
		t.Errorf("log:\n%s", log.b.String())
	}
	for _, p := range []storepath.Path{src.Path, d.Outputs["out"].Path} {
		if ok, err := st.IsValidPath(ctx, p); !ok || err != nil {
			t.Errorf("%s was collected during the build: %v", p, err)
		}
	}
	if ok, _ := st.IsValidPath(ctx, junk.Path); ok {
		t.Errorf("garbage %s survived the auto-GC:\n%s", junk.Path, log.b.String())
	}
}
