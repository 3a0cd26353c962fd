package remote_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"ferry/internal/lock"
	"ferry/internal/nixtest"
	"ferry/internal/sandbox"
	"ferry/internal/sshtest"
)

func TestMain(m *testing.M) {
	sandbox.Init()
	code := m.Run()
	nixtest.RemoveFerryBin()
	os.Exit(code)
}

// graphNix is a graph of 33 derivations: leaves with two outputs that use
// an input source, mids that fan in from two leaves, three derivations
// that require the feature "special", five tops that fan in from every
// mid, and a root over the tops and the special ones.
const graphNix = `{ system, n ? 12, tag ? "" }:
let
  mk = name: attrs: derivation ({ inherit name system; builder = "/bin/sh"; } // attrs);
  src = ./input.txt;
  leaves = builtins.genList (i: mk "leaf-${toString i}" {
    outputs = [ "out" "doc" ];
    args = [ "-c" "echo leaf ${toString i} ${tag} > $out; cat ${src} > $doc; echo built leaf ${toString i}" ];
  }) n;
  mids = builtins.genList (i: mk "mid-${toString i}" {
    args = [ "-c" "cat ${builtins.elemAt leaves i} ${(builtins.elemAt leaves (n - 1 - i)).doc} > $out" ];
  }) n;
  special = builtins.genList (i: mk "special-${toString i}" {
    requiredSystemFeatures = [ "special" ];
    args = [ "-c" "cat ${builtins.elemAt mids i} > $out" ];
  }) 3;
  tops = builtins.genList (i: mk "top-${toString i}" {
    args = [ "-c" "mkdir $out; cat ${builtins.concatStringsSep " " (map toString mids)} > $out/all; echo ${toString i} > $out/i" ];
  }) 5;
in mk "root" { args = [ "-c" "mkdir $out; echo ${builtins.concatStringsSep " " (map toString (tops ++ special))} > $out/refs" ]; }
`

type env struct {
	t      *testing.T
	ferry  string
	system string
	sshd   *sshtest.Server
	dir    string
	expr   string
	clEnv  []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, nil)
}

// newEnvWith is newEnv with the sshd's options.
func newEnvWith(t *testing.T, sshOpts *sshtest.Options) *env {
	t.Helper()
	nixtest.RequireNix(t)
	nixtest.Require(t, "ssh", "busybox")
	e := &env{t: t, ferry: nixtest.FerryBin(t), sshd: sshtest.Start(t, sshOpts), dir: t.TempDir()}
	e.system = strings.Trim(nixtest.Line(t, "nix-instantiate", "--eval", "--expr", "builtins.currentSystem"), `"`)
	if err := os.WriteFile(filepath.Join(e.dir, "input.txt"), []byte("an input source\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.expr = filepath.Join(e.dir, "graph.nix")
	if err := os.WriteFile(e.expr, []byte(graphNix), 0o644); err != nil {
		t.Fatal(err)
	}
	e.clEnv = append(nixtest.Env(filepath.Join(e.dir, "client")), e.sshd.Env()...)
	return e
}

// machine is a machines line for a builder store behind the sshd
// (sshtest.Server.Machine).
func (e *env) machine(program, store, rest string) string {
	return e.sshd.Machine(program, store, e.system, rest)
}

// startScheduler runs ferry scheduler on stateDir until the test ends
// and waits for its socket; its log is the buffer.
func (e *env) startScheduler(stateDir string) (*exec.Cmd, *nixtest.SyncBuffer) {
	e.t.Helper()
	cmd := exec.Command(e.ferry, "scheduler", "--state-dir", stateDir)
	cmd.Env = e.clEnv
	log := &nixtest.SyncBuffer{}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(stateDir, "ferry-scheduler.sock")); err == nil {
			return cmd, log
		}
		if i > 200 {
			e.t.Fatalf("no scheduler socket in %s:\n%s", stateDir, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// script writes an executable shell script.
func (e *env) script(name, body string) string {
	p := filepath.Join(e.dir, name)
	if err := nixtest.WriteExecutable(p, []byte("#!/bin/sh\n"+body)); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// instantiate writes the graph's derivations into a fresh client store.
func (e *env) instantiate(local string, args ...string) string {
	e.t.Helper()
	return nixtest.Line(e.t, "nix-instantiate", append([]string{"--store", local, "--argstr", "system", e.system, e.expr}, args...)...)
}

type runResult struct {
	code           int
	stdout, stderr string
	results        []result
}

type result struct {
	DrvPath   string            `json:"drvPath"`
	Machine   string            `json:"machine"`
	Status    string            `json:"status"`
	Outputs   map[string]string `json:"outputs"`
	ErrorMsg  string            `json:"errorMsg"`
	Attempts  int               `json:"attempts"`
	SentPaths int               `json:"sentPaths"`
}

// ferryBuild runs ferry build --builders with --json and returns what it
// said; watch, if not nil, sees each stderr line as it comes.
func (e *env) ferryBuild(local, machines string, watch func(string), args ...string) *runResult {
	e.t.Helper()
	mf := filepath.Join(e.dir, fmt.Sprintf("machines-%d", time.Now().UnixNano()))
	if err := os.WriteFile(mf, []byte(machines+"\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(e.ferry, append([]string{"--store", local, "build", "--json", "--machines", mf}, args...)...)
	cmd.Env = e.clEnv
	var out bytes.Buffer
	cmd.Stdout = &out
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	var errBuf bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			errBuf.WriteString(sc.Text() + "\n")
			if watch != nil {
				watch(sc.Text())
			}
		}
	}()
	err := cmd.Run()
	pw.Close()
	wg.Wait()
	r := &runResult{stdout: out.String(), stderr: errBuf.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	if s := strings.TrimSpace(r.stdout); s != "" {
		if err := json.Unmarshal([]byte(s), &r.results); err != nil {
			e.t.Fatalf("--json: %v\n%s", err, s)
		}
	}
	return r
}

func (r *runResult) byName() map[string]result {
	m := map[string]result{}
	for _, x := range r.results {
		name := strings.TrimSuffix(filepath.Base(x.DrvPath)[33:], ".drv")
		m[name] = x
	}
	return m
}

func drvFiles(t *testing.T, st string) []string {
	ents, _ := os.ReadDir(filepath.Join(st, "nix/store"))
	var ds []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".drv") {
			ds = append(ds, e.Name())
		}
	}
	return ds
}

// TestRemoteBuildGraph builds a 33-derivation graph on three builders
// behind a real sshd, two ferry serve and one nix-store --serve, one of
// them taking only derivations that require "special", and compares the
// outputs with a local nix-build's.
func TestRemoteBuildGraph(t *testing.T) {
	e := newEnv(t)
	ref := filepath.Join(e.dir, "ref")
	refOut := nixtest.Line(t, "nix-build", "--store", ref, "--no-out-link", "--option", "system-features", "special", "--argstr", "system", e.system, e.expr)

	local := filepath.Join(e.dir, "local")
	drv := e.instantiate(local)
	b1, b2, b3, b4 := filepath.Join(e.dir, "b1"), filepath.Join(e.dir, "b2"), filepath.Join(e.dir, "b3"), filepath.Join(e.dir, "b4")
	ms := strings.Join([]string{
		e.machine(e.ferry, b1, "2 1"),
		e.machine("nix-store", b2, "2 1"),
		e.machine(e.ferry, b3, "1 1 special special"),
		// A machine for another system is never used (nor connected to).
		strings.Replace(e.machine(e.ferry, b4, "2 1"), " "+e.system+" ", " aarch64-linux ", 1),
	}, "\n")
	r := e.ferryBuild(local, ms, nil, "-j", "0", drv)
	if r.code != 0 {
		t.Fatalf("ferry build: exit %d\n%s", r.code, r.stderr)
	}
	res := r.byName()
	if got := res["root"].Outputs["out"]; got != refOut {
		t.Fatalf("root built to %q, nix-build gave %q", got, refOut)
	}
	if len(r.results) != 33 {
		t.Errorf("%d results, want 33", len(r.results))
	}
	want := nixtest.PathInfos(t, ref, "--recursive", refOut)
	got := nixtest.PathInfos(t, local, "--recursive", refOut)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outputs differ from a local nix-build (-nix-build +ferry build --builders):\n%s", diff)
	}
	machineOf := func(uri string) string {
		for _, b := range []string{b1, b2, b3, b4} {
			if strings.Contains(uri, "remote-store="+b) {
				return filepath.Base(b)
			}
		}
		return uri
	}
	used := map[string]int{}
	for name, x := range res {
		m := machineOf(x.Machine)
		used[m]++
		if x.Status != "Built" {
			t.Errorf("%s: %s (%s)", name, x.Status, x.ErrorMsg)
		}
		if special := strings.HasPrefix(name, "special-"); special != (m == "b3") {
			t.Errorf("%s was built on %s: only the special ones go to b3, all of them", name, m)
		}
	}
	if used["b1"] == 0 || used["b2"] == 0 || used["b3"] != 3 || used["b4"] != 0 {
		t.Errorf("builds per machine: %v", used)
	}
	if _, err := os.Stat(b4); !os.IsNotExist(err) {
		t.Errorf("the aarch64 machine's store was opened: %v", err)
	}
	for _, st := range []string{b1, b2, b3} {
		if ds := drvFiles(t, st); len(ds) > 0 {
			t.Errorf("%s holds .drv files: %v", st, ds)
		}
		nixtest.Verify(t, st)
	}
	nixtest.Verify(t, local)
	// One session per slot at most: 2 + 2 + 1, and one more for each
	// slot reopened after its machine was reported down (a new store
	// that two nix-store processes create at once may fail one of them).
	if n := strings.Count(e.sshd.Log(), "Accepted publickey"); n > 5+strings.Count(r.stderr, "is down") || n == 0 {
		t.Errorf("%d ssh sessions for 5 slots\n%s\n%s", n, r.stderr, e.sshd.Log())
	}
	// The logs come behind "name@host> ".
	if !regexp.MustCompile(`(?m)^leaf-\d+@127\.0\.0\.1#\d> built leaf \d+$`).MatchString(r.stderr) {
		t.Errorf("no prefixed build log in:\n%s", r.stderr)
	}

	// Everything valid now: nothing is built or connected to again.
	before := strings.Count(e.sshd.Log(), "Accepted publickey")
	r = e.ferryBuild(local, ms, nil, "-j", "0", drv)
	if r.code != 0 || r.byName()["root"].Status != "AlreadyValid" {
		t.Errorf("second run: exit %d, root %+v\n%s", r.code, r.byName()["root"], r.stderr)
	}
	if after := strings.Count(e.sshd.Log(), "Accepted publickey"); after != before {
		t.Errorf("a run with nothing to build opened %d sessions", after-before)
	}
}

// With -j 0 and no machine that can build a derivation, the error names
// the derivation, its system and features, before anything is built.
func TestRemoteBuildNoMachine(t *testing.T) {
	e := newEnv(t)
	local := filepath.Join(e.dir, "local")
	drv := e.instantiate(local)
	r := e.ferryBuild(local, e.machine(e.ferry, filepath.Join(e.dir, "b1"), "2 1"), nil, "-j", "0", drv)
	if r.code == 0 {
		t.Fatal("ferry build succeeded without a machine for the special derivations")
	}
	if !regexp.MustCompile(`cannot build '/nix/store/[^']+-special-0\.drv': no machine can build a '` + e.system + `' derivation with features \{special\}`).MatchString(r.stderr) {
		t.Errorf("stderr does not name the derivation, system and features:\n%s", r.stderr)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "b1")); !os.IsNotExist(err) {
		t.Errorf("a build started anyway: %v", err)
	}
}

// TestRemoteBuildFaults: a builder that refuses connections, one that
// never answers, one killed (kill -9) mid-build, one that dies mid-copy,
// and one whose store refuses writes; each time the graph completes on
// the others and every store verifies.
func TestRemoteBuildFaults(t *testing.T) {
	e := newEnv(t)
	good := func(name string) string { return e.machine(e.ferry, filepath.Join(e.dir, name), "2 1 special") }
	check := func(t *testing.T, local string, r *runResult, stores ...string) {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("ferry build: exit %d\n%s", r.code, r.stderr)
		}
		if root := r.byName()["root"]; root.Status != "Built" {
			t.Errorf("root: %+v", root)
		}
		for _, st := range append(stores, local) {
			if _, err := os.Stat(st); err == nil {
				nixtest.Verify(t, st)
			}
		}
	}

	t.Run("connection refused", func(t *testing.T) {
		local := filepath.Join(t.TempDir(), "local")
		drv := e.instantiate(local, "--argstr", "tag", "refused")
		dead := strings.Replace(e.machine(e.ferry, filepath.Join(e.dir, "dead"), "2 1 special"), "@127.0.0.1", "@127.0.0.1:1", 1)
		r := e.ferryBuild(local, dead+"\n"+good("g1"), nil, "-j", "0", drv)
		check(t, local, r, filepath.Join(e.dir, "g1"))
		if n := strings.Count(r.stderr, "is down"); n != 1 {
			t.Errorf("the dead machine was reported down %d times (machines %s):\n%s", n, dead, r.stderr)
		}
	})

	t.Run("black hole", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var held []net.Conn
		var mu sync.Mutex
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				held = append(held, c) // never answers
				mu.Unlock()
			}
		}()
		defer func() {
			mu.Lock()
			for _, c := range held {
				c.Close()
			}
			mu.Unlock()
		}()
		local := filepath.Join(t.TempDir(), "local")
		drv := e.instantiate(local, "--argstr", "tag", "blackhole")
		hole := strings.Replace(e.machine(e.ferry, filepath.Join(e.dir, "hole"), "2 1 special"), "@127.0.0.1", "@"+ln.Addr().String(), 1)
		start := time.Now()
		r := e.ferryBuild(local, hole+"\n"+good("g2"), nil, "-j", "0", "--connect-timeout", "2s", drv)
		check(t, local, r, filepath.Join(e.dir, "g2"))
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("the run took %v with a 2 s connect time-out", d)
		}
		if !strings.Contains(r.stderr, "is down") {
			t.Errorf("the black hole was not reported down:\n%s", r.stderr)
		}
	})

	t.Run("kill -9 mid-build", func(t *testing.T) {
		local := filepath.Join(t.TempDir(), "local")
		drv := e.instantiate(local, "--argstr", "tag", "kill")
		victim := filepath.Join(e.dir, "victim")
		pidFile := filepath.Join(e.dir, "victim.pids")
		wrapper := e.script("victim.sh", "echo $$ >> "+pidFile+"\nexec "+e.ferry+" \"$@\"\n")
		// The victim comes first: it gets the first builds.
		ms := e.machine(wrapper, victim, "2 1 special") + "\n" + good("g3")
		var once sync.Once
		killed := make(chan struct{})
		r := e.ferryBuild(local, ms, func(line string) {
			if strings.Contains(line, "@127.0.0.1#1> built leaf") {
				once.Do(func() {
					data, _ := os.ReadFile(pidFile)
					for _, f := range strings.Fields(string(data)) {
						var pid int
						fmt.Sscan(f, &pid)
						syscall.Kill(pid, syscall.SIGKILL)
					}
					close(killed)
				})
			}
		}, "-j", "0", drv)
		select {
		case <-killed:
		default:
			t.Fatalf("no build ran on the victim:\n%s", r.stderr)
		}
		check(t, local, r, victim, filepath.Join(e.dir, "g3"))
		if !strings.Contains(r.stderr, "is down") {
			t.Errorf("the killed machine was not reported down:\n%s", r.stderr)
		}
	})

	t.Run("dies mid-copy", func(t *testing.T) {
		// The victim's serve process may write 1 MiB files at most
		// (ulimit -f): receiving the 4 MiB input source kills it with
		// SIGXFSZ halfway through the copy.
		big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18)
		bigDir := t.TempDir()
		if err := os.WriteFile(filepath.Join(bigDir, "input.txt"), big, 0o644); err != nil {
			t.Fatal(err)
		}
		expr := filepath.Join(bigDir, "graph.nix")
		os.WriteFile(expr, []byte(graphNix), 0o644)
		local := filepath.Join(t.TempDir(), "local")
		drv := nixtest.Line(t, "nix-instantiate", "--store", local, "--argstr", "system", e.system, expr)
		victim := filepath.Join(e.dir, "copy-victim")
		wrapper := e.script("copy-victim.sh", "ulimit -f 2048\nexec "+e.ferry+" \"$@\"\n")
		ms := e.machine(wrapper, victim, "2 1 special") + "\n" + good("g4")
		r := e.ferryBuild(local, ms, nil, "-j", "0", drv)
		check(t, local, r, victim, filepath.Join(e.dir, "g4"))
		if !strings.Contains(r.stderr, "is down") {
			t.Errorf("the victim was not reported down:\n%s", r.stderr)
		}
	})

	t.Run("store refuses writes", func(t *testing.T) {
		local := filepath.Join(t.TempDir(), "local")
		drv := e.instantiate(local, "--argstr", "tag", "readonly")
		// serve without --write, as a forced command may say.
		ro := e.script("readonly.sh", "exec "+e.ferry+" --serve --store \"$4\"\n")
		nixRO := e.script("nix-readonly.sh", "exec nix-store --serve --store \"$4\"\n")
		ms := e.machine(ro, filepath.Join(e.dir, "ro"), "2 1 special") + "\n" + e.machine(nixRO, filepath.Join(e.dir, "nix-ro"), "2 1 special") + "\n" + good("g5")
		r := e.ferryBuild(local, ms, nil, "-j", "0", drv)
		check(t, local, r, filepath.Join(e.dir, "g5"))
		if n := strings.Count(r.stderr, "is down"); n < 2 {
			t.Errorf("%d machines reported down, want both read-only ones:\n%s", n, r.stderr)
		}
		for name, x := range r.byName() {
			if !strings.Contains(x.Machine, "/g5") {
				t.Errorf("%s ended on %s", name, x.Machine)
			}
		}
	})
}

// A failing derivation stops the run with its log tail; with --keep-going
// everything that does not depend on it is built.
func TestRemoteBuildFailure(t *testing.T) {
	e := newEnv(t)
	expr := filepath.Join(e.dir, "fail.nix")
	os.WriteFile(expr, []byte(`{ system }:
let
  mk = name: script: derivation { inherit name system; builder = "/bin/sh"; args = [ "-c" script ]; };
  bad = mk "bad" "echo about to fail; echo the reason is here >&2; exit 1";
  after = mk "after-bad" "cat ${bad} > $out";
  others = builtins.genList (i: mk "other-${toString i}" "sleep 0.2; echo ${toString i} > $out") 6;
in mk "all" "echo ${after} ${builtins.concatStringsSep " " (map toString others)} > $out"
`), 0o644)
	ms := e.machine(e.ferry, filepath.Join(e.dir, "b1"), "1 1") + "\n" + e.machine("nix-store", filepath.Join(e.dir, "b2"), "1 1")
	instantiate := func() (string, string) {
		local := filepath.Join(t.TempDir(), "local")
		return local, nixtest.Line(t, "nix-instantiate", "--store", local, "--argstr", "system", e.system, expr)
	}

	local, drv := instantiate()
	logDir := t.TempDir()
	r := e.ferryBuild(local, ms, nil, "-j", "0", "--log-dir", logDir, drv)
	if r.code != 100 {
		t.Errorf("exit %d, want 100\n%s", r.code, r.stderr)
	}
	// With --log-dir each build's log is in its own file, not on stderr.
	logs, _ := filepath.Glob(filepath.Join(logDir, "*-bad.drv.log"))
	if len(logs) != 1 || !strings.Contains(string(mustRead(t, logs[0])), "the reason is here") {
		t.Errorf("--log-dir: %v", logs)
	}
	if strings.Contains(r.stderr, "bad@") {
		t.Errorf("--log-dir: the log also went to stderr:\n%s", r.stderr)
	}
	if !regexp.MustCompile(`error: build of '/nix/store/\S+-bad\.drv' on 'ssh://[^']+' failed: .*builder for '/nix/store/\S+-bad\.drv' failed with exit code 1`).MatchString(r.stderr) {
		t.Errorf("the failure is not reported with the derivation and the machine:\n%s", r.stderr)
	}
	res := r.byName()
	if res["bad"].Attempts != 1 {
		t.Errorf("bad was tried %d times: a genuine failure is not retried", res["bad"].Attempts)
	}
	if res["after-bad"].Status != "DependencyFailed" || res["all"].Status != "DependencyFailed" {
		t.Errorf("dependents: after-bad %s, all %s", res["after-bad"].Status, res["all"].Status)
	}

	local, drv = instantiate()
	r = e.ferryBuild(local, ms, nil, "-j", "0", "--keep-going", drv)
	if r.code != 100 {
		t.Errorf("--keep-going: exit %d, want 100\n%s", r.code, r.stderr)
	}
	var others []string
	for name, x := range r.byName() {
		if strings.HasPrefix(name, "other-") {
			others = append(others, name+":"+x.Status)
			// A builder that kept the output from the first run says
			// AlreadyValid; either way it was copied here.
			if x.Status != "Built" && x.Status != "AlreadyValid" {
				t.Errorf("--keep-going: %s %s\n%s", name, x.Status, r.stderr)
			}
			if _, err := os.Stat(filepath.Join(local, x.Outputs["out"])); err != nil {
				t.Errorf("--keep-going: %s: %v", name, err)
			}
		}
	}
	sort.Strings(others)
	if len(others) != 6 {
		t.Errorf("--keep-going: others %v", others)
	}
	nixtest.Verify(t, local)
}

// TestRemoteBuildSharesSlotsWithNix: ferry build --builders and
// nix-build --builders on the same client store and machines file, at
// once, against one builder with one slot: Nix's slot lock keeps them
// from ever building two things there at the same time (each build
// writes when it started and ended, by /proc/uptime; no two intervals
// overlap), and both
// finish.
func TestRemoteBuildSharesSlotsWithNix(t *testing.T) {
	e := newEnv(t)
	expr := filepath.Join(e.dir, "slots.nix")
	os.WriteFile(expr, []byte(`{ system, tag }:
let
  mk = i: derivation {
    name = "slot-${tag}-${toString i}";
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" "read up rest < /proc/uptime; echo $up > $out; sleep 0.3; read up rest < /proc/uptime; echo $up >> $out" ];
  };
in derivation { name = "slots-${tag}"; inherit system; builder = "/bin/sh"; args = [ "-c" "cat ${toString (builtins.genList mk 4)} > $out" ]; }
`), 0o644)
	local := filepath.Join(e.dir, "local")
	inst := func(tag string) string {
		return nixtest.Line(t, "nix-instantiate", "--store", local, "--argstr", "system", e.system, "--argstr", "tag", tag, expr)
	}
	ferryDrv, nixDrv := inst("ferry"), inst("nix")
	builder := e.machine("nix-store", filepath.Join(e.dir, "b1"), "1 1")
	mf := filepath.Join(e.dir, "machines")
	os.WriteFile(mf, []byte(builder+"\n"), 0o644)

	var wg sync.WaitGroup
	var nixErr error
	var nixOut []byte
	wg.Add(1)
	go func() {
		defer wg.Done()
		cmd := exec.Command("nix-build", "--store", local, "-j0", "--builders", "@"+mf, "--no-out-link", nixDrv)
		cmd.Env = e.clEnv
		nixOut, nixErr = cmd.Output()
	}()
	r := e.ferryBuild(local, builder, nil, "-j", "0", ferryDrv)
	wg.Wait()
	if r.code != 0 {
		t.Fatalf("ferry build: exit %d\n%s", r.code, r.stderr)
	}
	if nixErr != nil {
		t.Fatalf("nix-build: %v\n%s", nixErr, nixOut)
	}
	// Every leaf's interval, from both runs; the tops only hold copies.
	type span struct {
		from, to float64
		who      string
	}
	var spans []span
	for name, x := range r.byName() {
		if strings.HasPrefix(name, "slot-") {
			var sp span
			fmt.Sscan(string(mustRead(t, filepath.Join(local, x.Outputs["out"]))), &sp.from, &sp.to)
			sp.who = name
			spans = append(spans, sp)
		}
	}
	leaves, err := filepath.Glob(filepath.Join(local, "nix/store/*-slot-nix-[0-9]"))
	if err != nil || len(leaves) != 4 {
		t.Fatalf("nix-build's leaves: %v %v", leaves, err)
	}
	for _, l := range leaves {
		var sp span
		fmt.Sscan(string(mustRead(t, l)), &sp.from, &sp.to)
		sp.who = filepath.Base(l)
		spans = append(spans, sp)
	}
	if len(spans) != 8 {
		t.Fatalf("%d leaf builds, want 8", len(spans))
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].from < spans[j].from })
	for i := 1; i < len(spans); i++ {
		if spans[i].from < spans[i-1].to {
			t.Errorf("%s started at %.3f while %s ran until %.3f on the one-slot builder", spans[i].who, spans[i].from, spans[i-1].who, spans[i-1].to)
		}
	}
	mixed := false
	for i := 1; i < len(spans); i++ {
		mixed = mixed || strings.Contains(spans[i].who, "-ferry-") != strings.Contains(spans[i-1].who, "-ferry-")
	}
	if !mixed {
		t.Logf("the two runs did not interleave (each took the slot in turn): %v", spans)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestRemoteBuildInterrupt: Ctrl-C (SIGINT) while builds run on a ferry
// serve and a nix-store --serve builder ends ferry build within seconds,
// the remote builders die with their sessions, and every store verifies.
func TestRemoteBuildInterrupt(t *testing.T) {
	e := newEnv(t)
	marker := fmt.Sprintf("interrupt-me-%d", time.Now().UnixNano())
	expr := filepath.Join(e.dir, "slow.nix")
	os.WriteFile(expr, []byte(`{ system }:
let mk = i: derivation { name = "slow-${toString i}"; inherit system; builder = "/bin/sh"; args = [ "-c" "echo started; exec sleep 3${toString i}" ]; marker = "`+marker+`"; };
in derivation { name = "slow-all"; inherit system; builder = "/bin/sh"; args = [ "-c" "echo ${toString (builtins.genList mk 2)} > $out" ]; }
`), 0o644)
	local := filepath.Join(e.dir, "local")
	drv := nixtest.Line(t, "nix-instantiate", "--store", local, "--argstr", "system", e.system, expr)
	b1, b2 := filepath.Join(e.dir, "b1"), filepath.Join(e.dir, "b2")
	ms := e.machine(e.ferry, b1, "1 1") + "\n" + e.machine("nix-store", b2, "1 1")
	mf := filepath.Join(e.dir, "machines")
	os.WriteFile(mf, []byte(ms+"\n"), 0o644)
	cmd := exec.Command(e.ferry, "--store", local, "build", "-j", "0", "--machines", mf, drv)
	cmd.Env = e.clEnv
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	started := 0
	var log []string
	for started < 2 && sc.Scan() {
		log = append(log, sc.Text())
		if strings.HasSuffix(sc.Text(), "> started") {
			started++
		}
	}
	if started < 2 {
		cmd.Process.Kill()
		t.Fatalf("the builds did not start on both builders:\n%s", strings.Join(log, "\n"))
	}
	// Both sleeps run under the builders now.
	running := func() int {
		out, _ := exec.Command("pgrep", "-f", "sleep 3[01]").Output()
		return len(strings.Fields(string(out)))
	}
	if n := running(); n < 2 {
		t.Errorf("%d remote builders running before the interrupt", n)
	}
	start := time.Now()
	cmd.Process.Signal(os.Interrupt)
	go io.Copy(io.Discard, stderr)
	err = cmd.Wait()
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("ferry build took %v to stop after SIGINT", d)
	}
	if err == nil {
		t.Errorf("ferry build succeeded after SIGINT")
	}
	deadline := time.Now().Add(10 * time.Second)
	for running() > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := running(); n > 0 {
		t.Errorf("%d remote builders still run after the sessions ended", n)
	}
	for _, st := range []string{local, b1, b2} {
		nixtest.Verify(t, st)
	}
}

// With a ferry scheduler serving the client store, ferry build --builders
// sends its remote builds through it: the same outputs, the scheduler's
// one session per slot, and its status counts the builds.
func TestRemoteBuildThroughScheduler(t *testing.T) {
	e := newEnv(t)
	ref := filepath.Join(e.dir, "ref")
	refOut := nixtest.Line(t, "nix-build", "--store", ref, "--no-out-link", "--option", "system-features", "special", "--argstr", "system", e.system, e.expr)
	local := filepath.Join(e.dir, "local")
	drv := e.instantiate(local)
	stateDir := filepath.Join(local, "nix/var/nix")
	cmd, daemonLog := e.startScheduler(stateDir)
	b1, b2, b3 := filepath.Join(e.dir, "b1"), filepath.Join(e.dir, "b2"), filepath.Join(e.dir, "b3")
	ms := strings.Join([]string{
		e.machine(e.ferry, b1, "2 1"),
		e.machine("nix-store", b2, "2 1"),
		e.machine(e.ferry, b3, "1 1 special special"),
	}, "\n")
	before := strings.Count(e.sshd.Log(), "Accepted publickey")
	r := e.ferryBuild(local, ms, nil, "-j", "0", drv)
	if r.code != 0 {
		t.Fatalf("ferry build: exit %d\n%s\nscheduler:\n%s", r.code, r.stderr, daemonLog.String())
	}
	if got := r.byName()["root"].Outputs["out"]; got != refOut {
		t.Fatalf("root built to %q, nix-build gave %q", got, refOut)
	}
	if diff := cmp.Diff(nixtest.PathInfos(t, ref, "--recursive", refOut), nixtest.PathInfos(t, local, "--recursive", refOut)); diff != "" {
		t.Errorf("outputs differ from a local nix-build:\n%s", diff)
	}
	for name, x := range r.byName() {
		if x.Machine != "ferry-scheduler" {
			t.Errorf("%s was built on %q, not through the scheduler", name, x.Machine)
		}
	}
	if n := strings.Count(e.sshd.Log(), "Accepted publickey") - before; n > 5 || n == 0 {
		t.Errorf("%d ssh sessions for 5 slots", n)
	}
	st := exec.Command(e.ferry, "status", "--state-dir", stateDir, "--json")
	st.Env = e.clEnv
	out, err := st.Output()
	var status struct {
		Machines []struct {
			URI       string `json:"uri"`
			Succeeded uint64 `json:"succeeded"`
		} `json:"machines"`
	}
	if err == nil {
		err = json.Unmarshal(out, &status)
	}
	var built uint64
	for _, m := range status.Machines {
		built += m.Succeeded
		if strings.Contains(m.URI, "/b3") && m.Succeeded != 3 {
			t.Errorf("the special machine built %d, want the 3 special ones", m.Succeeded)
		}
	}
	if err != nil || built != 33 {
		t.Errorf("ferry status: %d builds succeeded, want 33 (%v)\n%s", built, err, out)
	}

	// The scheduler copies the outputs back without taking their path
	// locks (Nix's locksHeld), so ferry build holds them, as nix-build
	// does: while another process holds one, the build waits.
	lockExpr := filepath.Join(e.dir, "lock.nix")
	if err := os.WriteFile(lockExpr, []byte(`{ system }: derivation { name = "locked"; inherit system; builder = "/bin/sh"; args = [ "-c" "echo locked > $out" ]; }`), 0o644); err != nil {
		t.Fatal(err)
	}
	lockDrv := nixtest.Line(t, "nix-instantiate", "--store", local, "--argstr", "system", e.system, lockExpr)
	lockOut := nixtest.Line(t, "nix-store", "--store", local, "-q", "--outputs", lockDrv)
	held, err := lock.LockPaths(context.Background(), []string{filepath.Join(local, lockOut)}, false)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *runResult, 1)
	go func() { done <- e.ferryBuild(local, ms, nil, "-j", "0", lockDrv) }()
	select {
	case r := <-done:
		t.Fatalf("the build finished while its output's lock was held elsewhere: exit %d\n%s", r.code, r.stderr)
	case <-time.After(3 * time.Second):
	}
	if err := exec.Command("nix-store", "--store", local, "--check-validity", lockOut).Run(); err == nil {
		t.Errorf("%s became valid while its lock was held elsewhere", lockOut)
	}
	held.Unlock()
	if r := <-done; r.code != 0 || r.byName()["locked"].Machine != "ferry-scheduler" {
		t.Errorf("after the lock was let go: exit %d, built on %q\n%s", r.code, r.byName()["locked"].Machine, r.stderr)
	}

	// kill -9 of the scheduler mid-build and a restart, as a service
	// manager does: ferry build asks the restarted one again and
	// finishes.
	sleepExpr := filepath.Join(e.dir, "sleep.nix")
	if err := os.WriteFile(sleepExpr, []byte(`{ system }: derivation { name = "slow"; inherit system; builder = "/bin/sh"; args = [ "-c" "echo started slow; sleep 3; echo slow > $out" ]; }`), 0o644); err != nil {
		t.Fatal(err)
	}
	slowDrv := nixtest.Line(t, "nix-instantiate", "--store", local, "--argstr", "system", e.system, sleepExpr)
	started := make(chan struct{})
	var once sync.Once
	go func() {
		done <- e.ferryBuild(local, ms, func(line string) {
			if strings.Contains(line, "started slow") {
				once.Do(func() { close(started) })
			}
		}, "-j", "0", slowDrv)
	}()
	select {
	case <-started:
	case <-time.After(60 * time.Second):
		t.Fatalf("the slow build did not start:\n%s", daemonLog.String())
	}
	cmd.Process.Kill()
	cmd.Wait()
	e.startScheduler(stateDir)
	// One attempt: the build was asked again of the restarted scheduler,
	// not failed and rescheduled after the scheduler's back-off.
	if r := <-done; r.code != 0 || r.byName()["slow"].Machine != "ferry-scheduler" || r.byName()["slow"].Attempts != 1 ||
		!regexp.MustCompile(`lost the connection to the ferry scheduler .*; asking again`).MatchString(r.stderr) {
		t.Errorf("ferry build across a scheduler restart: exit %d, built on %q in %d attempts\n%s", r.code, r.byName()["slow"].Machine, r.byName()["slow"].Attempts, r.stderr)
	}
	for _, st := range []string{b1, b2, b3, local} {
		nixtest.Verify(t, st)
	}
}

// TestRemoteBuildCA builds nixtest.CAGraphNix with ferry build --builders -j 0 on
// a ferry serve builder and, separately, on a real nix-store --serve
// builder (both with ca-derivations on and listing the feature), and
// compares each client store with a local nix-build's: the same output
// paths, NAR hashes, references and content addresses, and the same
// realisations, dependent ones included. No .drv reaches a builder and
// every store verifies; a second run builds nothing. With the only
// machine lacking "ca-derivations", the error names the derivations and
// the feature.
func TestRemoteBuildCA(t *testing.T) {
	nixtest.Require(t, "sqlite3")
	e := newEnvWith(t, &sshtest.Options{Env: []string{"NIX_CONFIG=extra-experimental-features = ca-derivations"}})
	for i, kv := range e.clEnv {
		if strings.HasPrefix(kv, "NIX_CONFIG=") {
			e.clEnv[i] = "NIX_CONFIG=" + nixtest.CAConfig
		}
	}
	e.expr = filepath.Join(e.dir, "ca.nix")
	if err := os.WriteFile(e.expr, []byte(nixtest.CAGraphNix), 0o644); err != nil {
		t.Fatal(err)
	}
	nixIn := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = e.clEnv
		var o, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return strings.TrimSpace(o.String())
	}
	ref := filepath.Join(e.dir, "ref")
	refOut := nixIn("nix-build", "--store", ref, "--no-out-link", "--argstr", "system", e.system, e.expr)
	want := nixtest.PathInfos(t, ref, "--recursive", refOut)
	wantReal := nixtest.Realisations(t, ref)
	// The cases the test is about are there: floating outputs (with a
	// self-reference) and realisations with dependent ones.
	selfRef := false
	for p, info := range want {
		for _, r := range info.References {
			if r == p && strings.HasPrefix(info.CA, "fixed:r:sha256:") {
				selfRef = true
			}
		}
	}
	if !selfRef || !strings.Contains(wantReal, "RR|") || strings.Count(wantReal, "R|") < 6 {
		t.Fatalf("the reference store lacks the cases under test:\n%v\n%s", want, wantReal)
	}

	for _, c := range []struct {
		name, program string
		scheduler     bool
	}{{"ferry serve", e.ferry, false}, {"nix-store --serve", "nix-store", false}, {"nix-store --serve through a scheduler", "nix-store", true}} {
		t.Run(c.name, func(t *testing.T) {
			local := filepath.Join(t.TempDir(), "local")
			if c.scheduler {
				// A short path: the scheduler's socket is in its state
				// directory, and a unix socket's path is short.
				dir, err := os.MkdirTemp("", "ca-")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.RemoveAll(dir) })
				local = filepath.Join(dir, "l")
			}
			b := filepath.Join(t.TempDir(), "b")
			drv := nixIn("nix-instantiate", "--store", local, "--argstr", "system", e.system, e.expr)
			ms := e.machine(c.program, b, "2 1 ca-derivations")
			onMachine := "remote-store=" + b
			if c.scheduler {
				// The scheduler is handed the resolved derivations and
				// registers their realisations; ferry build those of the
				// originals.
				e.startScheduler(filepath.Join(local, "nix/var/nix"))
				onMachine = "ferry-scheduler"
			}
			r := e.ferryBuild(local, ms, nil, "-j", "0", drv)
			if r.code != 0 {
				t.Fatalf("ferry build: exit %d\n%s", r.code, r.stderr)
			}
			res := r.byName()
			if len(res) != 3 {
				t.Errorf("%d results, want 3: %v", len(res), res)
			}
			for name, x := range res {
				if x.Status != "Built" || !strings.Contains(x.Machine, onMachine) {
					t.Errorf("%s: %s on %q (%s)", name, x.Status, x.Machine, x.ErrorMsg)
				}
			}
			if got := res["ia-deferred"].Outputs["out"]; got != refOut {
				t.Fatalf("ia-deferred built to %q, nix-build gave %q\n%s", got, refOut, r.stderr)
			}
			got := nixtest.PathInfos(t, local, "--recursive", refOut)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("outputs differ from a local nix-build (-nix-build +ferry build --builders):\n%s", diff)
			}
			// Every output of the JSON results is a valid path of the
			// reference's closure, the leaf's two included.
			for name, x := range res {
				if len(x.Outputs) == 0 {
					t.Errorf("%s: no outputs in the results", name)
				}
				for o, p := range x.Outputs {
					if _, ok := want[p]; !ok {
						t.Errorf("%s!%s is %s, not a path of nix-build's closure", name, o, p)
					}
				}
			}
			if n := len(res["ca-leaf"].Outputs); n != 2 {
				t.Errorf("ca-leaf has %d outputs in the results", n)
			}
			if gotReal := nixtest.Realisations(t, local); gotReal != wantReal {
				t.Errorf("realisations differ:\nnix-build:\n%s\nferry build --builders:\n%s", wantReal, gotReal)
			}
			if ds := drvFiles(t, b); len(ds) > 0 {
				t.Errorf("the builder holds .drv files: %v", ds)
			}
			if !strings.Contains(r.stderr, "resolved derivation: '") {
				t.Errorf("no resolved derivation in the log:\n%s", r.stderr)
			}
			nixtest.Verify(t, b)
			nixtest.Verify(t, local)

			// Realised and valid: nothing is built or connected to again.
			before := strings.Count(e.sshd.Log(), "Accepted publickey")
			r = e.ferryBuild(local, ms, nil, "-j", "0", drv)
			if r.code != 0 {
				t.Fatalf("second run: exit %d\n%s", r.code, r.stderr)
			}
			for name, x := range r.byName() {
				if x.Status != "AlreadyValid" {
					t.Errorf("second run: %s: %s (%s)", name, x.Status, x.ErrorMsg)
				}
			}
			if got := r.byName()["ia-deferred"].Outputs["out"]; got != refOut {
				t.Errorf("second run: ia-deferred's out is %q", got)
			}
			if after := strings.Count(e.sshd.Log(), "Accepted publickey"); after != before {
				t.Errorf("a run with nothing to build opened %d sessions", after-before)
			}
		})
	}

	t.Run("no machine with ca-derivations", func(t *testing.T) {
		local := filepath.Join(t.TempDir(), "local")
		b := filepath.Join(t.TempDir(), "b")
		drv := nixIn("nix-instantiate", "--store", local, "--argstr", "system", e.system, e.expr)
		r := e.ferryBuild(local, e.machine(e.ferry, b, "2 1 special"), nil, "-j", "0", drv)
		if r.code == 0 {
			t.Fatal("ferry build succeeded without a machine for ca-derivations")
		}
		for _, name := range []string{"ca-leaf", "ca-on-ca", "ia-deferred"} {
			if !regexp.MustCompile(`cannot build '/nix/store/[^']+-` + name + `\.drv': no machine can build a '` + e.system + `' derivation with features \{ca-derivations\}`).MatchString(r.stderr) {
				t.Errorf("stderr does not name %s and the feature ca-derivations:\n%s", name, r.stderr)
			}
		}
		if _, err := os.Stat(b); !os.IsNotExist(err) {
			t.Errorf("a build started anyway: %v", err)
		}
	})
}
