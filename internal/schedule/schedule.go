package schedule

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// Clock gives the current time; tests use a fake one.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Input is one store path of a job's input closure with its NAR size.
type Input struct {
	Path string
	Size uint64
}

// Job is one derivation to realise.
type Job struct {
	ID          string   // the .drv path
	System      string   // the derivation's platform ("builtin" for builtins)
	Features    []string // requiredSystemFeatures (with "ca-derivations" when floating)
	PreferLocal bool     // preferLocalBuild
	Valid       bool     // its outputs are already valid locally: not built
	Deps        []string // IDs of the jobs whose outputs it needs
	// Inputs is the input closure with NAR sizes. Done adds the outputs
	// it is given to each dependent's inputs; AddInputs adds more.
	Inputs      []Input
	EstDuration time.Duration // 0: Options.DefaultDuration
}

// Machine is a build machine; the local store is one with Local set.
type Machine struct {
	ID                string // e.g. the store URI; "local" for the local store
	Systems           []string
	SupportedFeatures []string
	MandatoryFeatures []string
	MaxJobs           int     // slots; 0 builds nothing (-j 0 for the local machine)
	SpeedFactor       float64 // <= 0 means 1
	Local             bool
}

// Options tune a Scheduler; zero values take the defaults.
type Options struct {
	KeepGoing       bool
	Bandwidth       float64       // bytes per second to a machine; default 50e6
	BackoffBase     time.Duration // first back-off of a machine reported down; default 10s
	BackoffMax      time.Duration // cap of the doubling back-off; default 10m
	DefaultDuration time.Duration // EstDuration of a job without one; default 1m
	Clock           Clock         // default the system clock
}

// Status is where a job is; the last six are final.
type Status int

const (
	Pending          Status = iota // waiting for dependencies
	Ready                          // dependencies done, not running
	Running                        // assigned to a machine
	Built                          // built (Done)
	Valid                          // outputs already valid locally; not built
	Failed                         // the build failed (Failed)
	DependencyFailed               // a dependency failed or is unbuildable
	Unbuildable                    // no machine can build it
	Cancelled                      // not built: a failure stopped new builds
)

var statusNames = [...]string{"pending", "ready", "running", "built", "valid", "failed", "dependency-failed", "unbuildable", "cancelled"}

func (s Status) String() string {
	if s >= 0 && int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Final reports whether a job in this status is done with.
func (s Status) Final() bool { return s >= Built }

// Assignment is one build to start: Job on Machine.
type Assignment struct {
	Job     string
	Machine string
}

// Result is what became of a job.
type Result struct {
	Status   Status
	Machine  string // where it runs or was built or failed
	Err      error  // Failed: the build's error; DependencyFailed: names the dependency; Unbuildable: *UnbuildableError
	Attempts int    // times it was assigned (more than one after machines went down)
}

// EventKind says what an Event reports.
type EventKind int

const (
	MachineDownEvent EventKind = iota // a machine went down; its builds go elsewhere
	StopEvent                         // a failure stops new builds (no KeepGoing)
)

// Event is something for the caller's log, reported once.
type Event struct {
	Time     time.Time
	Kind     EventKind
	Machine  string        // MachineDownEvent
	Job      string        // StopEvent: the failed job
	Err      error         // why
	RetryIn  time.Duration // MachineDownEvent: the back-off
	Requeued []string      // MachineDownEvent: builds that go back to the ready set
	Running  int           // StopEvent: builds still running, which may finish
}

func (e Event) String() string {
	switch e.Kind {
	case MachineDownEvent:
		s := fmt.Sprintf("machine '%s' is down (%v), retrying it in %s", e.Machine, e.Err, e.RetryIn)
		if len(e.Requeued) > 0 {
			s += fmt.Sprintf("; rescheduling its builds of '%s'", strings.Join(e.Requeued, "', '"))
		}
		return s
	case StopEvent:
		return fmt.Sprintf("build of '%s' failed (%v); starting no new builds, waiting for %d running (use --keep-going to build what does not depend on it)", e.Job, e.Err, e.Running)
	}
	return fmt.Sprintf("event %d", int(e.Kind))
}

// UnbuildableError says that no machine can build a job.
type UnbuildableError struct {
	Job      string
	System   string
	Features []string  // sorted
	Machines []Machine // all machines, in the scheduler's order
}

func (e *UnbuildableError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cannot build '%s': no machine can build a '%s' derivation with features {%s}",
		e.Job, e.System, strings.Join(e.Features, ", "))
	forbidden, remote := false, 0
	for _, m := range e.Machines {
		if m.Local && m.MaxJobs <= 0 {
			forbidden = true
		}
		if !m.Local {
			remote++
		}
	}
	if forbidden {
		b.WriteString(" (and -j 0 forbids a local build)")
	}
	if remote == 0 {
		b.WriteString("; either increase '--max-jobs' or add build machines (--builders)")
	}
	if len(e.Machines) > 0 {
		fmt.Fprintf(&b, "\n%d machines (systems; max jobs; supported features; mandatory features):", len(e.Machines))
		for _, m := range e.Machines {
			fmt.Fprintf(&b, "\n  '%s' (%s; %d; {%s}; {%s})", m.ID, strings.Join(m.Systems, ", "), m.MaxJobs,
				strings.Join(sorted(m.SupportedFeatures), ", "), strings.Join(sorted(m.MandatoryFeatures), ", "))
		}
	}
	return b.String()
}

// DependencyError is the Err of a DependencyFailed job.
type DependencyError struct{ Job, Dep string }

func (e *DependencyError) Error() string {
	return fmt.Sprintf("cannot build '%s': dependency '%s' failed", e.Job, e.Dep)
}

// ErrStale is returned (wrapped) when a report names a job that is not
// running on that machine (for example a build whose machine was
// reported down and which went elsewhere).
var ErrStale = errors.New("job is not running on that machine")

type job struct {
	Job
	idx        int
	deps       []*job
	dependents []*job
	waiting    int // dependencies not yet Built or Valid
	inputs     map[string]uint64
	dur        time.Duration
	prio       time.Duration // critical path: dur + the longest chain of dependents
	cand       []*machine    // machines that can build it, in machine order
	status     Status
	machine    *machine
	start      time.Time
	expect     time.Duration // estimated transfer + build when assigned
	attempts   int
	err        error
}

type machine struct {
	Machine
	idx       int
	speed     float64
	running   []*job // in assignment order
	holds     map[string]bool
	failures  int // consecutive; > 0: down or being probed
	downUntil time.Time
}

// Scheduler is the state of one build graph. It is not safe for
// concurrent use.
type Scheduler struct {
	opts     Options
	clock    Clock
	jobs     []*job // by ID
	byID     map[string]*job
	machines []*machine
	mByID    map[string]*machine
	halted   bool
	events   []Event
	unbuild  []error
}

// New checks the graph (known dependencies, no cycles, unique IDs) and
// returns a scheduler for it. Jobs that no machine can build are
// Unbuildable at once (see Unbuildable).
func New(jobs []Job, machines []Machine, opts Options) (*Scheduler, error) {
	if opts.Bandwidth <= 0 {
		opts.Bandwidth = 50e6
	}
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = 10 * time.Second
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 10 * time.Minute
	}
	if opts.BackoffMax < opts.BackoffBase {
		opts.BackoffMax = opts.BackoffBase
	}
	if opts.DefaultDuration <= 0 {
		opts.DefaultDuration = time.Minute
	}
	s := &Scheduler{opts: opts, clock: opts.Clock, byID: map[string]*job{}, mByID: map[string]*machine{}}
	if s.clock == nil {
		s.clock = systemClock{}
	}
	for i, m := range machines {
		if _, dup := s.mByID[m.ID]; dup {
			return nil, fmt.Errorf("schedule: machine '%s' given twice", m.ID)
		}
		mm := &machine{Machine: m, idx: i, speed: m.SpeedFactor, holds: map[string]bool{}}
		if mm.speed <= 0 {
			mm.speed = 1
		}
		s.machines = append(s.machines, mm)
		s.mByID[m.ID] = mm
	}
	for _, j := range jobs {
		if _, dup := s.byID[j.ID]; dup {
			return nil, fmt.Errorf("schedule: job '%s' given twice", j.ID)
		}
		jj := &job{Job: j, inputs: map[string]uint64{}, dur: j.EstDuration}
		if jj.dur <= 0 {
			jj.dur = opts.DefaultDuration
		}
		for _, in := range j.Inputs {
			jj.inputs[in.Path] = in.Size
		}
		s.jobs = append(s.jobs, jj)
		s.byID[j.ID] = jj
	}
	sort.Slice(s.jobs, func(a, b int) bool { return s.jobs[a].ID < s.jobs[b].ID })
	for i, j := range s.jobs {
		j.idx = i
		seen := map[string]bool{}
		for _, d := range j.Deps {
			dj, ok := s.byID[d]
			if !ok {
				return nil, fmt.Errorf("schedule: job '%s' depends on unknown job '%s'", j.ID, d)
			}
			if seen[d] {
				continue
			}
			seen[d] = true
			j.deps = append(j.deps, dj)
			dj.dependents = append(dj.dependents, j)
		}
	}
	order, err := s.topo()
	if err != nil {
		return nil, err
	}
	// Critical path, dependents first.
	for i := len(order) - 1; i >= 0; i-- {
		j := order[i]
		var longest time.Duration
		for _, d := range j.dependents {
			if d.prio > longest {
				longest = d.prio
			}
		}
		j.prio = j.dur + longest
	}
	var local *machine
	for _, m := range s.machines {
		if m.Local && m.MaxJobs > 0 && local == nil {
			local = m
		}
	}
	for _, j := range s.jobs {
		for _, m := range s.machines {
			if m.MaxJobs > 0 && CanBuild(m.Machine, j.System, j.Features) {
				j.cand = append(j.cand, m)
			}
		}
		if j.PreferLocal && local != nil && CanBuild(local.Machine, j.System, j.Features) {
			j.cand = []*machine{local}
		}
	}
	// Statuses in dependency order, so failures propagate.
	var failed []*job
	for _, j := range order {
		switch {
		case j.Valid:
			j.status = Valid
		case len(j.cand) == 0:
			j.status = Unbuildable
			j.err = &UnbuildableError{Job: j.ID, System: j.System, Features: sorted(j.Features), Machines: append([]Machine(nil), machines...)}
			s.unbuild = append(s.unbuild, j.err)
			failed = append(failed, j)
		}
	}
	for _, j := range order {
		if j.status != Pending {
			continue
		}
		for _, d := range j.deps {
			if d.status != Valid {
				j.waiting++
			}
		}
	}
	for _, j := range failed {
		s.propagate(j)
	}
	for _, j := range s.jobs {
		if j.status == Pending && j.waiting == 0 {
			j.status = Ready
		}
	}
	sort.Slice(s.unbuild, func(a, b int) bool {
		return s.unbuild[a].(*UnbuildableError).Job < s.unbuild[b].(*UnbuildableError).Job
	})
	if len(failed) > 0 && !opts.KeepGoing {
		s.halt()
	}
	return s, nil
}

func (s *Scheduler) topo() ([]*job, error) {
	state := make([]int8, len(s.jobs)) // 0 new, 1 on stack, 2 done
	var order []*job
	var visit func(j *job, path []string) error
	visit = func(j *job, path []string) error {
		switch state[j.idx] {
		case 1:
			return fmt.Errorf("schedule: dependency cycle: %s -> %s", strings.Join(path, " -> "), j.ID)
		case 2:
			return nil
		}
		state[j.idx] = 1
		for _, d := range j.deps {
			if err := visit(d, append(path, j.ID)); err != nil {
				return err
			}
		}
		state[j.idx] = 2
		order = append(order, j)
		return nil
	}
	for _, j := range s.jobs {
		if err := visit(j, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// CanBuild is Nix 2.8's rule for whether m can build a derivation of
// system with the required features: the system is one of m's or
// "builtin", every required feature is supported or mandatory, and every
// mandatory feature is required. It ignores MaxJobs.
func CanBuild(m Machine, system string, features []string) bool {
	if system != "builtin" && !contains(m.Systems, system) {
		return false
	}
	for _, f := range features {
		if !contains(m.SupportedFeatures, f) && !contains(m.MandatoryFeatures, f) {
			return false
		}
	}
	for _, f := range m.MandatoryFeatures {
		if !contains(features, f) {
			return false
		}
	}
	return true
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func sorted(l []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range l {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	sort.Strings(out)
	return out
}

// propagate marks every not yet final dependent of j DependencyFailed.
func (s *Scheduler) propagate(j *job) {
	for _, d := range j.dependents {
		if d.status.Final() {
			continue
		}
		d.status = DependencyFailed
		d.err = &DependencyError{Job: d.ID, Dep: j.ID}
		s.propagate(d)
	}
}

func (s *Scheduler) halt() {
	s.halted = true
	for _, j := range s.jobs {
		if j.status == Pending || j.status == Ready {
			j.status = Cancelled
		}
	}
}

func (s *Scheduler) job(id string) (*job, error) {
	j, ok := s.byID[id]
	if !ok {
		return nil, fmt.Errorf("schedule: unknown job '%s'", id)
	}
	return j, nil
}

func (s *Scheduler) machine(id string) (*machine, error) {
	m, ok := s.mByID[id]
	if !ok {
		return nil, fmt.Errorf("schedule: unknown machine '%s'", id)
	}
	return m, nil
}

func (s *Scheduler) running(id, mid string) (*job, *machine, error) {
	j, err := s.job(id)
	if err != nil {
		return nil, nil, err
	}
	m, err := s.machine(mid)
	if err != nil {
		return nil, nil, err
	}
	if j.status != Running || j.machine != m {
		return nil, nil, fmt.Errorf("schedule: '%s' on '%s': %w", id, mid, ErrStale)
	}
	return j, m, nil
}

func (m *machine) remove(j *job) {
	for i, r := range m.running {
		if r == j {
			m.running = append(m.running[:i], m.running[i+1:]...)
			return
		}
	}
}

// capacity is how many builds m may run at once: MaxJobs, or one while
// it is probed after a back-off.
func (m *machine) capacity() int {
	if m.failures > 0 {
		return min(m.MaxJobs, 1)
	}
	return m.MaxJobs
}

func (m *machine) eligible(now time.Time) bool {
	return m.MaxJobs > 0 && (m.failures == 0 || !now.Before(m.downUntil))
}

// transfer estimates the time to send m the inputs of j it lacks.
func (s *Scheduler) transfer(j *job, m *machine) time.Duration {
	var missing uint64
	for p, size := range j.inputs {
		if !m.holds[p] {
			missing += size
		}
	}
	return seconds(float64(missing) / s.opts.Bandwidth)
}

func seconds(f float64) time.Duration {
	d := f * float64(time.Second)
	if d >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(d)
}

func (m *machine) buildTime(j *job) time.Duration {
	return time.Duration(float64(j.dur) / m.speed)
}

// remaining estimates how long a running job still takes: what its
// estimate leaves, or, once it overran, half of what it took so far.
func remaining(j *job, now time.Time) time.Duration {
	elapsed := now.Sub(j.start)
	r := j.expect - elapsed
	if half := elapsed / 2; r < half {
		r = half
	}
	if r <= 0 {
		r = 1
	}
	return r
}

// plan is one pass of list scheduling over the ready jobs at now. With
// commit it starts the jobs whose best machine has a free slot now and
// returns them; it always returns the earliest time a job waits for
// (zero if none).
func (s *Scheduler) plan(now time.Time, commit bool) ([]Assignment, time.Time) {
	var ready []*job
	for _, j := range s.jobs {
		if j.status == Ready {
			ready = append(ready, j)
		}
	}
	sort.SliceStable(ready, func(a, b int) bool { return ready[a].prio > ready[b].prio })
	// slots[m] holds, per slot that may be used, when it is free.
	slots := make([][]time.Time, len(s.machines))
	for _, m := range s.machines {
		if !m.eligible(now) {
			continue
		}
		var ts []time.Time
		for _, r := range m.running {
			ts = append(ts, now.Add(remaining(r, now)))
		}
		for i := len(m.running); i < m.capacity(); i++ {
			ts = append(ts, now)
		}
		sort.Slice(ts, func(a, b int) bool { return ts[a].Before(ts[b]) })
		if c := m.capacity(); len(ts) > c {
			// More running than a probed machine may run: the extra
			// builds must end first.
			ts = ts[len(ts)-c:]
		}
		slots[m.idx] = ts
	}
	var out []Assignment
	var wake time.Time
	for _, j := range ready {
		var best *machine
		var bestEnd, bestStart time.Time
		var bestCost time.Duration
		for _, m := range j.cand {
			ts := slots[m.idx]
			if len(ts) == 0 {
				continue
			}
			cost := s.transfer(j, m) + m.buildTime(j)
			end := ts[0].Add(cost)
			// Equal estimates: the one that starts sooner, then the
			// first machine.
			if best == nil || end.Before(bestEnd) || end.Equal(bestEnd) && ts[0].Before(bestStart) {
				best, bestEnd, bestStart, bestCost = m, end, ts[0], cost
			}
		}
		if best == nil {
			continue
		}
		ts := slots[best.idx]
		ts[0] = bestEnd
		sort.Slice(ts, func(a, b int) bool { return ts[a].Before(ts[b]) })
		if bestStart.After(now) {
			if wake.IsZero() || bestStart.Before(wake) {
				wake = bestStart
			}
			continue
		}
		if commit {
			j.status = Running
			j.machine = best
			j.start = now
			j.expect = bestCost
			j.attempts++
			best.running = append(best.running, j)
		}
		out = append(out, Assignment{Job: j.ID, Machine: best.ID})
	}
	return out, wake
}

// Next returns the builds to start now: ready jobs, most critical first,
// each on the machine where it is estimated to finish first, at most one
// per free slot of an up machine (never more than MaxJobs running on a
// machine; one on a machine probed after its back-off). After a failure
// without KeepGoing it returns nothing.
func (s *Scheduler) Next() []Assignment {
	if s.halted {
		return nil
	}
	out, _ := s.plan(s.clock.Now(), true)
	return out
}

// NextWake returns when Next may have work that it has not now: now if
// it has, else the earliest of the ends of the back-offs that ready jobs
// wait for and the expected ends of the running builds that ready jobs
// wait for (when the estimates change, a waiting job may go to another
// machine). It is false when only a report (Done, Failed, MachineDown)
// can change anything: nothing is ready, or after a stop.
func (s *Scheduler) NextWake() (time.Time, bool) {
	if s.halted {
		return time.Time{}, false
	}
	now := s.clock.Now()
	out, wake := s.plan(now, false)
	if len(out) > 0 {
		return now, true
	}
	for _, j := range s.jobs {
		if j.status != Ready {
			continue
		}
		for _, m := range j.cand {
			if !m.eligible(now) && (wake.IsZero() || m.downUntil.Before(wake)) {
				wake = m.downUntil
			}
		}
	}
	return wake, !wake.IsZero()
}

// Done reports that the job built on the machine. The machine then
// holds outputs, which become inputs of each dependent; the machine is
// known to be up (its back-off resets). Dependents whose dependencies
// are all done become ready.
func (s *Scheduler) Done(jobID, machineID string, outputs ...Input) error {
	j, m, err := s.running(jobID, machineID)
	if err != nil {
		return err
	}
	m.remove(j)
	m.failures = 0
	j.status = Built
	for _, o := range outputs {
		m.holds[o.Path] = true
	}
	for _, d := range j.dependents {
		for _, o := range outputs {
			d.inputs[o.Path] = o.Size
		}
		if d.status != Pending {
			continue
		}
		d.waiting--
		if d.waiting == 0 {
			d.status = Ready
		}
	}
	return nil
}

// Failed reports a genuine build failure (the builder failed, an output
// check failed): the job is Failed and not retried, its dependents are
// DependencyFailed, and without KeepGoing no new build starts (a
// StopEvent says so). The machine counts as up.
func (s *Scheduler) Failed(jobID, machineID string, cause error) error {
	j, m, err := s.running(jobID, machineID)
	if err != nil {
		return err
	}
	m.remove(j)
	m.failures = 0
	j.status = Failed
	j.err = cause
	s.propagate(j)
	if !s.opts.KeepGoing && !s.halted {
		s.halt()
		n := 0
		for _, r := range s.jobs {
			if r.status == Running {
				n++
			}
		}
		s.events = append(s.events, Event{Time: s.clock.Now(), Kind: StopEvent, Job: j.ID, Err: cause, Running: n})
	}
	return nil
}

// MachineDown reports that the machine could not be reached or that a
// session to it died. Its running builds go back to the ready set (the
// caller abandons them), or are Cancelled after a stop. Unless the
// machine is already down, it is down for the back-off (BackoffBase,
// doubling per consecutive failure up to BackoffMax) and a
// MachineDownEvent is recorded.
func (s *Scheduler) MachineDown(machineID string, cause error) error {
	m, err := s.machine(machineID)
	if err != nil {
		return err
	}
	now := s.clock.Now()
	var requeued []string
	for _, j := range m.running {
		j.machine = nil
		if s.halted {
			j.status = Cancelled
			j.err = fmt.Errorf("machine '%s' went down: %w", m.ID, cause)
			continue
		}
		j.status = Ready
		requeued = append(requeued, j.ID)
	}
	m.running = nil
	if m.failures > 0 && now.Before(m.downUntil) {
		return nil
	}
	m.failures++
	back := s.opts.BackoffBase
	for i := 1; i < m.failures && back < s.opts.BackoffMax; i++ {
		back *= 2
	}
	if back > s.opts.BackoffMax {
		back = s.opts.BackoffMax
	}
	m.downUntil = now.Add(back)
	s.events = append(s.events, Event{Time: now, Kind: MachineDownEvent, Machine: m.ID, Err: cause, RetryIn: back, Requeued: requeued})
	return nil
}

// MachineUp reports a successful connect: the back-off resets and the
// machine has all its slots again.
func (s *Scheduler) MachineUp(machineID string) error {
	m, err := s.machine(machineID)
	if err != nil {
		return err
	}
	m.failures = 0
	m.downUntil = time.Time{}
	return nil
}

// Holds tells the scheduler that the machine now holds the paths (after
// a copy to it, or, for the local machine, paths valid locally and
// outputs copied back).
func (s *Scheduler) Holds(machineID string, paths ...string) error {
	m, err := s.machine(machineID)
	if err != nil {
		return err
	}
	for _, p := range paths {
		m.holds[p] = true
	}
	return nil
}

// AddInputs adds to a job's input closure (for example the references of
// a dependency's outputs once known).
func (s *Scheduler) AddInputs(jobID string, inputs ...Input) error {
	j, err := s.job(jobID)
	if err != nil {
		return err
	}
	for _, in := range inputs {
		j.inputs[in.Path] = in.Size
	}
	return nil
}

// Events returns the events since the last call, oldest first.
func (s *Scheduler) Events() []Event {
	e := s.events
	s.events = nil
	return e
}

// Finished reports whether every job has a final status.
func (s *Scheduler) Finished() bool {
	for _, j := range s.jobs {
		if !j.status.Final() {
			return false
		}
	}
	return true
}

// Stopped reports whether a failure (without KeepGoing) stopped new builds.
func (s *Scheduler) Stopped() bool { return s.halted }

// Result returns what became of a job so far.
func (s *Scheduler) Result(jobID string) (Result, bool) {
	j, ok := s.byID[jobID]
	if !ok {
		return Result{}, false
	}
	r := Result{Status: j.status, Err: j.err, Attempts: j.attempts}
	if j.machine != nil {
		r.Machine = j.machine.ID
	}
	return r, true
}

// Running returns the builds running now, by machine order then start.
func (s *Scheduler) Running() []Assignment {
	var out []Assignment
	for _, m := range s.machines {
		for _, j := range m.running {
			out = append(out, Assignment{Job: j.ID, Machine: m.ID})
		}
	}
	return out
}

// Unbuildable returns an *UnbuildableError for each job that no machine
// can build, by job ID.
func (s *Scheduler) Unbuildable() []error { return append([]error(nil), s.unbuild...) }
