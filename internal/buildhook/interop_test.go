package buildhook_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"ferry/internal/machines"
	"ferry/internal/nixtest"
	"ferry/internal/sshtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	nixtest.RemoveFerryBin()
	os.Exit(code)
}

// graphNix is 25 derivations: leaves with two outputs that use an input
// source, mids that fan in from two leaves, four tops over every mid, a
// root over the tops. fail adds a derivation that fails.
const graphNix = `{ system, n ? 10, tag ? "", fail ? false }:
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
  tops = builtins.genList (i: mk "top-${toString i}" {
    args = [ "-c" "mkdir $out; cat ${builtins.concatStringsSep " " (map toString mids)} > $out/all; echo ${toString i} > $out/i" ];
  }) 4;
  bad = mk "bad" { args = [ "-c" "echo about to fail; exit 3" ]; };
in mk "root" { args = [ "-c" "mkdir $out; echo ${builtins.concatStringsSep " " (map toString tops)} ${if fail then toString bad else ""} > $out/refs" ]; }
`

type hookEnv struct {
	t      *testing.T
	ferry  string
	hook   string
	system string
	sshd   *sshtest.Server
	dir    string
	expr   string
	env    []string
}

func newHookEnv(t *testing.T) *hookEnv { return newHookEnvWith(t, nil) }

// newHookEnvWith is newHookEnv with the sshd started with opts.
func newHookEnvWith(t *testing.T, opts *sshtest.Options) *hookEnv {
	t.Helper()
	nixtest.RequireNix(t)
	nixtest.Require(t, "ssh", "busybox")
	e := &hookEnv{t: t, ferry: nixtest.FerryBin(t), sshd: sshtest.Start(t, opts), dir: t.TempDir()}
	// build-hook = .../ferry-build-hook, a symlink to ferry.
	e.hook = filepath.Join(e.dir, "ferry-build-hook")
	if err := os.Symlink(e.ferry, e.hook); err != nil {
		t.Fatal(err)
	}
	e.system = strings.Trim(nixtest.Line(t, "nix-instantiate", "--eval", "--expr", "builtins.currentSystem"), `"`)
	if err := os.WriteFile(filepath.Join(e.dir, "input.txt"), []byte("an input source\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.expr = filepath.Join(e.dir, "graph.nix")
	if err := os.WriteFile(e.expr, []byte(graphNix), 0o644); err != nil {
		t.Fatal(err)
	}
	// In-process placement unless a test asks for the scheduler.
	e.env = append(append(nixtest.Env(filepath.Join(e.dir, "client")), e.sshd.Env()...), "FERRY_SCHEDULER=off")
	return e
}

// withoutEnv is env less the variable name.
func withoutEnv(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// machine is a machines line for a builder store behind the sshd
// (sshtest.Server.Machine).
func (e *hookEnv) machine(program, store, rest string) string {
	return e.sshd.Machine(program, store, e.system, rest)
}

type nixRun struct {
	out, stderr string
	err         error
	took        time.Duration
}

// nixBuild runs real nix-build on local with the machines and ferry as
// its build hook.
func (e *hookEnv) nixBuild(local string, ms []string, args ...string) *nixRun {
	e.t.Helper()
	mf := filepath.Join(e.dir, "machines-"+filepath.Base(local))
	if err := os.WriteFile(mf, []byte(strings.Join(ms, "\n")+"\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command("nix-build", append([]string{"--store", local, "--no-out-link", "--builders", "@" + mf,
		"--option", "build-hook", e.hook, "--argstr", "system", e.system}, args...)...)
	cmd.Env = e.env
	var o, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &se
	start := time.Now()
	err := cmd.Run()
	return &nixRun{out: strings.TrimSpace(o.String()), stderr: se.String(), err: err, took: time.Since(start)}
}

func storeFiles(st, part string) []string {
	ents, _ := os.ReadDir(filepath.Join(st, "nix/store"))
	var fs []string
	for _, e := range ents {
		if strings.Contains(e.Name(), part) {
			fs = append(fs, e.Name())
		}
	}
	return fs
}

// stopScheduler ends the scheduler a hook started on demand on stateDir
// and waits until it is gone: it saves its state as it ends, which must
// not race the removal of the directory.
func stopScheduler(stateDir string) {
	pattern := "scheduler --state-dir " + stateDir
	exec.Command("pkill", "-f", pattern).Run()
	for i := 0; i < 200 && exec.Command("pgrep", "-f", pattern).Run() == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
}

func sessions(s *sshtest.Server) int { return strings.Count(s.Log(), "Accepted publickey") }

// TestHookInterop: real nix-build 2.8 with ferry build-hook over a real
// sshd, on ferry serve and nix-store --serve builders.
func TestHookInterop(t *testing.T) {
	e := newHookEnv(t)
	ref := filepath.Join(e.dir, "ref")
	refOut := nixtest.Line(t, "nix-build", "--store", ref, "--no-out-link", "--argstr", "system", e.system, e.expr)

	t.Run("graph", func(t *testing.T) {
		// 25 derivations, -j0: every one goes through the hook to the
		// two builders; the outputs are those of a local nix-build.
		local := filepath.Join(e.dir, "local")
		b1, b2 := filepath.Join(e.dir, "b1"), filepath.Join(e.dir, "b2")
		r := e.nixBuild(local, []string{e.machine(e.ferry, b1, "2 1"), e.machine("nix-store", b2, "2 1")}, "-j0", e.expr)
		if r.err != nil {
			t.Fatalf("nix-build: %v\n%s", r.err, r.stderr)
		}
		if r.out != refOut {
			t.Fatalf("nix-build through the hook gave %q, a local one %q", r.out, refOut)
		}
		want := nixtest.PathInfos(t, ref, "--recursive", refOut)
		got := nixtest.PathInfos(t, local, "--recursive", refOut)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("outputs differ from a local nix-build (-local +hook):\n%s", diff)
		}
		if n := strings.Count(r.stderr, "building '/nix/store/"); n != 25 {
			t.Errorf("%d builds, want 25\n%s", n, r.stderr)
		}
		if !regexp.MustCompile(`building '/nix/store/\S+-leaf-\d\.drv' on 'ssh://root@127\.0\.0\.1\?remote-program=`).MatchString(r.stderr) {
			t.Errorf("nix-build does not name the machine the hook accepted on:\n%s", r.stderr)
		}
		// The build log reaches Nix on fd 4.
		if !strings.Contains(r.stderr, "built leaf 3") {
			t.Errorf("no build log in nix-build's output:\n%s", r.stderr)
		}
		for _, st := range []string{b1, b2} {
			if ds := storeFiles(st, ".drv"); len(ds) > 0 {
				t.Errorf("%s holds .drv files: %v", st, ds)
			}
			// Both builders take builds: the hooks for the ready leaves
			// run at once, and each finds the other machine less loaded.
			if len(storeFiles(st, "-leaf-")) == 0 {
				t.Errorf("%s built no leaf", st)
			}
			nixtest.Verify(t, st)
		}
		nixtest.Verify(t, local)
	})

	t.Run("graph through a scheduler started on demand", func(t *testing.T) {
		// FERRY_SCHEDULER unset: the first hook starts ferry scheduler
		// on the client store's state directory; every hook of the run
		// uses it, so the sessions are its persistent ones, one per
		// slot, instead of one per derivation.
		local := filepath.Join(e.dir, "local-sched")
		stateDir := filepath.Join(local, "nix/var/nix")
		t.Cleanup(func() { stopScheduler(stateDir) })
		b1, b2 := filepath.Join(e.dir, "s1"), filepath.Join(e.dir, "s2")
		before := sessions(e.sshd)
		saved := e.env
		e.env = withoutEnv(saved, "FERRY_SCHEDULER")
		r := e.nixBuild(local, []string{e.machine(e.ferry, b1, "2 1"), e.machine("nix-store", b2, "2 1")}, "-j0", e.expr)
		e.env = saved
		if r.err != nil {
			t.Fatalf("nix-build: %v\n%s", r.err, r.stderr)
		}
		if r.out != refOut {
			t.Fatalf("nix-build through the scheduler gave %q, a local one %q", r.out, refOut)
		}
		if n := sessions(e.sshd) - before; n > 4 || n == 0 {
			slog, _ := os.ReadFile(filepath.Join(stateDir, "ferry-scheduler.log"))
			t.Errorf("%d ssh sessions for 25 builds on 4 slots\nnix-build:\n%s\nscheduler:\n%s", n, r.stderr, slog)
		}
		cmd := exec.Command(e.ferry, "status", "--state-dir", stateDir, "--json")
		cmd.Env = e.env
		out, err := cmd.Output()
		var st struct {
			Machines []struct{ Succeeded uint64 } `json:"machines"`
		}
		if err == nil {
			err = json.Unmarshal(out, &st)
		}
		var built uint64
		for _, m := range st.Machines {
			built += m.Succeeded
		}
		if err != nil || built != 25 {
			t.Errorf("ferry status of the on-demand scheduler: %d builds succeeded, want 25 (%v)\n%s", built, err, out)
		}
		nixtest.Verify(t, local)
	})

	t.Run("decline builds locally", func(t *testing.T) {
		// -j1 and a machine of another system: the hook declines and
		// Nix builds locally.
		local := filepath.Join(t.TempDir(), "local")
		other := filepath.Join(e.dir, "other")
		m := strings.Replace(e.machine(e.ferry, other, "2 1"), " "+e.system+" ", " aarch64-linux ", 1)
		before := sessions(e.sshd)
		r := e.nixBuild(local, []string{m}, "-j1", "-vvvvv", "--arg", "n", "2", "--argstr", "tag", "decline", e.expr)
		if r.err != nil {
			t.Fatalf("nix-build: %v\n%s", r.err, r.stderr)
		}
		if !strings.Contains(r.stderr, "hook reply is 'decline'") || strings.Contains(r.stderr, "hook reply is 'accept'") {
			t.Errorf("the hook did not decline:\n%s", lines(r.stderr, "hook reply"))
		}
		// At Nix's -vvvvv the hook runs at verbosity 6 and shows its
		// chatty "Failed to find a machine" with the machine's table.
		if !strings.Contains(r.stderr, "Failed to find a machine for remote build!") || !strings.Contains(r.stderr, "(aarch64-linux, 2, , )") {
			t.Errorf("no 'Failed to find a machine' message:\n%s", lines(r.stderr, "machine"))
		}
		if _, err := os.Stat(other); !os.IsNotExist(err) || sessions(e.sshd) != before {
			t.Errorf("the other system's machine was connected to: %v", err)
		}
		nixtest.Verify(t, local)
	})

	t.Run("postpone while the slot is held", func(t *testing.T) {
		// -j0 and the only machine's one slot held (Nix's slot lock, from
		// this test): the hook postpones until it is free, then builds.
		local := filepath.Join(t.TempDir(), "local")
		drv := nixtest.Line(t, "nix-instantiate", "--store", local, "--argstr", "system", e.system, "--arg", "n", "1", "--argstr", "tag", "postpone", e.expr)
		line := e.machine(e.ferry, filepath.Join(e.dir, "b1"), "1 1")
		ms, err := machines.Parse(line, e.system)
		if err != nil {
			t.Fatal(err)
		}
		load, err := machines.OpenLoad(filepath.Join(local, "nix/var/nix"))
		if err != nil {
			t.Fatal(err)
		}
		slot, err := load.TryAcquire(ms[0])
		if err != nil || slot == nil {
			t.Fatalf("hold the slot: %v %v", slot, err)
		}
		const hold = 3 * time.Second
		timer := time.AfterFunc(hold, func() { slot.Release() })
		defer timer.Stop()
		r := e.nixBuild(local, []string{line}, "-j0", "-vvvvv", drv)
		slot.Release()
		if r.err != nil {
			t.Fatalf("nix-build: %v\n%s", r.err, lines(r.stderr, "hook"))
		}
		if !strings.Contains(r.stderr, "hook reply is 'postpone'") || !strings.Contains(r.stderr, "hook reply is 'accept'") {
			t.Errorf("the hook did not postpone, then accept:\n%s", lines(r.stderr, "hook reply"))
		}
		if r.took < hold {
			t.Errorf("built in %v while the slot was held for %v", r.took, hold)
		}
		nixtest.Verify(t, local)
	})

	t.Run("dead builder first", func(t *testing.T) {
		// A machine that refuses connections, listed first: the hook says
		// it cannot build there, disables it, and every build goes to
		// the other.
		local := filepath.Join(t.TempDir(), "local")
		good := filepath.Join(e.dir, "g1")
		dead := strings.Replace(e.machine(e.ferry, filepath.Join(e.dir, "dead"), "2 1"), "@127.0.0.1", "@127.0.0.1:1", 1)
		r := e.nixBuild(local, []string{dead, e.machine(e.ferry, good, "2 1")}, "-j0", "--arg", "n", "3", "--argstr", "tag", "dead", e.expr)
		if r.err != nil {
			t.Fatalf("nix-build: %v\n%s", r.err, r.stderr)
		}
		if !strings.Contains(r.stderr, "cannot build on 'ssh://root@127.0.0.1:1?remote-program=") {
			t.Errorf("the dead machine is not reported:\n%s", r.stderr)
		}
		if n := len(regexp.MustCompile(`building '[^']+' on 'ssh://root@127\.0\.0\.1:1\?`).FindAllString(r.stderr, -1)); n != 0 {
			t.Errorf("%d builds went to the dead machine:\n%s", n, r.stderr)
		}
		if len(storeFiles(good, "-root")) != 1 {
			t.Errorf("root was not built on the good machine")
		}
		nixtest.Verify(t, local)
	})

	t.Run("failure", func(t *testing.T) {
		// A failing build: build-remote's message, and Nix's for the
		// hook's exit status; no local fallback.
		local := filepath.Join(t.TempDir(), "local")
		r := e.nixBuild(local, []string{e.machine("nix-store", filepath.Join(e.dir, "b2"), "2 1")}, "-j0", "--arg", "n", "1", "--arg", "fail", "true", e.expr)
		if r.err == nil {
			t.Fatalf("nix-build succeeded with a failing derivation\n%s", r.stderr)
		}
		if !regexp.MustCompile(`error: build of '/nix/store/\S+-bad\.drv' on 'ssh://root@127\.0\.0\.1\?remote-program=nix-store[^']*' failed: .*builder for '/nix/store/\S+-bad\.drv' failed with exit code 3`).MatchString(r.stderr) {
			t.Errorf("no build-remote failure message:\n%s", r.stderr)
		}
		if !regexp.MustCompile(`builder for '/nix/store/\S+-bad\.drv' failed with exit code 1`).MatchString(r.stderr) {
			t.Errorf("Nix does not report the hook's exit status 1:\n%s", r.stderr)
		}
		nixtest.Verify(t, local)
	})
}

// lines are the lines of s that contain word, for failure messages.
func lines(s, word string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
