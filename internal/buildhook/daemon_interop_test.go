package buildhook_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"ferry/internal/nixtest"
	"ferry/internal/schedd"
)

// sleepersNix is n leaves and a root over them; every derivation sleeps
// and writes, on the first line of $out, /proc/uptime at its start and
// at its end (busybox has no date +%N), so that the builds that ran on
// one machine can be checked for overlap.
const sleepersNix = `{ system, n ? 2, sleep ? "1", tag ? "" }:
let
  mk = name: deps: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" "read s rest < /proc/uptime; echo started ${name} ${tag}; sleep ${sleep}; read e rest < /proc/uptime; echo $s $e > $out; echo ${toString deps} >> $out; echo done ${name} ${tag}" ];
  };
in mk "sleepers" (builtins.genList (i: mk "sleeper-${toString i}" []) n)
`

// daemon is a ferry scheduler process this test started.
type daemon struct {
	cmd  *exec.Cmd
	sock string
	pid  int
	log  *lockedBuffer
	done chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	fn func(string) // called with everything written so far
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.b.Write(p)
	s := w.b.String()
	fn := w.fn
	w.mu.Unlock()
	if fn != nil {
		fn(s)
	}
	return len(p), nil
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// startDaemon runs "ferry scheduler --state-dir stateDir args..." with
// the client environment (NIX_SSHOPTS for the sshd) in its own process
// group, waits until it answers on its socket, and kills the group when
// the test ends.
func (e *hookEnv) startDaemon(stateDir string, args ...string) *daemon {
	e.t.Helper()
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	d := &daemon{sock: schedd.SocketPath(stateDir), log: &lockedBuffer{}, done: make(chan struct{})}
	if len(d.sock) > 100 {
		e.t.Fatalf("socket path too long for a unix socket: %s", d.sock)
	}
	d.cmd = exec.Command(e.ferry, append([]string{"scheduler", "--state-dir", stateDir}, args...)...)
	d.cmd.Env = e.env
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	d.pid = d.cmd.Process.Pid
	go func() { d.cmd.Wait(); close(d.done) }()
	e.t.Cleanup(func() {
		// The daemon and the ssh processes of its sessions.
		syscall.Kill(-d.pid, syscall.SIGKILL)
		<-d.done
	})
	for deadline := time.Now().Add(20 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := schedd.GetStatus(ctx, d.sock)
		cancel()
		if err == nil {
			if st.PID != d.pid {
				e.t.Fatalf("another scheduler (pid %d) answers on %s", st.PID, d.sock)
			}
			return d
		}
		select {
		case <-d.done:
			e.t.Fatalf("ferry scheduler exited: %v\n%s", d.cmd.ProcessState, d.log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("ferry scheduler does not answer on %s: %v\n%s", d.sock, err, d.log)
		}
	}
}

func (d *daemon) status(t *testing.T) *schedd.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := schedd.GetStatus(ctx, d.sock)
	if err != nil {
		t.Fatalf("ferry status: %v\n%s", err, d.log)
	}
	return st
}

// machineStatus is the daemon's line for the machine whose URI contains
// part.
func machineStatus(t *testing.T, st *schedd.Status, part string) schedd.MachineStatus {
	t.Helper()
	for _, m := range st.Machines {
		if strings.Contains(m.URI, part) {
			return m
		}
	}
	t.Fatalf("the scheduler has no machine %s: %+v", part, st.Machines)
	return schedd.MachineStatus{}
}

// nixStart starts real nix-build on local with the machines, ferry as
// its build hook and FERRY_SCHEDULER=mode; wait waits for it.
func (e *hookEnv) nixStart(local, mode string, ms []string, stderr *lockedBuffer, args ...string) (wait func() *nixRun) {
	e.t.Helper()
	mf := filepath.Join(e.dir, "machines-"+filepath.Base(local))
	if err := os.WriteFile(mf, []byte(strings.Join(ms, "\n")+"\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command("nix-build", append([]string{"--store", local, "--no-out-link", "--builders", "@" + mf,
		"--option", "build-hook", e.hook, "--argstr", "system", e.system}, args...)...)
	cmd.Env = append(append([]string(nil), e.env...), "FERRY_SCHEDULER="+mode)
	var o bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	var r *nixRun
	go func() {
		err := cmd.Wait()
		r = &nixRun{out: strings.TrimSpace(o.String()), stderr: stderr.String(), err: err, took: time.Since(start)}
		close(done)
	}()
	e.t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	})
	return func() *nixRun { <-done; return r }
}

// closureOutputs are the store paths (base names) of out's closure in
// local.
func closureOutputs(t *testing.T, local, out string) []string {
	t.Helper()
	var names []string
	for _, p := range strings.Fields(nixtest.Line(t, "nix-store", "--store", local, "-qR", out)) {
		names = append(names, filepath.Base(p))
	}
	return names
}

// interval is one build's [start, end] by /proc/uptime.
type interval struct {
	name       string
	start, end float64
}

func stamps(t *testing.T, local string, names []string) []interval {
	t.Helper()
	var iv []interval
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(local, "nix/store", n))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		if len(f) != 2 {
			t.Fatalf("%s: no stamps: %q", n, b)
		}
		s, err1 := strconv.ParseFloat(f[0], 64)
		en, err2 := strconv.ParseFloat(f[1], 64)
		if err1 != nil || err2 != nil || en < s {
			t.Fatalf("%s: bad stamps %q", n, f)
		}
		iv = append(iv, interval{n, s, en})
	}
	return iv
}

// overlaps are the pairs of intervals that overlap.
func overlaps(iv []interval) []string {
	sort.Slice(iv, func(i, j int) bool { return iv[i].start < iv[j].start })
	var bad []string
	for i := range iv {
		for j := i + 1; j < len(iv) && iv[j].start < iv[i].end; j++ {
			bad = append(bad, fmt.Sprintf("%s [%.2f, %.2f] and %s [%.2f, %.2f]", iv[i].name, iv[i].start, iv[i].end, iv[j].name, iv[j].start, iv[j].end))
		}
	}
	return bad
}

// deadListener is a TCP port that accepts connections and closes them at
// once (a machine whose ssh server is broken), counting them.
func deadListener(t *testing.T) (port int, accepted *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted = &atomic.Int64{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, accepted
}

// TestDaemonHookInterop: real nix-build 2.8 with ferry build-hook and a
// running ferry scheduler (a separate process on the client store's state
// directory, as `ferry scheduler` runs), builders behind a real sshd
// running ferry serve and nix-store --serve.
func TestDaemonHookInterop(t *testing.T) {
	e := newHookEnv(t)
	sleepers := filepath.Join(e.dir, "sleepers.nix")
	if err := os.WriteFile(sleepers, []byte(sleepersNix), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("two nix-builds share one slot", func(t *testing.T) {
		// Two nix-build processes at once on one client store, different
		// graphs (tags), one builder with one slot: the scheduler never
		// runs two builds there at once, and both finish.
		local := filepath.Join(e.dir, "l1")
		d := e.startDaemon(filepath.Join(local, "nix/var/nix"))
		b := filepath.Join(e.dir, "s1")
		ms := []string{e.machine("nix-store", b, "1 1")}
		// Instantiated first: two Nix processes creating one store's
		// database at once fail with "SQLite database ... is busy".
		var drvs []string
		for _, tag := range []string{"a", "b"} {
			drvs = append(drvs, nixtest.Line(t, "nix-instantiate", "--store", local, "--argstr", "system", e.system,
				"--arg", "n", "2", "--argstr", "sleep", "0.5", "--argstr", "tag", tag, sleepers))
		}
		var waits []func() *nixRun
		for _, drv := range drvs {
			waits = append(waits, e.nixStart(local, "on", ms, &lockedBuffer{}, "-j0", drv))
		}
		var names []string
		for i, wait := range waits {
			r := wait()
			if r.err != nil {
				t.Fatalf("nix-build %d: %v\n%s\nscheduler:\n%s", i, r.err, r.stderr, d.log)
			}
			names = append(names, closureOutputs(t, local, r.out)...)
		}
		if len(names) != 6 {
			t.Fatalf("outputs %v, want 6", names)
		}
		if bad := overlaps(stamps(t, local, names)); len(bad) > 0 {
			t.Errorf("builds overlapped on the one slot:\n%s", strings.Join(bad, "\n"))
		}
		// Through the daemon: it ran all six on the builder.
		if m := machineStatus(t, d.status(t), b); m.Succeeded != 6 || m.MaxJobs != 1 {
			t.Errorf("the scheduler built %d (max-jobs %d), want 6 (1): %+v\n%s", m.Succeeded, m.MaxJobs, m, d.log)
		}
		for _, st := range []string{local, b} {
			nixtest.Verify(t, st)
		}
	})

	t.Run("dead builder skipped by every later build", func(t *testing.T) {
		// A machine that accepts TCP connections and closes them at once,
		// listed first, and a good ferry serve builder; 13 derivations.
		// Through the scheduler the dead machine is tried once (twice if
		// its back-off ended and a build probed it) for the whole graph;
		// with the hook placing builds in-process (FERRY_SCHEDULER=off),
		// every hook process finds it dead again.
		port, accepted := deadListener(t)
		dead := func(name string) string {
			return strings.Replace(e.machine(e.ferry, filepath.Join(e.dir, name), "2 1"), "@127.0.0.1", "@127.0.0.1:"+strconv.Itoa(port), 1)
		}
		run := func(mode, name string) (n int64, r *nixRun, good, local string) {
			t.Helper()
			local = filepath.Join(e.dir, "l-"+name)
			good = filepath.Join(e.dir, "g-"+name)
			var d *daemon
			if mode == "on" {
				d = e.startDaemon(filepath.Join(local, "nix/var/nix"))
			}
			before := accepted.Load()
			r = e.nixStart(local, mode, []string{dead("dead-" + name), e.machine(e.ferry, good, "2 1")}, &lockedBuffer{},
				"-j0", "--arg", "n", "4", "--argstr", "tag", "dead-"+name, e.expr)()
			n = accepted.Load() - before
			if r.err != nil {
				msg := ""
				if d != nil {
					msg = d.log.String()
				}
				t.Fatalf("nix-build (FERRY_SCHEDULER=%s): %v\n%s\n%s", mode, r.err, r.stderr, msg)
			}
			if d != nil {
				m := machineStatus(t, d.status(t), "127.0.0.1:"+strconv.Itoa(port))
				if !m.Down || m.Failures == 0 {
					t.Errorf("the scheduler does not have the dead machine down: %+v", m)
				}
			}
			return n, r, good, local
		}
		checkAllOnGood := func(r *nixRun, good, local string) {
			t.Helper()
			drvs := nixtest.Line(t, "nix-store", "--store", local, "-qR", nixtest.Line(t, "nix-store", "--store", local, "-q", "--deriver", r.out))
			var nd int
			for _, p := range strings.Fields(drvs) {
				if !strings.HasSuffix(p, ".drv") {
					continue
				}
				nd++
				for _, o := range strings.Fields(nixtest.Line(t, "nix-store", "--store", local, "-q", "--outputs", p)) {
					if _, err := os.Stat(filepath.Join(good, o)); err != nil {
						t.Errorf("%s was not built on the good machine: %v", o, err)
					}
				}
			}
			if nd != 13 {
				t.Errorf("%d derivations, want 13", nd)
			}
			nixtest.Verify(t, local)
		}

		n, r, good, local := run("on", "sched")
		t.Logf("through the scheduler: %d connections to the dead machine, %v", n, r.took)
		if n < 1 || n > 2 {
			t.Errorf("through the scheduler the dead machine was connected to %d times for 13 derivations, want 1 or 2\n%s", n, r.stderr)
		}
		checkAllOnGood(r, good, local)

		n, r, good, local = run("off", "hook")
		t.Logf("in the hooks: %d connections to the dead machine, %v", n, r.took)
		if n <= 2 {
			t.Errorf("with the hook placing builds itself the dead machine was connected to %d times, want more than 2 (one per hook that chose it)\n%s", n, r.stderr)
		}
		if !strings.Contains(r.stderr, "cannot build on 'ssh://root@127.0.0.1:"+strconv.Itoa(port)) {
			t.Errorf("the hook does not report the dead machine:\n%s", r.stderr)
		}
		checkAllOnGood(r, good, local)
	})

	t.Run("scheduler killed during a build", func(t *testing.T) {
		// kill -9 of the scheduler while nix-build's builds run on a
		// ferry serve and a nix-store --serve builder, and a restart
		// straight after, as a service manager does: each hook that lost
		// it says so, naming its derivation, asks the restarted scheduler
		// again and builds there, so nix-build succeeds; the restarted
		// scheduler lists the interrupted builds, and every store
		// verifies.
		local := filepath.Join(e.dir, "l3")
		stateDir := filepath.Join(local, "nix/var/nix")
		d := e.startDaemon(stateDir)
		b1, b2 := filepath.Join(e.dir, "k1"), filepath.Join(e.dir, "k2")
		ms := []string{e.machine(e.ferry, b1, "1 1"), e.machine("nix-store", b2, "1 1")}
		args := []string{"-j0", "--arg", "n", "3", "--argstr", "sleep", "2", "--argstr", "tag", "kill", sleepers}
		started := make(chan struct{})
		var once sync.Once
		stderr := &lockedBuffer{fn: func(s string) {
			if strings.Contains(s, "started sleeper-") {
				once.Do(func() { close(started) })
			}
		}}
		wait := e.nixStart(local, "on", ms, stderr, args...)
		select {
		case <-started:
		case <-time.After(60 * time.Second):
			t.Fatalf("no build started:\n%s\nscheduler:\n%s", stderr, d.log)
		}
		running := d.status(t).Running
		if len(running) == 0 {
			t.Fatalf("the scheduler runs no build while nix-build shows one:\n%s", stderr)
		}
		if err := syscall.Kill(d.pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-d.done
		d2 := e.startDaemon(stateDir)
		r := wait()
		if r.err != nil {
			t.Fatalf("nix-build after kill -9 of the scheduler during %v: %v\n%s\nrestarted scheduler:\n%s", running, r.err, r.stderr, d2.log)
		}
		if n := len(closureOutputs(t, local, r.out)); n != 4 {
			t.Errorf("%d outputs, want 4", n)
		}
		// The hook's warning, as Nix shows it: the lost scheduler and the
		// derivation whose build is asked again.
		re := regexp.MustCompile(`warning: lost the connection to the ferry scheduler at \S+ during the build of '(/nix/store/\S+-sleeper-\d\.drv)' \(.*building it again is safe\): .*; asking again`)
		named := map[string]bool{}
		for _, m := range re.FindAllStringSubmatch(r.stderr, -1) {
			named[m[1]] = true
		}
		for _, b := range running {
			if !named[string(b.DrvPath)] {
				t.Errorf("no hook says it lost the scheduler while building %s:\n%s", b.DrvPath, r.stderr)
			}
			interrupted := false
			for _, f := range d2.status(t).Recent {
				interrupted = interrupted || strings.Contains(f.Message, "interrupted") && f.DrvPath == b.DrvPath
			}
			if !interrupted {
				t.Errorf("the restarted scheduler does not list %s as interrupted: %+v", b.DrvPath, d2.status(t).Recent)
			}
		}
		t.Logf("after kill -9 of the scheduler the hooks asked again for %v; running were %v", named, running)
		st := d2.status(t)
		if got := machineStatus(t, st, b1).Succeeded + machineStatus(t, st, b2).Succeeded; got < uint64(len(running)) {
			t.Errorf("the restarted scheduler built %d, want at least the %d interrupted: %+v", got, len(running), st.Machines)
		}
		// The builders' sessions died with the first scheduler; their
		// builds were killed, and the stores are whole.
		for _, st := range []string{local, b1, b2} {
			nixtest.Verify(t, st)
		}
	})
}
