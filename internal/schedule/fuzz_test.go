package schedule

import (
	"fmt"
	"testing"
	"time"
)

// bytesource reads small numbers from fuzz input, zeros when it runs out.
type bytesource struct {
	b []byte
	i int
}

func (r *bytesource) next() byte {
	if r.i >= len(r.b) {
		return 0
	}
	r.i++
	return r.b[r.i-1]
}

func (r *bytesource) n(k int) int { return int(r.next()) % k }

var (
	fuzzSystems  = []string{x86, arm, "builtin"}
	fuzzFeatures = []string{"kvm", "big-parallel", "benchmark"}
)

func (r *bytesource) features() []string {
	var fs []string
	bits := r.next()
	for i, f := range fuzzFeatures {
		if bits&(1<<i) != 0 {
			fs = append(fs, f)
		}
	}
	return fs
}

// FuzzSchedule runs random graphs on random machines with random
// outcomes (success, genuine failure, machine down, spurious MachineUp,
// late Holds) and checks: never more than MaxJobs running on a machine,
// no build before its dependencies are done, nothing new after a stop,
// no retry of a genuine failure, Unbuildable exactly for the jobs no
// machine can build, every job ends in one final status consistent with
// its dependencies, and Finished comes.
func FuzzSchedule(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x10\x00\x00\x00\x00\x00\x00\x00\x03\x01\x00\x00\x02\x01"))
	f.Add([]byte("scheduling random graphs on random machines with failures"))
	f.Add([]byte{24, 1, 3, 0, 0, 7, 7, 7, 7, 200, 100, 50, 25, 12, 6, 3, 1, 0, 255, 128, 64, 32, 16, 8, 4, 2, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &bytesource{b: data}
		nj := 1 + r.n(24)
		nm := 1 + r.n(4)
		keepGoing := r.n(2) == 1
		var machines []Machine
		for i := 0; i < nm; i++ {
			var systems []string
			bits := r.next()
			for k, s := range fuzzSystems[:2] {
				if bits&(1<<k) != 0 {
					systems = append(systems, s)
				}
			}
			var mandatory []string
			if r.n(4) == 0 {
				mandatory = []string{fuzzFeatures[r.n(len(fuzzFeatures))]}
			}
			machines = append(machines, Machine{
				ID: fmt.Sprintf("m%d", i), Systems: systems,
				SupportedFeatures: r.features(), MandatoryFeatures: mandatory,
				MaxJobs: r.n(4), SpeedFactor: float64(r.n(4)), Local: i == 0 && r.n(2) == 0,
			})
		}
		var jobs []Job
		for i := 0; i < nj; i++ {
			j := Job{
				ID:          fmt.Sprintf("/nix/store/j%02d.drv", i),
				System:      fuzzSystems[r.n(len(fuzzSystems))],
				PreferLocal: r.n(4) == 0,
				Valid:       r.n(8) == 0,
				EstDuration: time.Duration(r.n(5)) * time.Minute,
			}
			if r.n(3) == 0 {
				j.Features = r.features()
			}
			for k := 0; k < 3 && i > 0; k++ {
				if r.n(2) == 0 {
					j.Deps = append(j.Deps, jobs[r.n(i)].ID)
				}
			}
			if r.n(2) == 0 {
				j.Inputs = []Input{{Path: fmt.Sprintf("/nix/store/src%d", r.n(4)), Size: uint64(r.n(256)) << 20}}
			}
			jobs = append(jobs, j)
		}
		sm := newSim(t, jobs, machines, Options{KeepGoing: keepGoing, BackoffBase: time.Duration(1+r.n(20)) * time.Second, BackoffMax: time.Minute})

		for _, j := range jobs {
			can := false
			for _, m := range machines {
				can = can || m.MaxJobs > 0 && CanBuild(m, j.System, j.Features)
			}
			if st := sm.status(j.ID); !j.Valid && !can && st != Unbuildable || (j.Valid || can) && st == Unbuildable {
				t.Fatalf("%s (%s %v) is %s, buildable %v, valid %v", j.ID, j.System, j.Features, st, can, j.Valid)
			}
		}

		downs := 0
		failedOnce := map[string]bool{}
		sm.decide = func(a Assignment) outcome {
			if failedOnce[a.Job] {
				t.Fatalf("%s started again after a genuine failure", a.Job)
			}
			switch k := r.n(10); {
			case k == 0 && downs < 12:
				downs++
				return down
			case k == 1:
				failedOnce[a.Job] = true
				return fail
			case k == 2:
				_ = sm.s.MachineUp(machines[r.n(len(machines))].ID)
			case k == 3:
				_ = sm.s.Holds(machines[r.n(len(machines))].ID, fmt.Sprintf("/nix/store/src%d", r.n(4)))
			}
			return succeed
		}
		// Without keep-going, a failure (or an unbuildable job, from the
		// start) stops new builds.
		wrapped := sm.decide
		stoppedAt := -1
		if !keepGoing && len(sm.s.Unbuildable()) > 0 {
			stoppedAt = 0
		}
		sm.decide = func(a Assignment) outcome {
			o := wrapped(a)
			if stoppedAt < 0 && o == fail && !keepGoing {
				stoppedAt = len(sm.assigned)
			}
			return o
		}
		sm.runAll(20000)
		sm.checkFinal()
		if stoppedAt >= 0 && len(sm.assigned) != stoppedAt {
			t.Fatalf("%d builds started after the stop", len(sm.assigned)-stoppedAt)
		}
		if !sm.s.Finished() {
			t.Fatalf("not finished")
		}
		if !keepGoing {
			return
		}
		// With keep-going every job whose dependencies all ended Built or
		// Valid was built (or failed itself).
		for _, j := range jobs {
			st := sm.status(j.ID)
			if st == Cancelled {
				t.Fatalf("%s cancelled with keep-going", j.ID)
			}
			if st == DependencyFailed {
				bad := false
				for _, d := range j.Deps {
					if ds := sm.status(d); ds != Built && ds != Valid {
						bad = true
					}
				}
				if !bad {
					t.Fatalf("%s DependencyFailed though its dependencies succeeded", j.ID)
				}
			}
		}
	})
}
