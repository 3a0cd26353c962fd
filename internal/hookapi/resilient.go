package hookapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// maxLost is how many times one Resilient connects again after losing
// its scheduler before it gives up.
const maxLost = 3

// Resilient is a Scheduler that survives the ferry scheduler. When the
// connection is lost (ErrLost: the scheduler crashed, or was stopped or
// restarted), it connects again (connect: a scheduler started anew, a
// restarted one, or the caller's own placement) and asks again: a try
// is repeated; a build is tried again until a machine accepts it and
// then built again. A build hook's Nix, which has only been told
// "# accept", sees a longer build, not a failed one. Nothing of the lost
// attempt was registered unless it was copied back whole (its outputs
// then count as built), and the builder's session ended with the
// scheduler, which stops its build.
type Resilient struct {
	connect func(context.Context) (Scheduler, error)
	warn    func(string)
	cur     Scheduler
	try     *TryRequest // the try accepted last
	lost    int
}

// NewResilient wraps cur; connect replaces a lost connection, and warn
// hears of each loss.
func NewResilient(cur Scheduler, connect func(context.Context) (Scheduler, error), warn func(string)) *Resilient {
	return &Resilient{cur: cur, connect: connect, warn: warn}
}

func (r *Resilient) Try(ctx context.Context, req *TryRequest) (*TryReply, error) {
	for {
		rep, err := r.cur.Try(ctx, req)
		if err == nil && rep.Decision == Accept {
			r.try = req
		}
		if !r.again(ctx, err) {
			return rep, err
		}
		if err := r.reconnect(ctx); err != nil {
			return nil, err
		}
	}
}

func (r *Resilient) Build(ctx context.Context, req *BuildRequest, log io.Writer) (*BuildReply, error) {
	for {
		rep, err := r.cur.Build(ctx, req, log)
		if r.try == nil || !r.again(ctx, err) {
			return rep, err
		}
		if err := r.reacquire(ctx); err != nil {
			return nil, err
		}
	}
}

func (r *Resilient) Release() error { return r.cur.Release() }

// again reports whether err is a lost scheduler to recover from, saying
// so.
func (r *Resilient) again(ctx context.Context, err error) bool {
	if err == nil || !errors.Is(err, ErrLost) || ctx.Err() != nil || r.lost >= maxLost {
		return false
	}
	r.lost++
	r.warn(fmt.Sprintf("warning: %v; asking again", err))
	return true
}

// reconnect replaces the lost connection.
func (r *Resilient) reconnect(ctx context.Context) error {
	r.cur.Release()
	cur, err := r.connect(ctx)
	if err != nil {
		return fmt.Errorf("after losing the ferry scheduler: %w", err)
	}
	r.cur = cur
	return nil
}

// reacquire connects again and repeats the accepted try, waiting while
// the machines are busy, until one accepts it. The local machine is not
// offered: Nix has handed the build to the hook.
func (r *Resilient) reacquire(ctx context.Context) error {
	req := *r.try
	req.AmWilling = false
	for {
		if err := r.reconnect(ctx); err != nil {
			return err
		}
		rep, err := r.cur.Try(ctx, &req)
		switch {
		case err != nil:
			if r.again(ctx, err) {
				continue
			}
			return err
		case rep.Decision == Accept:
			return nil
		case rep.Decision == Postpone:
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return ctx.Err()
			}
		default:
			msg := rep.Message
			if msg == "" {
				msg = string(rep.Decision)
			}
			return fmt.Errorf("after losing the ferry scheduler, no machine takes '%s': %s", req.DrvPath, msg)
		}
	}
}
