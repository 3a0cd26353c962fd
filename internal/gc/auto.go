package gc

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"ferry/internal/localstore"
)

// AutoOptions configure an AutoCollector: Nix's min-free, max-free and
// min-free-check-interval settings. A nil *AutoOptions disables it.
type AutoOptions struct {
	// MinFree starts a collection when fewer bytes than this are free.
	// Zero disables automatic collection, as in Nix.
	MinFree uint64
	// MaxFree is how many bytes should be free after a collection: it
	// runs with MaxFreed = MaxFree - free. Nix's default is
	// math.MaxUint64 (all garbage); zero never collects (free space is
	// always at least MaxFree), as in Nix.
	MaxFree uint64
	// CheckInterval is the least time between two looks at free space,
	// and between the end of a collection and the next look. Zero looks
	// every time. Nix's default is 5 seconds.
	CheckInterval time.Duration
	// KeepOutputs and DiscardDerivations are passed to the collection
	// (see Options).
	KeepOutputs, DiscardDerivations bool
	// Log receives "running auto-GC to free N bytes", the collection's
	// progress lines and ignored errors; nil discards them.
	Log io.Writer
	// FreeSpace returns the bytes available to unprivileged users on the
	// filesystem of the store directory. Nil means statvfs(2)'s
	// f_bavail * f_frsize of s.RealDir(), as in Nix.
	FreeSpace func() (uint64, error)

	// noRuntimeRoots and procDir are passed to the collection, for tests.
	noRuntimeRoots bool
	procDir        string
}

// AutoCollector is Nix 2.8's LocalStore::autoGC for one store: a build
// calls Check often (Nix: every turn of the worker loop), and when free
// space has dropped below MinFree a garbage collection runs in the
// background to bring it back up to MaxFree. It is safe for concurrent
// use.
type AutoCollector struct {
	s    *localstore.Store
	opts AutoOptions

	mu sync.Mutex // guards the fields below
	// lastCheck is when free space was last looked at, or when the last
	// collection ended; zero means never.
	lastCheck time.Time
	// running is closed when the running collection ends; nil when none
	// runs.
	running chan struct{}
	// availAfterGC is the free space measured after the last collection
	// (initially the maximum). A new collection only starts once free
	// space has dropped more than 3% below it: if the last one couldn't
	// free enough, running it again at once would not help either.
	availAfterGC uint64
	// wg counts collections started, for Close.
	wg sync.WaitGroup
}

// NewAuto returns the automatic collector of s. A nil opts, or a zero
// MinFree, gives one whose Check does nothing.
func NewAuto(s *localstore.Store, opts *AutoOptions) *AutoCollector {
	a := &AutoCollector{s: s, availAfterGC: ^uint64(0)}
	if opts != nil {
		a.opts = *opts
	}
	if a.opts.FreeSpace == nil {
		dir := s.RealDir()
		a.opts.FreeSpace = func() (uint64, error) { return FreeSpace(dir) }
	}
	return a
}

// FreeSpace is what Nix's autoGC measures: statvfs(dir)'s f_bavail *
// f_frsize, the bytes unprivileged users may still write.
func FreeSpace(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("get filesystem info about '%s': %w", dir, err)
	}
	return st.Bavail * uint64(st.Frsize), nil
}

func (a *AutoCollector) logf(format string, args ...any) {
	if a.opts.Log != nil {
		fmt.Fprintf(a.opts.Log, format+"\n", args...)
	}
}

// Check is LocalStore::autoGC(sync = false) (gc.cc@2.8.0): unless a
// collection is already running or CheckInterval hasn't passed since the
// last look, it measures free space and, if that is below both MinFree
// and MaxFree and more than 3% below what the last collection left,
// starts a collection of MaxFree - free bytes in the background and
// returns at once. ctx bounds that collection. Errors of the collection
// are logged and otherwise ignored, as in Nix.
func (a *AutoCollector) Check(ctx context.Context) {
	a.check(ctx)
}

// CheckWait is autoGC(sync = true), what Nix's addToStore calls: Check,
// then wait until the running collection, if any, has ended.
func (a *AutoCollector) CheckWait(ctx context.Context) {
	if done := a.check(ctx); done != nil {
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
}

// check returns the channel of the running collection, or nil.
func (a *AutoCollector) check(ctx context.Context) <-chan struct{} {
	if a.opts.MinFree == 0 {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running != nil {
		return a.running
	}
	now := time.Now()
	if !a.lastCheck.IsZero() && now.Before(a.lastCheck.Add(a.opts.CheckInterval)) {
		return nil
	}
	avail, err := a.opts.FreeSpace()
	if err != nil {
		// Nix throws here, out of the build loop; a build shouldn't fail
		// because free space can't be measured, so ferry logs it.
		a.logf("error (ignored): %v", err)
		a.lastCheck = now
		return nil
	}
	a.lastCheck = now
	if avail >= a.opts.MinFree || avail >= a.opts.MaxFree {
		return nil
	}
	if float64(avail) > float64(a.availAfterGC)*0.97 {
		return nil
	}
	done := make(chan struct{})
	a.running = done
	a.wg.Add(1)
	go a.collect(ctx, a.opts.MaxFree-avail, done)
	return done
}

// collect runs one automatic collection and records its outcome.
func (a *AutoCollector) collect(ctx context.Context, maxFreed uint64, done chan struct{}) {
	defer a.wg.Done()
	availAfter, ok := uint64(0), false
	defer func() {
		a.mu.Lock()
		if ok {
			a.availAfterGC = availAfter
		}
		a.running = nil
		a.lastCheck = time.Now()
		a.mu.Unlock()
		close(done)
	}()
	a.logf("running auto-GC to free %d bytes", maxFreed)
	_, _, err := Collect(ctx, a.s, &Options{
		MaxFreed:           maxFreed,
		KeepOutputs:        a.opts.KeepOutputs,
		DiscardDerivations: a.opts.DiscardDerivations,
		NoRuntimeRoots:     a.opts.noRuntimeRoots,
		procDir:            a.opts.procDir,
		Log:                a.opts.Log,
	})
	if err != nil {
		a.logf("error (ignored): %v", err)
		return
	}
	if availAfter, err = a.opts.FreeSpace(); err != nil {
		a.logf("error (ignored): %v", err)
		return
	}
	ok = true
}

// Wait waits until no collection started by a runs. Call it before
// closing the store: a collection left running would use a closed store.
func (a *AutoCollector) Wait() {
	a.wg.Wait()
}
