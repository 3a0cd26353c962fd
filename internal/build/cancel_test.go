package build

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"ferry/internal/settings"
	"ferry/store"
)

// TestCancelKillsBuild cancels a build whose builder started a background
// process: Build returns promptly with the context's error and registers
// nothing.
func TestCancelKillsBuild(t *testing.T) {
	requireSandbox(t)
	st := openStore(t)
	d := makeDrv(t, st, drvSpec{name: "endless", script: `mkdir $out; sleep 60 & echo started; sleep 60`})
	ctx, cancel := context.WithCancel(context.Background())
	log := &lineWaiter{ch: make(chan struct{}, 1)}
	go func() {
		<-log.ch
		cancel()
	}()
	start := time.Now()
	res, err := Build(ctx, st, drvPathOf(t, st, d), d, &Options{Settings: testSettings(), Log: log})
	if !errors.Is(err, context.Canceled) || res.Status != store.MiscFailure {
		t.Fatalf("%+v %v", res, err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("cancel took %v", time.Since(start))
	}
	if _, err := os.Lstat(st.RealPath(d.Outputs["out"].Path)); err == nil {
		t.Error("output left behind")
	}
	if ok, _ := st.IsValidPath(context.Background(), d.Outputs["out"].Path); ok {
		t.Error("output registered")
	}
}

type lineWaiter struct{ ch chan struct{} }

func (l *lineWaiter) Write(p []byte) (int, error) {
	select {
	case l.ch <- struct{}{}:
	default:
	}
	return len(p), nil
}

// TestSandboxForcedForChrootStore: sandbox = false still sandboxes a
// store whose files are not at /nix/store, as Nix does.
func TestSandboxForcedForChrootStore(t *testing.T) {
	requireSandbox(t)
	st := openStore(t)
	s := testSettings()
	s.Sandbox = settings.SandboxOff
	d := makeDrv(t, st, drvSpec{name: "forced", script: `pwd > $out`})
	res, err := Build(context.Background(), st, drvPathOf(t, st, d), d, &Options{Settings: s})
	if err != nil || res.Status != store.Built {
		t.Fatalf("%+v %v", res, err)
	}
	if b, _ := os.ReadFile(st.RealPath(d.Outputs["out"].Path)); string(b) != "/build\n" {
		t.Errorf("pwd %q: not sandboxed", b)
	}
}
