package schedule

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

const (
	gb  = 1 << 30
	x86 = "x86_64-linux"
	arm = "aarch64-linux"
)

func mustNew(t *testing.T, jobs []Job, machines []Machine, opts Options) (*Scheduler, *fakeClock) {
	t.Helper()
	clk := newClock()
	opts.Clock = clk
	s, err := New(jobs, machines, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s, clk
}

func assigned(as []Assignment) map[string]string {
	out := map[string]string{}
	for _, a := range as {
		out[a.Job] = a.Machine
	}
	return out
}

func wantStatus(t *testing.T, s *Scheduler, id string, want Status) Result {
	t.Helper()
	r, ok := s.Result(id)
	if !ok {
		t.Fatalf("no result for %s", id)
	}
	if r.Status != want {
		t.Fatalf("%s is %s (%v), want %s", id, r.Status, r.Err, want)
	}
	return r
}

func ok(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestCanBuildNixRules(t *testing.T) {
	m := Machine{Systems: []string{x86, "i686-linux"}, SupportedFeatures: []string{"kvm", "big-parallel"}, MandatoryFeatures: []string{"benchmark"}}
	plain := Machine{Systems: []string{x86}, SupportedFeatures: []string{"kvm"}}
	for _, c := range []struct {
		m        Machine
		system   string
		features []string
		want     bool
	}{
		{plain, x86, nil, true},
		{plain, "i686-linux", nil, false},
		{plain, arm, nil, false},
		{plain, "builtin", nil, true},
		{Machine{Systems: []string{arm}}, "builtin", nil, true}, // builtin runs anywhere
		{plain, x86, []string{"kvm"}, true},
		{plain, x86, []string{"kvm", "nixos-test"}, false},
		{plain, "builtin", []string{"nixos-test"}, false}, // builtin still needs the features
		{m, x86, []string{"kvm"}, false},                  // mandatory benchmark not required
		{m, "i686-linux", []string{"benchmark"}, true},    // a mandatory feature counts as supported
		{m, x86, []string{"benchmark", "kvm", "big-parallel"}, true},
		{m, x86, []string{"benchmark", "cuda"}, false},
	} {
		if got := CanBuild(c.m, c.system, c.features); got != c.want {
			t.Errorf("CanBuild(%v, %s, %v) = %v, want %v", c.m, c.system, c.features, got, c.want)
		}
	}
}

func TestNewRejectsBadGraphs(t *testing.T) {
	ms := pool(1, 1)
	for name, jobs := range map[string][]Job{
		"cycle":       {unitJob("a", "c"), unitJob("b", "a"), unitJob("c", "b")},
		"self":        {unitJob("a", "a")},
		"unknown dep": {unitJob("a", "nope")},
		"duplicate":   {unitJob("a"), unitJob("a")},
	} {
		if _, err := New(jobs, ms, Options{}); err == nil {
			t.Errorf("%s: New accepted %v", name, jobs)
		}
	}
	if _, err := New(nil, append(pool(1, 1), pool(1, 1)...), Options{}); err == nil {
		t.Errorf("New accepted a machine twice")
	}
}

// TestCriticalPathOrder: on one slot, ready jobs start in order of their
// chains of dependents (weighted by EstDuration), then by ID; a long
// chain named to sort last starts first.
func TestCriticalPathOrder(t *testing.T) {
	jobs := []Job{
		// chain z0 -> z1 -> z2 -> z3 (4 min), wide a, b, c (1 min each)
		unitJob("a"), unitJob("b"), unitJob("c"),
		unitJob("z0"), unitJob("z1", "z0"), unitJob("z2", "z1"), unitJob("z3", "z2"),
		// y: one job of 3 min, above a (1) but below the chain (4)
		{ID: "y", System: x86, EstDuration: 3 * time.Minute},
		// w0 -> w1, w2 (a fan-out): critical path 2 min
		unitJob("w0"), unitJob("w1", "w0"), unitJob("w2", "w0"),
	}
	s, clk := mustNew(t, jobs, pool(1, 1), Options{})
	var order []string
	for !s.Finished() {
		as := s.Next()
		if len(as) != 1 {
			t.Fatalf("Next gave %v on one free slot", as)
		}
		order = append(order, as[0].Job)
		clk.Advance(time.Minute)
		ok(t, s.Done(as[0].Job, as[0].Machine))
	}
	// Critical paths: z0 4, y 3, z1 3, w0 2, z2 2, a b c w1 w2 z3 1.
	want := []string{"z0", "y", "z1", "w0", "z2", "a", "b", "c", "w1", "w2", "z3"}
	if !reflect.DeepEqual(order, want) {
		t.Fatalf("order %v\nwant  %v", order, want)
	}
}

// TestPlacementPrefersHolder: between equal free machines, a job goes to
// the one that holds its inputs, told by Holds or because it built them.
func TestPlacementPrefersHolder(t *testing.T) {
	jobs := []Job{
		{ID: "dep", System: x86, EstDuration: time.Minute},
		{ID: "big", System: x86, EstDuration: time.Minute, Inputs: []Input{{"/nix/store/src", gb}}},
		{ID: "top", System: x86, EstDuration: time.Minute, Deps: []string{"dep"}},
	}
	s, _ := mustNew(t, jobs, pool(3, 1), Options{Bandwidth: 100e6})
	ok(t, s.Holds("m2", "/nix/store/src"))
	got := assigned(s.Next())
	if got["big"] != "m2" {
		t.Fatalf("big went to %q, want m2 which holds its input: %v", got["big"], got)
	}
	if got["dep"] != "m0" {
		t.Fatalf("dep went to %q, want m0 (first free, ties by machine order): %v", got["dep"], got)
	}
	ok(t, s.Done("big", "m2"))
	// dep's 1 GB output is held by m0, which built it; m1 and m2 are free too.
	ok(t, s.Done("dep", "m0", Input{"/nix/store/dep-out", gb}))
	got = assigned(s.Next())
	if got["top"] != "m0" {
		t.Fatalf("top went to %q, want m0 which built its input: %v", got["top"], got)
	}
}

// TestSpeedFactor: a faster machine wins when it is free, unless the
// copy it needs costs more than its speed saves; equal estimates go to
// the first machine.
func TestSpeedFactor(t *testing.T) {
	ms := []Machine{
		{ID: "slow", Systems: []string{x86}, MaxJobs: 1, SpeedFactor: 1},
		{ID: "fast", Systems: []string{x86}, MaxJobs: 1, SpeedFactor: 4},
	}
	s, _ := mustNew(t, []Job{{ID: "j", System: x86, EstDuration: 8 * time.Minute}}, ms, Options{})
	if got := assigned(s.Next()); got["j"] != "fast" {
		t.Fatalf("j on %q, want fast", got["j"])
	}

	// 8 min on slow (holding the input) vs 2 min + 10 GB at 10 MB/s
	// (about 18 min) on fast.
	in := []Input{{"/nix/store/huge", 10 * gb}}
	s, _ = mustNew(t, []Job{{ID: "j", System: x86, EstDuration: 8 * time.Minute, Inputs: in}}, ms, Options{Bandwidth: 10e6})
	ok(t, s.Holds("slow", "/nix/store/huge"))
	if got := assigned(s.Next()); got["j"] != "slow" {
		t.Fatalf("j on %q, want slow, which holds the 10 GB input", got["j"])
	}

	// Same speed: the first machine.
	ms[1].SpeedFactor = 0 // means 1
	s, _ = mustNew(t, []Job{unitJob("j")}, []Machine{ms[1], ms[0]}, Options{})
	if got := assigned(s.Next()); got["j"] != "fast" {
		t.Fatalf("j on %q, want the first machine", got["j"])
	}
}

// TestWaitsForBusyFastMachine: a job waits for a busy machine when that
// still finishes it first, and NextWake says when to look again; once
// the busy build overruns, the slow free machine takes it.
func TestWaitsForBusyFastMachine(t *testing.T) {
	ms := []Machine{
		{ID: "slow", Systems: []string{x86}, MaxJobs: 1, SpeedFactor: 1},
		{ID: "fast", Systems: []string{x86}, MaxJobs: 1, SpeedFactor: 10},
	}
	jobs := []Job{
		{ID: "a", System: x86, EstDuration: 20 * time.Minute},
		{ID: "b", System: x86, EstDuration: 10 * time.Minute},
	}
	s, clk := mustNew(t, jobs, ms, Options{})
	// a (critical path 20) takes fast (2 min); b would end at 1 min on
	// fast after a (2+1=3 min) vs 10 min on slow: it waits.
	if got := s.Next(); !reflect.DeepEqual(got, []Assignment{{"a", "fast"}}) {
		t.Fatalf("Next = %v, want only a on fast", got)
	}
	wantStatus(t, s, "b", Ready)
	wake, has := s.NextWake()
	if !has || !wake.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("NextWake = %v %v, want now+2m (a's expected end)", wake, has)
	}
	// a overruns: at 12 min it is expected to need 6 more (half its 12),
	// so fast would end b at 12+6+1 = 19 min, slow at 22: still waits.
	clk.Advance(12 * time.Minute)
	if got := s.Next(); len(got) != 0 {
		t.Fatalf("Next at 12m = %v, want nothing", got)
	}
	// At 20 min: fast 20+10+1 = 31, slow 30: slow takes it.
	clk.Advance(8 * time.Minute)
	if got := s.Next(); !reflect.DeepEqual(got, []Assignment{{"b", "slow"}}) {
		t.Fatalf("Next at 20m = %v, want b on slow", got)
	}
}

func TestMaxJobsNeverExceeded(t *testing.T) {
	var jobs []Job
	for _, id := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		jobs = append(jobs, unitJob(id))
	}
	ms := []Machine{
		{ID: "two", Systems: []string{x86}, MaxJobs: 2},
		{ID: "one", Systems: []string{x86}, MaxJobs: 1},
		{ID: "none", Systems: []string{x86}, MaxJobs: 0},
	}
	s, _ := mustNew(t, jobs, ms, Options{})
	first := s.Next()
	if len(first) != 3 {
		t.Fatalf("first Next = %v, want 3 (the free slots)", first)
	}
	count := map[string]int{}
	for _, a := range first {
		count[a.Machine]++
	}
	if count["two"] != 2 || count["one"] != 1 || count["none"] != 0 {
		t.Fatalf("per machine %v", count)
	}
	if again := s.Next(); len(again) != 0 {
		t.Fatalf("second Next with no free slot = %v", again)
	}
	ok(t, s.Done(first[2].Job, first[2].Machine))
	if again := s.Next(); len(again) != 1 || again[0].Machine != first[2].Machine {
		t.Fatalf("after one Done: %v, want one job on %s", again, first[2].Machine)
	}
}

// TestFeatureRouting: jobs reach only machines of their system and
// features; mandatory features keep other jobs off a machine; builtin
// goes to any machine with the features.
func TestFeatureRouting(t *testing.T) {
	ms := []Machine{
		{ID: "arm", Systems: []string{arm}, MaxJobs: 4},
		{ID: "bench", Systems: []string{x86}, SupportedFeatures: []string{"kvm"}, MandatoryFeatures: []string{"benchmark"}, MaxJobs: 4},
		{ID: "kvm", Systems: []string{x86}, SupportedFeatures: []string{"kvm", "nixos-test"}, MaxJobs: 4, SpeedFactor: 0.5},
	}
	jobs := []Job{
		{ID: "plain-x86", System: x86},
		{ID: "plain-arm", System: arm},
		{ID: "vm", System: x86, Features: []string{"kvm", "nixos-test"}},
		{ID: "bench", System: x86, Features: []string{"benchmark"}},
		{ID: "bench-kvm", System: x86, Features: []string{"benchmark", "kvm"}},
		{ID: "fetch", System: "builtin"},
		{ID: "fetch-kvm", System: "builtin", Features: []string{"nixos-test"}},
	}
	s, _ := mustNew(t, jobs, ms, Options{})
	got := assigned(s.Next())
	want := map[string]string{
		"plain-x86": "kvm", // bench is faster but its mandatory benchmark is not required
		"plain-arm": "arm",
		"vm":        "kvm",
		"bench":     "bench",
		"bench-kvm": "bench",
		"fetch":     "arm", // builtin: the first machine
		"fetch-kvm": "kvm",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("placement %v\nwant      %v", got, want)
	}
}

// TestNoMachineError: with -j 0 and no suitable machine the job is
// Unbuildable with an error naming it, its system, its features and the
// machines; without --keep-going nothing starts.
func TestNoMachineError(t *testing.T) {
	ms := []Machine{
		{ID: "ssh://arm", Systems: []string{arm}, SupportedFeatures: []string{"kvm"}, MaxJobs: 2},
		{ID: "local", Systems: []string{x86}, SupportedFeatures: []string{"kvm"}, MaxJobs: 0, Local: true},
	}
	drv := "/nix/store/ffffffffffffffffffffffffffffffff-foo.drv"
	jobs := []Job{
		{ID: drv, System: x86, Features: []string{"kvm"}},
		{ID: "/nix/store/top.drv", System: arm, Deps: []string{drv}},
		{ID: "/nix/store/other.drv", System: arm},
	}
	s, _ := mustNew(t, jobs, ms, Options{})
	errs := s.Unbuildable()
	if len(errs) != 1 {
		t.Fatalf("Unbuildable = %v", errs)
	}
	want := "cannot build '" + drv + "': no machine can build a 'x86_64-linux' derivation with features {kvm} (and -j 0 forbids a local build)\n" +
		"2 machines (systems; max jobs; supported features; mandatory features):\n" +
		"  'ssh://arm' (aarch64-linux; 2; {kvm}; {})\n" +
		"  'local' (x86_64-linux; 0; {kvm}; {})"
	if errs[0].Error() != want {
		t.Fatalf("error:\n%s\nwant:\n%s", errs[0], want)
	}
	var ue *UnbuildableError
	if !errors.As(errs[0], &ue) || ue.Job != drv || ue.System != x86 || !reflect.DeepEqual(ue.Features, []string{"kvm"}) {
		t.Fatalf("UnbuildableError %+v", ue)
	}
	r := wantStatus(t, s, drv, Unbuildable)
	if r.Err != errs[0] {
		t.Fatalf("Result.Err %v", r.Err)
	}
	wantStatus(t, s, "/nix/store/top.drv", DependencyFailed)
	wantStatus(t, s, "/nix/store/other.drv", Cancelled)
	if as := s.Next(); len(as) != 0 || !s.Finished() || !s.Stopped() {
		t.Fatalf("Next = %v, Finished %v, Stopped %v: want nothing, finished, stopped", as, s.Finished(), s.Stopped())
	}

	// With --keep-going the rest builds.
	s, _ = mustNew(t, jobs, ms, Options{KeepGoing: true})
	if got := assigned(s.Next()); !reflect.DeepEqual(got, map[string]string{"/nix/store/other.drv": "ssh://arm"}) {
		t.Fatalf("keep-going Next = %v", got)
	}

	// No machines at all: the hint of Nix's "unable to start any build".
	s, _ = mustNew(t, jobs[:1], ms[1:], Options{})
	if msg := s.Unbuildable()[0].Error(); !strings.Contains(msg, "(and -j 0 forbids a local build); either increase '--max-jobs' or add build machines (--builders)") {
		t.Fatalf("error without remote machines: %s", msg)
	}
	// A remote machine with max jobs 0 builds nothing either.
	s, _ = mustNew(t, []Job{unitJob("a")}, []Machine{{ID: "r", Systems: []string{x86}}}, Options{})
	if len(s.Unbuildable()) != 1 {
		t.Fatalf("a machine with MaxJobs 0 counted as able to build")
	}
}

// TestLocalMachineTakesBuilds: with -j N the local store is one more
// machine in the same placement.
func TestLocalMachineTakesBuilds(t *testing.T) {
	ms := []Machine{
		{ID: "ssh://r", Systems: []string{x86}, MaxJobs: 2, SpeedFactor: 2},
		{ID: "local", Systems: []string{x86}, MaxJobs: 2, Local: true},
	}
	var jobs []Job
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		jobs = append(jobs, unitJob(id))
	}
	s, _ := mustNew(t, jobs, ms, Options{})
	count := map[string]int{}
	for _, a := range s.Next() {
		count[a.Machine]++
	}
	// r (speed 2) takes 2, local 2; the fifth waits for r (0.5+0.5 min
	// beats local's 1 min after its slot frees at 1 min).
	if count["ssh://r"] != 2 || count["local"] != 2 {
		t.Fatalf("per machine %v", count)
	}
	wake, has := s.NextWake()
	if !has || !wake.Equal(t0.Add(30*time.Second)) {
		t.Fatalf("NextWake %v %v, want r's slot at 30s", wake, has)
	}
}

// TestPreferLocalBuild is Nix's willBuildLocally: preferLocalBuild and
// the local machine can build it (system, features, -j > 0): local only,
// even when a remote is free; otherwise as any job.
func TestPreferLocalBuild(t *testing.T) {
	remote := Machine{ID: "ssh://r", Systems: []string{x86, arm}, SupportedFeatures: []string{"kvm"}, MaxJobs: 4, SpeedFactor: 8}
	local := Machine{ID: "local", Systems: []string{x86}, MaxJobs: 1, Local: true}
	jobs := []Job{
		{ID: "p1", System: x86, PreferLocal: true},
		{ID: "p2", System: x86, PreferLocal: true},
		{ID: "p-arm", System: arm, PreferLocal: true},                            // local can't: remote
		{ID: "p-kvm", System: x86, PreferLocal: true, Features: []string{"kvm"}}, // local lacks kvm: remote
		{ID: "n", System: x86},
	}
	s, clk := mustNew(t, jobs, []Machine{remote, local}, Options{})
	got := assigned(s.Next())
	want := map[string]string{"p1": "local", "p-arm": "ssh://r", "p-kvm": "ssh://r", "n": "ssh://r"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("placement %v\nwant      %v", got, want)
	}
	wantStatus(t, s, "p2", Ready) // waits for the local slot, remote is free
	clk.Advance(time.Minute)
	ok(t, s.Done("p1", "local"))
	if got := s.Next(); !reflect.DeepEqual(got, []Assignment{{"p2", "local"}}) {
		t.Fatalf("after p1: %v", got)
	}

	// -j 0: a preferLocalBuild job goes to the remote.
	local.MaxJobs = 0
	s, _ = mustNew(t, jobs[:1], []Machine{remote, local}, Options{})
	if got := assigned(s.Next()); got["p1"] != "ssh://r" {
		t.Fatalf("-j 0: p1 on %q", got["p1"])
	}
}

func TestValidNotBuilt(t *testing.T) {
	jobs := []Job{
		{ID: "v", System: arm, Valid: true}, // no machine could build it: it need not be
		unitJob("top", "v"),
	}
	s, _ := mustNew(t, jobs, pool(1, 1), Options{})
	if len(s.Unbuildable()) != 0 {
		t.Fatalf("a valid job is unbuildable: %v", s.Unbuildable())
	}
	wantStatus(t, s, "v", Valid)
	if got := s.Next(); !reflect.DeepEqual(got, []Assignment{{"top", "m0"}}) {
		t.Fatalf("Next = %v, want top at once", got)
	}
}

// TestMachineDown: a machine that goes down gives its builds back to the
// ready set (they go to another machine), is logged once per down
// transition, is avoided for a back-off that doubles per consecutive
// failure up to the cap and resets on MachineUp or a Done, and is probed
// with one build after the back-off.
func TestMachineDown(t *testing.T) {
	ms := []Machine{
		{ID: "a", Systems: []string{x86}, MaxJobs: 2, SpeedFactor: 4},
		{ID: "b", Systems: []string{x86}, MaxJobs: 2},
	}
	jobs := []Job{unitJob("j1"), unitJob("j2"), {ID: "arm", System: arm}}
	ms = append(ms, Machine{ID: "c", Systems: []string{arm}, MaxJobs: 1})
	s, clk := mustNew(t, jobs, ms, Options{BackoffBase: 10 * time.Second, BackoffMax: 35 * time.Second})
	got := assigned(s.Next())
	if got["j1"] != "a" || got["j2"] != "a" || got["arm"] != "c" {
		t.Fatalf("first placement %v", got)
	}
	cause := errors.New("ssh: connect to host a: Connection timed out")
	ok(t, s.MachineDown("a", cause))
	ok(t, s.MachineDown("a", cause)) // the second session's failure: same transition
	ev := s.Events()
	if len(ev) != 1 || ev[0].Kind != MachineDownEvent || ev[0].Machine != "a" || ev[0].RetryIn != 10*time.Second ||
		!reflect.DeepEqual(ev[0].Requeued, []string{"j1", "j2"}) {
		t.Fatalf("events %+v", ev)
	}
	if msg := ev[0].String(); msg != "machine 'a' is down (ssh: connect to host a: Connection timed out), retrying it in 10s; rescheduling its builds of 'j1', 'j2'" {
		t.Fatalf("event text %q", msg)
	}
	wantStatus(t, s, "j1", Ready)
	if err := s.Done("j1", "a"); !errors.Is(err, ErrStale) {
		t.Fatalf("Done of a requeued build: %v, want ErrStale", err)
	}
	got = assigned(s.Next())
	if got["j1"] != "b" || got["j2"] != "b" {
		t.Fatalf("after a went down: %v, want both on b", got)
	}
	if r, _ := s.Result("j1"); r.Attempts != 2 || r.Machine != "b" {
		t.Fatalf("j1 result %+v", r)
	}

	// c goes down while running the only arm job: it waits for c's
	// back-off, and NextWake says until when.
	ok(t, s.MachineDown("c", cause))
	if ev := s.Events(); len(ev) != 1 || ev[0].Machine != "c" || ev[0].RetryIn != 10*time.Second {
		t.Fatalf("events %+v", ev)
	}
	if as := s.Next(); len(as) != 0 {
		t.Fatalf("Next with c down: %v", as)
	}
	wake, has := s.NextWake()
	if !has || !wake.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("NextWake = %v %v, want c's back-off end", wake, has)
	}
	clk.Set(wake)
	if as := s.Next(); !reflect.DeepEqual(as, []Assignment{{"arm", "c"}}) {
		t.Fatalf("after the back-off: %v", as)
	}
	// Consecutive failures double the back-off: 20s, then 35s (the cap).
	for _, want := range []time.Duration{20 * time.Second, 35 * time.Second, 35 * time.Second} {
		ok(t, s.MachineDown("c", cause))
		ev := s.Events()
		if len(ev) != 1 || ev[0].RetryIn != want {
			t.Fatalf("events %+v, want one with RetryIn %s", ev, want)
		}
		if as := s.Next(); len(as) != 0 {
			t.Fatalf("Next during back-off: %v", as)
		}
		clk.Advance(want - time.Second)
		if as := s.Next(); len(as) != 0 {
			t.Fatalf("Next a second before the back-off ends: %v", as)
		}
		clk.Advance(time.Second)
		if as := s.Next(); !reflect.DeepEqual(as, []Assignment{{"arm", "c"}}) {
			t.Fatalf("after the back-off: %v", as)
		}
	}
	ok(t, s.MachineUp("c"))
	ok(t, s.MachineDown("c", cause))
	if ev := s.Events(); len(ev) != 1 || ev[0].RetryIn != 10*time.Second {
		t.Fatalf("after MachineUp the back-off is not reset: %+v", ev)
	}
	if len(s.Events()) != 0 {
		t.Fatalf("Events not drained")
	}

	// a, probed after its back-off, gets one build at a time until it is
	// known up.
	s, clk = mustNew(t, []Job{unitJob("p1"), unitJob("p2"), unitJob("p3")}, ms[:1], Options{})
	s.Next()
	ok(t, s.MachineDown("a", cause))
	clk.Advance(10 * time.Second)
	if as := s.Next(); len(as) != 1 {
		t.Fatalf("probe: %v, want one build", as)
	}
	ok(t, s.MachineUp("a"))
	if as := s.Next(); len(as) != 1 {
		t.Fatalf("after MachineUp: %v, want the second slot used", as)
	}
}

// TestFailureStops: a genuine failure is not retried; without
// --keep-going no new build starts, running ones may finish, the rest
// is Cancelled; with --keep-going everything not depending on it builds.
func TestFailureStops(t *testing.T) {
	jobs := []Job{
		unitJob("bad"), unitJob("good"), unitJob("later"),
		unitJob("child", "bad"), unitJob("grandchild", "child"), unitJob("mixed", "good", "child"),
		unitJob("after-good", "good"),
	}
	// Three slots: bad, good and one more (by critical path: bad 3,
	// good 2, then after... later/etc at 1).
	s, clk := mustNew(t, jobs, pool(1, 3), Options{})
	got := assigned(s.Next())
	if len(got) != 3 || got["bad"] == "" || got["good"] == "" {
		t.Fatalf("first Next %v", got)
	}
	var third string
	for j := range got {
		if j != "bad" && j != "good" {
			third = j
		}
	}
	clk.Advance(time.Minute)
	ok(t, s.Failed("bad", "m0", errors.New("builder for 'bad' failed with exit code 1")))
	ev := s.Events()
	if len(ev) != 1 || ev[0].Kind != StopEvent || ev[0].Job != "bad" || ev[0].Running != 2 {
		t.Fatalf("events %+v", ev)
	}
	if as := s.Next(); len(as) != 0 {
		t.Fatalf("Next after a failure without keep-going: %v", as)
	}
	if s.Finished() {
		t.Fatalf("finished with builds running")
	}
	ok(t, s.Done("good", "m0"))
	ok(t, s.Done(third, "m0"))
	if as := s.Next(); len(as) != 0 || !s.Finished() {
		t.Fatalf("Next %v, Finished %v", as, s.Finished())
	}
	wantStatus(t, s, "bad", Failed)
	wantStatus(t, s, "good", Built)
	wantStatus(t, s, "child", DependencyFailed)
	wantStatus(t, s, "grandchild", DependencyFailed)
	wantStatus(t, s, "mixed", DependencyFailed)
	wantStatus(t, s, "after-good", Cancelled)
	if _, has := s.NextWake(); has {
		t.Fatalf("NextWake after the stop")
	}

	// --keep-going: run to the end in the simulation.
	sm := newSim(t, jobs, pool(1, 3), Options{KeepGoing: true})
	sm.decide = func(a Assignment) outcome {
		if a.Job == "bad" {
			return fail
		}
		return succeed
	}
	sm.runAll(100)
	sm.checkFinal()
	want := map[string]Status{"bad": Failed, "good": Built, "later": Built, "child": DependencyFailed,
		"grandchild": DependencyFailed, "mixed": DependencyFailed, "after-good": Built}
	for id, st := range want {
		wantStatus(t, sm.s, id, st)
	}
	r, _ := sm.s.Result("grandchild")
	if r.Err.Error() != "cannot build 'grandchild': dependency 'child' failed" {
		t.Fatalf("grandchild's error: %v", r.Err)
	}
	n := 0
	for _, a := range sm.assigned {
		if a.Job == "bad" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("bad started %d times: a genuine failure is retried", n)
	}
}

// TestDownAfterStopCancels: after a stop, builds on a machine that goes
// down are not retried.
func TestDownAfterStopCancels(t *testing.T) {
	s, _ := mustNew(t, []Job{unitJob("a"), unitJob("b")}, pool(2, 1), Options{})
	got := assigned(s.Next())
	ok(t, s.Failed("a", got["a"], errors.New("exit 1")))
	ok(t, s.MachineDown(got["b"], errors.New("eof")))
	wantStatus(t, s, "b", Cancelled)
	if !s.Finished() || len(s.Next()) != 0 {
		t.Fatalf("not finished after the stop")
	}
}

// TestDownReassignsInSimulation: a machine that dies mid-build loses
// its build to the other machine, and the graph still completes.
func TestDownReassignsInSimulation(t *testing.T) {
	jobs := []Job{unitJob("a"), unitJob("b", "a"), unitJob("c", "b"), unitJob("d")}
	ms := []Machine{
		{ID: "flaky", Systems: []string{x86}, MaxJobs: 2, SpeedFactor: 2},
		{ID: "steady", Systems: []string{x86}, MaxJobs: 1},
	}
	sm := newSim(t, jobs, ms, Options{})
	downs := 0
	sm.decide = func(a Assignment) outcome {
		if a.Machine == "flaky" && downs < 2 {
			downs++
			return down
		}
		return succeed
	}
	sm.runAll(100)
	sm.checkFinal()
	for _, id := range []string{"a", "b", "c", "d"} {
		wantStatus(t, sm.s, id, Built)
	}
	if downs != 2 {
		t.Fatalf("%d downs", downs)
	}
	ev := sm.s.Events()
	if len(ev) != 2 || ev[0].RetryIn != 10*time.Second || ev[1].RetryIn != 20*time.Second {
		t.Fatalf("events %+v", ev)
	}
}
