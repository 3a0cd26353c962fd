package hookapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// fakeSched answers from scripts: tries and builds pop their next answer.
type fakeSched struct {
	name     string
	tries    []Decision
	builds   []error // nil: success
	asked    []TryRequest
	released bool
}

func (f *fakeSched) Try(ctx context.Context, req *TryRequest) (*TryReply, error) {
	f.asked = append(f.asked, *req)
	if len(f.tries) == 0 {
		return nil, fmt.Errorf("%w at %s: closed", ErrLost, f.name)
	}
	d := f.tries[0]
	f.tries = f.tries[1:]
	return &TryReply{Decision: d, Machine: f.name}, nil
}

func (f *fakeSched) Build(ctx context.Context, req *BuildRequest, log io.Writer) (*BuildReply, error) {
	if len(f.builds) == 0 {
		return nil, errors.New("unexpected build")
	}
	err := f.builds[0]
	f.builds = f.builds[1:]
	if err != nil {
		return nil, err
	}
	return &BuildReply{Success: true, Machine: f.name}, nil
}

func (f *fakeSched) Release() error { f.released = true; return nil }

func TestResilient(t *testing.T) {
	lost := fmt.Errorf("%w at sock during the build of 'x': EOF", ErrLost)
	ctx := context.Background()
	try := &TryRequest{DrvPath: "/nix/store/00000000000000000000000000000000-x.drv", AmWilling: true}
	build := &BuildRequest{DrvPath: try.DrvPath}

	t.Run("build lost, then built by the next scheduler", func(t *testing.T) {
		first := &fakeSched{name: "first", tries: []Decision{Accept}, builds: []error{lost}}
		second := &fakeSched{name: "second", tries: []Decision{Postpone, Accept}, builds: []error{nil}}
		next := []*fakeSched{second, second}
		var warned []string
		r := &Resilient{cur: first, warn: func(m string) { warned = append(warned, m) }, connect: func(context.Context) (Scheduler, error) { s := next[0]; next = next[1:]; return s, nil }}
		if rep, err := r.Try(ctx, try); err != nil || rep.Decision != Accept {
			t.Fatalf("try: %+v %v", rep, err)
		}
		rep, err := r.Build(ctx, build, nil)
		if err != nil || !rep.Success || rep.Machine != "second" {
			t.Fatalf("build: %+v %v", rep, err)
		}
		if !first.released || len(warned) != 1 || !strings.Contains(warned[0], "lost the connection to the ferry scheduler") {
			t.Errorf("released %v, warned %q", first.released, warned)
		}
		for _, a := range second.asked {
			if a.AmWilling || a.DrvPath != try.DrvPath {
				t.Errorf("asked again %+v: the local machine may not be offered once Nix was told accept", a)
			}
		}
	})

	t.Run("try lost, asked again", func(t *testing.T) {
		first := &fakeSched{name: "first"}
		second := &fakeSched{name: "second", tries: []Decision{Decline}}
		r := &Resilient{cur: first, warn: func(string) {}, connect: func(context.Context) (Scheduler, error) { return second, nil }}
		rep, err := r.Try(ctx, try)
		if err != nil || rep.Decision != Decline || len(second.asked) != 1 || !second.asked[0].AmWilling {
			t.Fatalf("try: %+v %v %+v", rep, err, second.asked)
		}
	})

	t.Run("no machine after the loss", func(t *testing.T) {
		first := &fakeSched{name: "first", tries: []Decision{Accept}, builds: []error{lost}}
		second := &fakeSched{name: "second", tries: []Decision{DeclinePermanently}}
		r := &Resilient{cur: first, warn: func(string) {}, connect: func(context.Context) (Scheduler, error) { return second, nil }}
		r.Try(ctx, try)
		if _, err := r.Build(ctx, build, nil); err == nil || !strings.Contains(err.Error(), "no machine takes '"+string(try.DrvPath)+"'") {
			t.Fatalf("build: %v", err)
		}
	})

	t.Run("lost again and again", func(t *testing.T) {
		var scheds []*fakeSched
		r := &Resilient{warn: func(string) {}, connect: func(context.Context) (Scheduler, error) {
			s := &fakeSched{name: fmt.Sprint(len(scheds)), tries: []Decision{Accept}, builds: []error{lost}}
			scheds = append(scheds, s)
			return s, nil
		}}
		r.cur, _ = r.connect(ctx)
		r.Try(ctx, try)
		if _, err := r.Build(ctx, build, nil); !errors.Is(err, ErrLost) {
			t.Fatalf("build: %v", err)
		}
		if len(scheds) != 1+maxLost {
			t.Errorf("%d schedulers asked, want %d", len(scheds), 1+maxLost)
		}
	})

	t.Run("other errors are not retried", func(t *testing.T) {
		first := &fakeSched{name: "first", tries: []Decision{Accept}, builds: []error{errors.New("ferry scheduler: bad request")}}
		r := &Resilient{cur: first, warn: func(string) {}, connect: func(context.Context) (Scheduler, error) {
			t.Fatal("connected again")
			return nil, nil
		}}
		r.Try(ctx, try)
		if _, err := r.Build(ctx, build, nil); err == nil || errors.Is(err, ErrLost) {
			t.Fatalf("build: %v", err)
		}
	})
}
