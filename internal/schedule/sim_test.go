package schedule

import (
	"errors"
	"fmt"
	"sort"
	"testing"
	"time"
)

// fakeClock is a Clock that moves only when told.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) Advance(d time.Duration) { c.now = c.now.Add(d) }
func (c *fakeClock) Set(t time.Time) {
	if t.After(c.now) {
		c.now = t
	}
}

var t0 = time.Date(2022, 5, 1, 12, 0, 0, 0, time.UTC)

func newClock() *fakeClock { return &fakeClock{now: t0} }

type outcome int

const (
	succeed outcome = iota
	fail
	down
)

type run struct {
	Assignment
	end time.Time
	seq int
}

// sim drives a Scheduler with a fake clock as the caller would: it
// starts what Next gives, lets each build take EstDuration/SpeedFactor,
// and reports the outcome decide chooses. It checks the scheduler's
// invariants at every step.
type sim struct {
	tb       testing.TB
	s        *Scheduler
	clk      *fakeClock
	jobs     map[string]Job
	machines map[string]Machine
	running  []run
	seq      int
	decide   func(a Assignment) outcome
	starts   map[string]time.Time // first start of each job
	done     map[string]time.Time // when each job was Built
	assigned []Assignment
}

func newSim(tb testing.TB, jobs []Job, machines []Machine, opts Options) *sim {
	tb.Helper()
	clk := newClock()
	opts.Clock = clk
	s, err := New(jobs, machines, opts)
	if err != nil {
		tb.Fatal(err)
	}
	sm := &sim{tb: tb, s: s, clk: clk, jobs: map[string]Job{}, machines: map[string]Machine{},
		starts: map[string]time.Time{}, done: map[string]time.Time{}}
	for _, j := range jobs {
		sm.jobs[j.ID] = j
	}
	for _, m := range machines {
		sm.machines[m.ID] = m
	}
	return sm
}

func (sm *sim) status(id string) Status {
	r, ok := sm.s.Result(id)
	if !ok {
		sm.tb.Fatalf("no result for %s", id)
	}
	return r.Status
}

func (sm *sim) check() {
	tb := sm.tb
	count := map[string]int{}
	for _, a := range sm.s.Running() {
		count[a.Machine]++
	}
	for m, n := range count {
		if n > sm.machines[m].MaxJobs {
			tb.Fatalf("machine %s runs %d > MaxJobs %d", m, n, sm.machines[m].MaxJobs)
		}
	}
	if len(sm.s.Running()) != len(sm.running) {
		tb.Fatalf("scheduler has %d running, simulation %d", len(sm.s.Running()), len(sm.running))
	}
}

// start takes the assignments of one Next.
func (sm *sim) start(as []Assignment) {
	tb := sm.tb
	for _, a := range as {
		j := sm.jobs[a.Job]
		m := sm.machines[a.Machine]
		if !CanBuild(m, j.System, j.Features) {
			tb.Fatalf("%s assigned to %s, which cannot build it", a.Job, a.Machine)
		}
		for _, d := range j.Deps {
			if st := sm.status(d); st != Built && st != Valid {
				tb.Fatalf("%s started on %s while its dependency %s is %s", a.Job, a.Machine, d, st)
			}
		}
		if st := sm.status(a.Job); st != Running {
			tb.Fatalf("assigned %s is %s", a.Job, st)
		}
		speed := m.SpeedFactor
		if speed <= 0 {
			speed = 1
		}
		dur := j.EstDuration
		if dur <= 0 {
			dur = time.Minute
		}
		sm.seq++
		sm.running = append(sm.running, run{a, sm.clk.now.Add(time.Duration(float64(dur) / speed)), sm.seq})
		if _, ok := sm.starts[a.Job]; !ok {
			sm.starts[a.Job] = sm.clk.now
		}
		sm.assigned = append(sm.assigned, a)
	}
	sm.check()
}

// runAll simulates until Finished and returns the makespan.
func (sm *sim) runAll(maxSteps int) time.Duration {
	tb := sm.tb
	for step := 0; ; step++ {
		if step > maxSteps {
			tb.Fatalf("not finished after %d steps", maxSteps)
		}
		sm.start(sm.s.Next())
		if sm.s.Finished() {
			if len(sm.running) != 0 {
				tb.Fatalf("finished with %d running", len(sm.running))
			}
			return sm.clk.now.Sub(t0)
		}
		wake, ok := sm.s.NextWake()
		if len(sm.running) == 0 {
			if !ok {
				tb.Fatalf("nothing running, not finished, and no wake time")
			}
			if !wake.After(sm.clk.now) {
				tb.Fatalf("NextWake %v is not after now %v, but Next gave nothing", wake, sm.clk.now)
			}
			sm.clk.Set(wake)
			continue
		}
		sort.Slice(sm.running, func(a, b int) bool {
			ra, rb := sm.running[a], sm.running[b]
			if !ra.end.Equal(rb.end) {
				return ra.end.Before(rb.end)
			}
			return ra.seq < rb.seq
		})
		r := sm.running[0]
		if ok && wake.Before(r.end) && wake.After(sm.clk.now) {
			sm.clk.Set(wake)
			continue
		}
		sm.running = sm.running[1:]
		sm.clk.Set(r.end)
		o := succeed
		if sm.decide != nil {
			o = sm.decide(r.Assignment)
		}
		switch o {
		case succeed:
			if err := sm.s.Done(r.Job, r.Machine, Input{Path: r.Job + "-out", Size: 1000}); err != nil {
				tb.Fatal(err)
			}
			sm.done[r.Job] = sm.clk.now
		case fail:
			if err := sm.s.Failed(r.Job, r.Machine, errors.New("builder failed")); err != nil {
				tb.Fatal(err)
			}
		case down:
			if err := sm.s.MachineDown(r.Machine, errors.New("connection reset")); err != nil {
				tb.Fatal(err)
			}
			// The caller abandons every build on the machine.
			var keep []run
			for _, o := range sm.running {
				if o.Machine != r.Machine {
					keep = append(keep, o)
				}
			}
			sm.running = keep
		}
		sm.check()
	}
}

// checkFinal checks the final statuses against the graph.
func (sm *sim) checkFinal() {
	tb := sm.tb
	for id, j := range sm.jobs {
		r, _ := sm.s.Result(id)
		if !r.Status.Final() {
			tb.Fatalf("%s ends %s", id, r.Status)
		}
		switch r.Status {
		case Built:
			for _, d := range j.Deps {
				if st := sm.status(d); st != Built && st != Valid {
					tb.Fatalf("%s built but dependency %s is %s", id, d, st)
				}
			}
		case DependencyFailed:
			var de *DependencyError
			if !errors.As(r.Err, &de) {
				tb.Fatalf("%s: DependencyFailed with %v", id, r.Err)
			}
			if st := sm.status(de.Dep); st != Failed && st != Unbuildable && st != DependencyFailed {
				tb.Fatalf("%s: DependencyFailed on %s which is %s", id, de.Dep, st)
			}
		}
	}
}

func unitJob(id string, deps ...string) Job {
	return Job{ID: id, System: "x86_64-linux", Deps: deps, EstDuration: time.Minute}
}

func pool(n, slots int) []Machine {
	var ms []Machine
	for i := 0; i < n; i++ {
		ms = append(ms, Machine{ID: fmt.Sprintf("m%d", i), Systems: []string{"x86_64-linux"}, MaxJobs: slots, SpeedFactor: 1})
	}
	return ms
}

// bounds returns the two lower bounds of the makespan of unit jobs on
// slots: the critical path and the total work over the slots.
func bounds(jobs []Job, slots int) (int, int) {
	depth := map[string]int{}
	var d func(id string) int
	byID := map[string]Job{}
	for _, j := range jobs {
		byID[j.ID] = j
	}
	d = func(id string) int {
		if v, ok := depth[id]; ok {
			return v
		}
		best := 0
		for _, p := range byID[id].Deps {
			best = max(best, d(p))
		}
		depth[id] = best + 1
		return best + 1
	}
	cp := 0
	for _, j := range jobs {
		cp = max(cp, d(j.ID))
	}
	return cp, (len(jobs) + slots - 1) / slots
}

// TestMakespan simulates 60 unit jobs in several shapes on 3 machines of
// 2 slots and checks the makespan against the lower bound
// max(critical path, work/6): equal to the optimum where it is known,
// within 25% of the bound otherwise.
func TestMakespan(t *testing.T) {
	shapes := map[string]func() []Job{
		// Independent jobs: 60/6 = 10.
		"wide": func() []Job {
			var js []Job
			for i := 0; i < 60; i++ {
				js = append(js, unitJob(fmt.Sprintf("w%02d", i)))
			}
			return js
		},
		// One chain: 60.
		"deep": func() []Job {
			var js []Job
			for i := 0; i < 60; i++ {
				var deps []string
				if i > 0 {
					deps = []string{fmt.Sprintf("c%02d", i-1)}
				}
				js = append(js, unitJob(fmt.Sprintf("c%02d", i), deps...))
			}
			return js
		},
		// A chain of 20 named to sort last, and 40 independent jobs:
		// the bound 20 is met only if the chain starts first.
		"deep+wide": func() []Job {
			var js []Job
			for i := 0; i < 40; i++ {
				js = append(js, unitJob(fmt.Sprintf("a%02d", i)))
			}
			for i := 0; i < 20; i++ {
				var deps []string
				if i > 0 {
					deps = []string{fmt.Sprintf("z%02d", i-1)}
				}
				js = append(js, unitJob(fmt.Sprintf("z%02d", i), deps...))
			}
			return js
		},
		// An in-tree (each job feeds one other): a binary reduction of
		// 30 leaves and 30 inner nodes (15, 8, 4, 2, 1); Hu's algorithm,
		// which is critical-path order, is optimal here.
		"in-tree": func() []Job {
			var js []Job
			level := []string{}
			for i := 0; i < 30; i++ {
				id := fmt.Sprintf("l%02d", i)
				js = append(js, unitJob(id))
				level = append(level, id)
			}
			n := 0
			for len(level) > 1 {
				var next []string
				for i := 0; i < len(level); i += 2 {
					id := fmt.Sprintf("n%02d", n)
					n++
					deps := level[i:min(i+2, len(level))]
					js = append(js, unitJob(id, deps...))
					next = append(next, id)
				}
				level = next
			}
			return js
		},
		// Layers of 10, each job needing two of the layer before.
		"layered": func() []Job {
			var js []Job
			for l := 0; l < 6; l++ {
				for i := 0; i < 10; i++ {
					var deps []string
					if l > 0 {
						deps = []string{fmt.Sprintf("L%d-%d", l-1, i), fmt.Sprintf("L%d-%d", l-1, (i*7+3)%10)}
					}
					js = append(js, unitJob(fmt.Sprintf("L%d-%d", l, i), deps...))
				}
			}
			return js
		},
		// A fan-out then fan-in: 1 -> 58 -> 1; the optimum is
		// 1 + ceil(58/6) + 1 = 12.
		"diamond": func() []Job {
			js := []Job{unitJob("a")}
			var mids []string
			for i := 0; i < 58; i++ {
				id := fmt.Sprintf("m%02d", i)
				js = append(js, unitJob(id, "a"))
				mids = append(mids, id)
			}
			return append(js, unitJob("z", mids...))
		},
	}
	optimum := map[string]int{"wide": 10, "deep": 60, "deep+wide": 20, "in-tree": 12, "diamond": 12}
	names := []string{"wide", "deep", "deep+wide", "in-tree", "layered", "diamond"}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			jobs := shapes[name]()
			if len(jobs) != 60 {
				t.Fatalf("%d jobs", len(jobs))
			}
			sm := newSim(t, jobs, pool(3, 2), Options{})
			got := int(sm.runAll(1000) / time.Minute)
			sm.checkFinal()
			cp, work := bounds(jobs, 6)
			lb := max(cp, work)
			t.Logf("%s: makespan %d, critical path %d, work bound %d", name, got, cp, work)
			if got < lb {
				t.Fatalf("makespan %d below the lower bound %d: the simulation is wrong", got, lb)
			}
			if opt, ok := optimum[name]; ok && got != opt {
				t.Fatalf("makespan %d, optimum %d", got, opt)
			}
			if float64(got) > 1.25*float64(lb) {
				t.Fatalf("makespan %d, more than 1.25 × the bound %d", got, lb)
			}
		})
	}
}
