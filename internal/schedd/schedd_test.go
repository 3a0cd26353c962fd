package schedd_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ferry/internal/hookapi"
	"ferry/internal/machines"
	"ferry/internal/nixtest"
	"ferry/internal/sandbox"
	"ferry/internal/schedd"
	"ferry/nix/storepath"
)

func TestMain(m *testing.M) {
	if sock := os.Getenv("SCHEDD_PEER_CLIENT"); sock != "" {
		schedd.PeerClient(sock)
		os.Exit(0)
	}
	sandbox.Init()
	code := m.Run()
	nixtest.RemoveFerryBin()
	os.Exit(code)
}

type env struct {
	t      *testing.T
	ferry  string
	system string
	dir    string
}

// newEnv sets the process environment as nixtest.Env does (the daemon
// runs in-process and its builders inherit it) and builds ferry.
func newEnv(t *testing.T) *env {
	t.Helper()
	nixtest.RequireNix(t)
	nixtest.Require(t, "busybox")
	e := &env{t: t, ferry: nixtest.FerryBin(t), dir: t.TempDir()}
	for _, kv := range nixtest.Env(filepath.Join(e.dir, "nixenv")) {
		k, v, _ := strings.Cut(kv, "=")
		if os.Getenv(k) != v {
			t.Setenv(k, v)
		}
	}
	e.system = strings.Trim(nixtest.Line(t, "nix-instantiate", "--eval", "--expr", "builtins.currentSystem"), `"`)
	return e
}

// ferryBuilder and nixBuilder are machines lines for builder stores
// reached over ssh://localhost (the remote program runs directly).
func (e *env) ferryBuilder(name, rest string) string {
	return fmt.Sprintf("ssh://localhost?remote-program=%s&remote-store=%s %s - %s", e.ferry, filepath.Join(e.dir, name), e.system, rest)
}

func (e *env) nixBuilder(name, rest string) string {
	return fmt.Sprintf("ssh://localhost?remote-program=nix-store&remote-store=%s %s - %s", filepath.Join(e.dir, name), e.system, rest)
}

// drvs instantiates n derivations named name-i into the client store
// st; each records /proc/uptime at its start and end, sleeps secs
// between, and uses an input source.
func (e *env) drvs(st, name string, n int, secs float64, tag string) []storepath.Path {
	e.t.Helper()
	src := filepath.Join(e.dir, "input-"+name+".txt")
	os.WriteFile(src, []byte("input of "+name+" "+tag+"\n"), 0o644)
	expr := fmt.Sprintf(`let src = %s; in builtins.genList (i: derivation {
  name = "%s-${toString i}"; system = %q; builder = "/bin/sh";
  args = [ "-c" "read up rest < /proc/uptime; echo $up > $out; echo started %s-${toString i}; sleep %g; cat ${src} >> $out; read up rest < /proc/uptime; echo $up >> $out; echo done %s-${toString i} %s" ];
}) %d`, src, name, e.system, name, secs, name, tag, n)
	f := filepath.Join(e.dir, name+".nix")
	os.WriteFile(f, []byte(expr), 0o644)
	out := nixtest.Line(e.t, "nix-instantiate", "--store", st, f)
	var ps []storepath.Path
	for _, l := range strings.Fields(out) {
		ps = append(ps, storepath.Path(l))
	}
	if len(ps) != n {
		e.t.Fatalf("nix-instantiate gave %q", out)
	}
	return ps
}

func (e *env) parse(spec string) []*machines.Machine {
	e.t.Helper()
	ms, err := machines.Parse(spec, e.system)
	if err != nil {
		e.t.Fatal(err)
	}
	return ms
}

// daemon runs an in-process scheduler on a temporary socket.
func (e *env) daemon(opts schedd.Options) (*schedd.Daemon, *nixtest.SyncBuffer) {
	e.t.Helper()
	if opts.StateDir == "" {
		d, err := os.MkdirTemp("", "schedd-")
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() { os.RemoveAll(d) })
		opts.StateDir = d
	}
	log := &nixtest.SyncBuffer{}
	opts.Log = log
	d, err := schedd.Listen(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("Serve: %v", err)
		}
	})
	return d, log
}

type built struct {
	drv    storepath.Path
	reply  *hookapi.BuildReply
	log    string
	waited int // postpones before the accept
	// accepted is the machine the try accepted on (what Nix would print).
	accepted string
}

// hookBuild is what ferry build-hook does for one derivation: try until
// accepted (postpone: again later), build, release.
func hookBuild(ctx context.Context, sock, st string, drv storepath.Path, system string) (*built, error) {
	b := &built{drv: drv}
	for {
		c, err := schedd.Connect(ctx, sock)
		if err != nil {
			return nil, err
		}
		reply, err := c.Try(ctx, &hookapi.TryRequest{Store: st, System: system, DrvPath: drv})
		if err != nil {
			c.Release()
			return nil, err
		}
		switch reply.Decision {
		case hookapi.Postpone:
			c.Release()
			b.waited++
			time.Sleep(100 * time.Millisecond)
			continue
		case hookapi.Accept:
			b.accepted = reply.Machine
		default:
			c.Release()
			return nil, fmt.Errorf("try of %s: %s %s", drv, reply.Decision, reply.Message)
		}
		var log bytes.Buffer
		br, err := c.Build(ctx, &hookapi.BuildRequest{DrvPath: drv, WantedOutputs: []string{"out"}}, &log)
		c.Release()
		b.log = log.String()
		if err != nil {
			return b, err
		}
		b.reply = br
		return b, nil
	}
}

// interval reads a built output's /proc/uptime at start and end.
func interval(t *testing.T, st string, drv storepath.Path) (float64, float64) {
	t.Helper()
	out := nixtest.Line(t, "nix-store", "--store", st, "-q", "--outputs", string(drv))
	b, err := os.ReadFile(filepath.Join(st, out))
	if err != nil {
		t.Fatalf("output of %s: %v", drv, err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	s, err1 := strconv.ParseFloat(lines[0], 64)
	f, err2 := strconv.ParseFloat(lines[len(lines)-1], 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("output of %s: %q", drv, b)
	}
	return s, f
}

// Two clients with their own stores build concurrently through one
// daemon on a ferry builder (2 slots) and a nix-store --serve builder
// (1 slot): no machine ever runs more than its max jobs (the builds'
// own uptime stamps say so), every output is valid, logs stream, and
// the sessions are reused.
func TestSlotsAcrossTwoClients(t *testing.T) {
	e := newEnv(t)
	spec := e.ferryBuilder("b1", "2 1") + "\n" + e.nixBuilder("b2", "1 1")
	d, _ := e.daemon(schedd.Options{Machines: e.parse(spec), QueueWait: 300 * time.Millisecond})
	stA, stB := filepath.Join(e.dir, "clientA"), filepath.Join(e.dir, "clientB")
	drvs := map[string][]storepath.Path{stA: e.drvs(stA, "a", 4, 1, ""), stB: e.drvs(stB, "b", 4, 1, "")}

	// The daemon's own accounting, sampled, never exceeds max jobs.
	stop := make(chan struct{})
	var over []string
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			for _, m := range d.Status().Machines {
				if m.InUse > m.MaxJobs {
					over = append(over, fmt.Sprintf("%s %d/%d", m.URI, m.InUse, m.MaxJobs))
				}
			}
		}
	}()
	ctx := context.Background()
	var mu sync.Mutex
	var results []*built
	var wg sync.WaitGroup
	for st, ps := range drvs {
		for _, p := range ps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b, err := hookBuild(ctx, d.SocketPath(), st, p, e.system)
				if err != nil {
					t.Errorf("%s: %v", p, err)
					return
				}
				mu.Lock()
				results = append(results, b)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	if len(over) > 0 {
		t.Errorf("slots over max jobs: %v", over)
	}
	type iv struct{ s, f float64 }
	per := map[string][]iv{}
	postponed := 0
	for _, b := range results {
		if !b.reply.Success {
			t.Errorf("%s: %s", b.drv, b.reply.Message)
			continue
		}
		if !strings.Contains(b.log, "started "+b.drv.Base()[33:len(b.drv.Base())-4]) {
			t.Errorf("%s: log %q lacks the builder's line", b.drv, b.log)
		}
		postponed += b.waited
		st := stA
		if strings.Contains(string(b.drv), "-b-") {
			st = stB
		}
		s, f := interval(t, st, b.drv)
		per[b.reply.Machine] = append(per[b.reply.Machine], iv{s, f})
	}
	if len(results) != 8 || len(per) != 2 {
		t.Fatalf("%d results on %d machines: %v", len(results), len(per), per)
	}
	max := map[string]int{}
	for _, m := range e.parse(spec) {
		max[m.URI] = int(m.MaxJobs)
	}
	for m, ivs := range per {
		for _, a := range ivs {
			n := 0
			for _, b := range ivs {
				if b.s <= a.s && a.s < b.f {
					n++ // b runs when a starts (a itself included)
				}
			}
			if n > max[m] {
				t.Errorf("%d builds at once on %s (max jobs %d): %v", n, m, max[m], ivs)
			}
		}
	}
	if postponed == 0 {
		t.Errorf("8 builds on 3 slots: no try was ever postponed")
	}
	st := d.Status()
	for _, m := range st.Machines {
		if m.InUse != 0 || m.Started == 0 || m.Sessions > m.MaxJobs || m.Sessions == 0 {
			t.Errorf("after the builds: %+v", m)
		}
	}
	for _, s := range []string{stA, stB, filepath.Join(e.dir, "b1"), filepath.Join(e.dir, "b2")} {
		nixtest.Verify(t, s)
	}
}

// The protocol's other answers: a system no machine builds is declined
// with Nix's table, a daemon without machines declines permanently, a
// slot held by another process through Nix's slot lock makes the try
// postpone (or decline when the local machine is willing), and Release
// frees the slot for the next client at once.
func TestProtocolDecisions(t *testing.T) {
	e := newEnv(t)
	spec := e.ferryBuilder("b1", "1 1")
	ms := e.parse(spec)
	d, _ := e.daemon(schedd.Options{Machines: ms, QueueWait: 200 * time.Millisecond})
	st := filepath.Join(e.dir, "client")
	drv := e.drvs(st, "p", 1, 0, "")[0]
	ctx := context.Background()
	try := func(req *hookapi.TryRequest) (*schedd.Client, *hookapi.TryReply) {
		t.Helper()
		c, err := schedd.Connect(ctx, d.SocketPath())
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.Try(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return c, r
	}
	c, r := try(&hookapi.TryRequest{Store: st, System: "mips64-plan9", DrvPath: drv, Features: []string{"kvm"}})
	c.Release()
	if r.Decision != hookapi.Decline || !strings.Contains(r.Message, "Failed to find a machine for remote build!") || !strings.Contains(r.Message, "(mips64-plan9, kvm)") {
		t.Errorf("unbuildable: %+v", r)
	}

	empty, _ := e.daemon(schedd.Options{})
	c2, err := schedd.Connect(ctx, empty.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	r, err = c2.Try(ctx, &hookapi.TryRequest{Store: st, System: e.system, DrvPath: drv})
	c2.Release()
	if err != nil || r.Decision != hookapi.DeclinePermanently {
		t.Errorf("no machines: %+v %v", r, err)
	}

	// Nix's slot lock, held as a nix-build with Nix's hook would.
	load, err := machines.OpenLoad(filepath.Join(st, "nix/var/nix"))
	if err != nil {
		t.Fatal(err)
	}
	slot, err := load.TryAcquire(ms[0])
	if err != nil || slot == nil {
		t.Fatalf("slot lock: %v %v", slot, err)
	}
	c, r = try(&hookapi.TryRequest{Store: st, System: e.system, DrvPath: drv})
	c.Release()
	if r.Decision != hookapi.Postpone {
		t.Errorf("machine busy by Nix's lock: %+v", r)
	}
	c, r = try(&hookapi.TryRequest{Store: st, System: e.system, DrvPath: drv, AmWilling: true})
	c.Release()
	if r.Decision != hookapi.Decline {
		t.Errorf("machine busy, local willing: %+v", r)
	}
	slot.Release()

	// One slot: the first client's accept holds it; the second waits
	// until the first releases.
	c1, r := try(&hookapi.TryRequest{Store: st, System: e.system, DrvPath: drv})
	if r.Decision != hookapi.Accept || r.Machine != ms[0].URI {
		t.Fatalf("accept: %+v", r)
	}
	if got := d.Status().Machines[0].InUse; got != 1 {
		t.Errorf("in use after accept: %d", got)
	}
	c, r = try(&hookapi.TryRequest{Store: st, System: e.system, DrvPath: drv})
	c.Release()
	if r.Decision != hookapi.Postpone {
		t.Errorf("second client while the slot is held: %+v", r)
	}
	go func() { time.Sleep(50 * time.Millisecond); c1.Release() }()
	t0 := time.Now()
	c, r = try(&hookapi.TryRequest{Store: st, System: e.system, DrvPath: drv})
	if r.Decision != hookapi.Accept || time.Since(t0) > 2*time.Second {
		t.Errorf("after the release: %+v after %s", r, time.Since(t0))
	}
	// A connection that closes without Release frees its slot too.
	var buf bytes.Buffer
	if br, err := c.Build(ctx, &hookapi.BuildRequest{DrvPath: drv}, &buf); err != nil || !br.Success {
		t.Fatalf("build: %+v %v\n%s", br, err, buf.String())
	}
	c.Release()
	c.Release() // twice is fine
	if got := d.Status().Machines[0].InUse; got != 0 {
		t.Errorf("in use after release: %d", got)
	}
	// Build without a try is refused.
	c3, _ := schedd.Connect(ctx, d.SocketPath())
	if _, err := c3.Build(ctx, &hookapi.BuildRequest{DrvPath: drv}, io.Discard); err == nil || !strings.Contains(err.Error(), "without an accepted try") {
		t.Errorf("build without try: %v", err)
	}
	c3.Release()
}

// A machine that cannot be reached is found out once: the build that
// found it goes to another machine, and every later try, from any
// client, skips it until its back-off ends, when one build probes it
// and the back-off doubles. The back-off survives a restart.
func TestDeadMachineBackoff(t *testing.T) {
	e := newEnv(t)
	dead := fmt.Sprintf("ssh://localhost?remote-program=%s&remote-store=%s %s - 1 10", filepath.Join(e.dir, "no-such-program"), filepath.Join(e.dir, "dead"), e.system)
	spec := dead + "\n" + e.ferryBuilder("good", "2 1")
	ms := e.parse(spec)
	stateDir, _ := os.MkdirTemp("", "schedd-")
	defer os.RemoveAll(stateDir)
	opts := schedd.Options{StateDir: stateDir, Machines: ms, BackoffBase: 1500 * time.Millisecond, QueueWait: -1}
	d, logBuf := e.daemon(opts)
	st := filepath.Join(e.dir, "client")
	ps := e.drvs(st, "d", 4, 0, "")
	ctx := context.Background()
	// The first try finds the dead machine (preferred: speed 10) does not
	// answer before it accepts, as Nix's build-remote connects first, and
	// accepts on the good one: Nix is told the machine that builds it.
	b, err := hookBuild(ctx, d.SocketPath(), st, ps[0], e.system)
	if err != nil || !b.reply.Success || b.reply.Machine != ms[1].URI || b.accepted != ms[1].URI {
		t.Fatalf("first build: %+v %v", b, err)
	}
	s := d.Status()
	if !s.Machines[0].Down || s.Machines[0].RetryIn <= 0 || s.Machines[0].Failures != 1 || !strings.Contains(s.Machines[0].LastError, "cannot connect") {
		t.Fatalf("dead machine: %+v", s.Machines[0])
	}
	// Later requests, on new connections, go straight to the good one.
	for _, p := range ps[1:3] {
		t0 := time.Now()
		b, err := hookBuild(ctx, d.SocketPath(), st, p, e.system)
		if err != nil || !b.reply.Success || b.reply.Machine != ms[1].URI || strings.Contains(b.log, "cannot connect") {
			t.Fatalf("later build: %+v %v", b, err)
		}
		if time.Since(t0) > 10*time.Second {
			t.Errorf("later build took %s", time.Since(t0))
		}
	}
	if got := d.Status().Machines[0]; got.Started != 0 || got.Failures != 1 {
		t.Errorf("the dead machine was tried again within its back-off: %+v", got)
	}
	if n := strings.Count(logBuf.String(), "is down"); n != 1 {
		t.Errorf("machine down reported %d times:\n%s", n, logBuf.String())
	}
	// After the back-off, one build probes it; it fails again and the
	// back-off doubles.
	time.Sleep(1600 * time.Millisecond)
	b, err = hookBuild(ctx, d.SocketPath(), st, ps[3], e.system)
	if err != nil || !b.reply.Success || b.reply.Machine != ms[1].URI {
		t.Fatalf("probe build: %+v %v", b, err)
	}
	got := d.Status().Machines[0]
	if got.Started != 0 || got.Failures != 2 || got.RetryIn <= 1500*time.Millisecond || got.RetryIn > 3*time.Second {
		t.Errorf("after the probe: %+v", got)
	}
	nixtest.Verify(t, st)

	// The state file carries the back-off to a new daemon.
	b2, err := os.ReadFile(filepath.Join(stateDir, "ferry-scheduler.state.json"))
	if err != nil || !strings.Contains(string(b2), `"failures": 2`) {
		t.Errorf("state file: %s %v", b2, err)
	}
}

// TestMoveWaitsForBusyMachine: a build accepted for a machine that dies
// before the build (its session is killed after the try connected), when
// the only other machine is busy, waits for its slot and builds there:
// Nix was told "# accept", so giving up would fail its build (as it did,
// now and then, in TestDaemonHookInterop).
func TestMoveWaitsForBusyMachine(t *testing.T) {
	e := newEnv(t)
	pidFile := filepath.Join(e.dir, "flaky.pid")
	wrapper := filepath.Join(e.dir, "flaky-serve")
	if err := nixtest.WriteExecutable(wrapper, []byte(fmt.Sprintf("#!/bin/sh\necho $$ > %s\nexec %s \"$@\"\n", pidFile, e.ferry))); err != nil {
		t.Fatal(err)
	}
	flaky := fmt.Sprintf("ssh://localhost?remote-program=%s&remote-store=%s %s - 1 1", wrapper, filepath.Join(e.dir, "flaky"), e.system)
	// The good machine is listed first, so the first try takes it.
	ms := e.parse(e.ferryBuilder("good", "1 1") + "\n" + flaky)
	d, _ := e.daemon(schedd.Options{Machines: ms, QueueWait: -1})
	st := filepath.Join(e.dir, "client")
	ps := e.drvs(st, "w", 2, 1, "")
	ctx := context.Background()
	try := func(p storepath.Path, want string) *schedd.Client {
		t.Helper()
		c, err := schedd.Connect(ctx, d.SocketPath())
		if err != nil {
			t.Fatal(err)
		}
		if r, err := c.Try(ctx, &hookapi.TryRequest{Store: st, System: e.system, DrvPath: p}); err != nil || r.Machine != want {
			t.Fatalf("try of %s: %+v %v, want an accept on %s", p, r, err, want)
		}
		return c
	}
	holder := try(ps[0], ms[0].URI)
	defer holder.Release()
	mover := try(ps[1], ms[1].URI)
	defer mover.Release()
	// The try connected to the flaky machine; now it dies.
	pid, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("kill", "-9", strings.TrimSpace(string(pid))).Run(); err != nil {
		t.Fatal(err)
	}
	type result struct {
		reply *hookapi.BuildReply
		log   string
		err   error
	}
	moved := make(chan result, 1)
	go func() {
		var log bytes.Buffer
		r, err := mover.Build(ctx, &hookapi.BuildRequest{DrvPath: ps[1], WantedOutputs: []string{"out"}}, &log)
		moved <- result{r, log.String(), err}
	}()
	time.Sleep(time.Second) // the build finds the machine dead and waits for the busy one
	if _, err := holder.Build(ctx, &hookapi.BuildRequest{DrvPath: ps[0], WantedOutputs: []string{"out"}}, nil); err != nil {
		t.Fatal(err)
	}
	holder.Release()
	b := <-moved
	if b.err != nil || b.reply == nil || !b.reply.Success || b.reply.Machine != ms[0].URI {
		t.Fatalf("the build moved off the dead machine: %+v", b)
	}
	if !strings.Contains(b.log, "instead") {
		t.Errorf("its log does not say it moved: %q", b.log)
	}
	nixtest.Verify(t, st)
}

// TestUploadLock: the scheduler sends a build's inputs under the
// machine's upload lock in the client's state directory, as build-remote
// does, so it waits while another process (Nix's hook) uploads.
func TestUploadLock(t *testing.T) {
	e := newEnv(t)
	ms := e.parse(e.ferryBuilder("up", "1 1"))
	d, _ := e.daemon(schedd.Options{Machines: ms, QueueWait: -1})
	st := filepath.Join(e.dir, "client")
	ps := e.drvs(st, "u", 1, 0, "")
	load, err := machines.OpenLoad(filepath.Join(st, "nix/var/nix"))
	if err != nil {
		t.Fatal(err)
	}
	held, err := load.UploadLock(context.Background(), ms[0])
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *built, 1)
	go func() {
		b, err := hookBuild(context.Background(), d.SocketPath(), st, ps[0], e.system)
		if err != nil {
			t.Error(err)
		}
		done <- b
	}()
	select {
	case b := <-done:
		t.Fatalf("built while another process held the upload lock: %+v", b)
	case <-time.After(2 * time.Second):
	}
	held.Release()
	if b := <-done; b == nil || b.reply == nil || !b.reply.Success {
		t.Fatalf("after the upload lock was let go: %+v", b)
	}
}

// TestBackoffReload: a daemon started on the state of one that saw a
// machine fail keeps it backed off.
func TestBackoffReload(t *testing.T) {
	e := newEnv(t)
	dead := fmt.Sprintf("ssh://localhost?remote-program=%s&remote-store=%s %s - 1 1", filepath.Join(e.dir, "no-such-program"), filepath.Join(e.dir, "dead"), e.system)
	ms := e.parse(dead)
	stateDir, _ := os.MkdirTemp("", "schedd-")
	defer os.RemoveAll(stateDir)
	st := filepath.Join(e.dir, "client")
	drv := e.drvs(st, "r", 1, 0, "")[0]
	ctx := context.Background()
	func() {
		d, err := schedd.Listen(schedd.Options{StateDir: stateDir, Machines: ms, BackoffBase: time.Minute, QueueWait: -1})
		if err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan error)
		go func() { done <- d.Serve(sctx) }()
		// Its only machine does not answer: the try is postponed, and
		// the machine backed off.
		c, _ := schedd.Connect(ctx, d.SocketPath())
		r, err := c.Try(ctx, &hookapi.TryRequest{Store: st, System: e.system, DrvPath: drv})
		c.Release()
		if err != nil || r.Decision != hookapi.Postpone {
			t.Errorf("try with only a dead machine: %+v %v", r, err)
		}
		if m := d.Status().Machines[0]; !m.Down || !strings.Contains(m.LastError, "cannot connect") {
			t.Errorf("the dead machine: %+v", m)
		}
		if _, err := schedd.Listen(schedd.Options{StateDir: stateDir}); !errors.Is(err, schedd.ErrRunning) {
			t.Errorf("second daemon on the same state: %v", err)
		}
		cancel()
		<-done
	}()
	d, _ := e.daemon(schedd.Options{StateDir: stateDir, Machines: ms, BackoffBase: time.Minute, QueueWait: -1})
	m := d.Status().Machines[0]
	if !m.Down || m.RetryIn < 50*time.Second || !strings.Contains(m.LastError, "cannot connect") {
		t.Errorf("after a restart: %+v", m)
	}
	c, _ := schedd.Connect(ctx, d.SocketPath())
	r, err := c.Try(ctx, &hookapi.TryRequest{Store: st, System: e.system, DrvPath: drv})
	c.Release()
	if err != nil || r.Decision != hookapi.Postpone {
		t.Errorf("try after a restart: %+v %v", r, err)
	}
}

// scrape reads the metrics endpoint into series → value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q", l)
		}
		m[l[:i]] = v
	}
	return m
}

// The metrics move as the builds do, and ferry status shows the running
// build.
func TestMetricsAndStatus(t *testing.T) {
	e := newEnv(t)
	ms := e.parse(e.ferryBuilder("b1", "1 1"))
	d, _ := e.daemon(schedd.Options{Machines: ms, MetricsAddr: "127.0.0.1:0"})
	if _, err := schedd.Listen(schedd.Options{StateDir: t.TempDir(), MetricsAddr: "0.0.0.0:0"}); err == nil || !strings.Contains(err.Error(), "not a loopback") {
		t.Errorf("a non-loopback metrics address: %v", err)
	}
	st := filepath.Join(e.dir, "client")
	ps := e.drvs(st, "m", 2, 3, "")
	uri := ms[0].URI
	series := func(name string) string { return fmt.Sprintf("ferry_scheduler_%s{machine=%q}", name, uri) }
	m0 := scrape(t, d.MetricsAddr())
	if m0[series("builds_started_total")] != 0 || m0[series("slots_max")] != 1 || m0["ferry_scheduler_queue_length"] != 0 {
		t.Errorf("before: %v", m0)
	}
	ctx := context.Background()
	done := make(chan *built, 1)
	go func() {
		b, err := hookBuild(ctx, d.SocketPath(), st, ps[0], e.system)
		if err != nil {
			t.Error(err)
		}
		done <- b
	}()
	// While it builds: started 1, succeeded 0, the slot in use.
	deadline := time.Now().Add(20 * time.Second)
	var during map[string]float64
	for {
		during = scrape(t, d.MetricsAddr())
		if during[series("builds_started_total")] == 1 && during[series("slots_in_use")] == 1 && len(d.Status().Running) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the build never showed: %v", during)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if during[series("builds_succeeded_total")] != 0 {
		t.Errorf("succeeded during the build: %v", during)
	}
	// ferry status, the command, while it runs.
	out, err := exec.Command(e.ferry, "status", "--state-dir", filepath.Dir(d.SocketPath())).CombinedOutput()
	if err != nil {
		t.Fatalf("ferry status: %v\n%s", err, out)
	}
	for _, want := range []string{"MACHINE", "localhost", "1/1", "up", "RUNNING (1)", string(ps[0]), uri} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ferry status lacks %q:\n%s", want, out)
		}
	}
	// A second client queues behind the first (queue length 1).
	done2 := make(chan *built, 1)
	go func() {
		b, err := hookBuild(ctx, d.SocketPath(), st, ps[1], e.system)
		if err != nil {
			t.Error(err)
		}
		done2 <- b
	}()
	queued := false
	for i := 0; i < 100 && !queued; i++ {
		queued = scrape(t, d.MetricsAddr())["ferry_scheduler_queue_length"] == 1
		time.Sleep(20 * time.Millisecond)
	}
	if !queued {
		t.Errorf("the second try never queued")
	}
	b := <-done
	if b == nil || !b.reply.Success {
		t.Fatalf("build: %+v", b)
	}
	<-done2
	after := scrape(t, d.MetricsAddr())
	if after[series("builds_started_total")] != 2 || after[series("builds_succeeded_total")] != 2 || after[series("builds_failed_total")] != 0 {
		t.Errorf("after: %v", after)
	}
	if after[series("bytes_sent_total")] <= 0 || after[series("bytes_received_total")] <= 0 || after[series("slots_in_use")] != 0 {
		t.Errorf("bytes/slots after: %v", after)
	}
	if after["ferry_scheduler_queue_wait_seconds_count"] < 2 || after[`ferry_scheduler_queue_wait_seconds_bucket{le="0.5"}`] < 1 {
		t.Errorf("queue wait histogram: %v", after)
	}
	if after[series("machine_down")] != 0 || after[series("backoff_seconds")] != 0 {
		t.Errorf("machine state: %v", after)
	}
}

// WriteStatus's table.
func TestWriteStatus(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.Local)
	st := &schedd.Status{PID: 42, Started: now.Add(-90 * time.Second), Now: now, Queue: 1, Clients: 3,
		Machines: []schedd.MachineStatus{
			{URI: "ssh://b1", Name: "b1", MaxJobs: 2, InUse: 1, Started: 5, Succeeded: 3, Failed: 1},
			{URI: "ssh://b2", Name: "b2", MaxJobs: 1, Down: true, RetryIn: 8400 * time.Millisecond, Failures: 1, LastError: "cannot connect: refused\nmore", Started: 1, Failed: 1},
		},
		Running: []schedd.RunningBuild{{DrvPath: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x.drv", Machine: "ssh://b1", Started: now.Add(-61 * time.Second)}},
		Recent:  []schedd.Failure{{Time: now.Add(-time.Minute), DrvPath: "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-y.drv", Machine: "ssh://b2", Message: "cannot connect: refused"}},
	}
	var b bytes.Buffer
	schedd.WriteStatus(&b, st)
	want := `ferry scheduler: pid 42, up 1m30s, 3 clients, 1 queued

MACHINE  LOAD  STATE              STARTED  OK  FAILED  URI
b1       1/2   up                 5        3   1       ssh://b1
b2       0/1   down, retry in 8s  1        0   1       ssh://b2

RUNNING (1)
DERIVATION                                         MACHINE   ELAPSED
/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x.drv  ssh://b1  1m1s

RECENT FAILURES (1)
11:59:00  '/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-y.drv' on 'ssh://b2': cannot connect: refused
machine b2: cannot connect: refused
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

// A scheduler with IdleExit (as a build hook starts one) ends once no
// client has been connected for that long, and not while one is.
func TestIdleExit(t *testing.T) {
	stateDir := t.TempDir()
	d, err := schedd.Listen(schedd.Options{StateDir: stateDir, IdleExit: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Serve(context.Background()) }()
	c, err := schedd.Connect(context.Background(), d.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("Serve ended while a client was connected: %v", err)
	case <-time.After(time.Second):
	}
	c.Release()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not end after the last client left")
	}
	if _, err := os.Stat(d.SocketPath()); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

// TestStartConcurrently: hooks that find no scheduler at once each start
// one; one wins the lock and every Start returns its socket, however
// slowly it comes up, so no hook falls back to placing builds itself.
func TestStartConcurrently(t *testing.T) {
	ferry := nixtest.FerryBin(t)
	stateDir, err := os.MkdirTemp("", "schedd-start-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(stateDir)
	defer func() {
		// Stop the scheduler, and wait for it to be gone: it saves its
		// state as it ends, which must not outlive the directory.
		if st, err := schedd.GetStatus(context.Background(), schedd.SocketPath(stateDir)); err == nil {
			syscall.Kill(st.PID, syscall.SIGTERM)
			for i := 0; i < 200 && syscall.Kill(st.PID, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()
	const n = 8
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := schedd.Start(context.Background(), ferry, stateDir, "--idle-exit", "10s")
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
