package build

import (
	"context"
	"time"
)

// autoGCPoll is how often a running build calls Options.AutoGC. Nix
// calls autoGC on every turn of its worker loop, which wakes on builder
// output and on timeouts; the hook itself rate-limits the expensive part
// (min-free-check-interval), so a short poll costs little.
var autoGCPoll = time.Second // a variable for tests

// startAutoGC calls hook now and then every autoGCPoll, until the
// returned stop is called (which waits for a call in progress). A nil
// hook does nothing.
func startAutoGC(ctx context.Context, hook func(context.Context)) (stop func()) {
	if hook == nil {
		return func() {}
	}
	hook(ctx)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(autoGCPoll)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				hook(ctx)
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}
