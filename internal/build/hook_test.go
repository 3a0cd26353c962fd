package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"ferry/internal/nixtest"
	"ferry/nix/storepath"
	"ferry/store"
)

// writeHook writes an executable script into a new directory and returns
// its path and the directory.
func writeHook(t *testing.T, script string) (hook, dir string) {
	t.Helper()
	dir = t.TempDir()
	hook = filepath.Join(dir, "hook.sh")
	if err := nixtest.WriteExecutable(hook, []byte(script)); err != nil {
		t.Fatal(err)
	}
	return hook, dir
}

// unsetenv removes k for the test, restoring it afterwards.
func unsetenv(t *testing.T, k string) {
	t.Setenv(k, "")
	os.Unsetenv(k)
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

func TestPostBuildHook(t *testing.T) {
	requireSandbox(t)
	unsetenv(t, "NIX_CONFIG")
	unsetenv(t, "DRV_PATH")
	t.Setenv("OUT_PATHS", "kept from the caller")
	t.Setenv("HOOK_TEST_VAR", "inherited")
	hook, dir := writeHook(t, `#!/bin/sh
echo "$DRV_PATH" >> "$(dirname "$0")/drv"
echo "$OUT_PATHS" > "$(dirname "$0")/outs"
printf '%s' "$NIX_CONFIG" > "$(dirname "$0")/config"
echo "$HOOK_TEST_VAR" > "$(dirname "$0")/var"
echo one
echo two >&2
printf 'three'
`)
	st := openStore(t)
	ctx := context.Background()
	d := makeDrv(t, st, drvSpec{name: "hooked", outputs: []string{"out", "dev"}, script: `echo built; echo a > $out; echo b > $dev`})
	dp := drvPathOf(t, st, d)
	s := testSettings()
	s.PostBuildHook = hook
	var log bytes.Buffer
	res, err := Build(ctx, st, dp, d, &Options{Settings: s, Log: &log, InMemory: true})
	if err != nil || res.Status != store.Built || len(res.BuiltOutputs) != 2 {
		t.Fatalf("build: %+v %v\n%s", res, err, log.String())
	}
	want := fmt.Sprintf("built\nrunning post-build-hook '%s'...\npost-build-hook: one\npost-build-hook: two\npost-build-hook: three\n\n", hook)
	if log.String() != want {
		t.Errorf("log %q, want %q", log.String(), want)
	}
	if got := readFile(t, filepath.Join(dir, "drv")); got != string(dp)+"\n" {
		t.Errorf("DRV_PATH %q, want %s", got, dp)
	}
	// Nix adds OUT_PATHS only where the environment has none.
	if got := readFile(t, filepath.Join(dir, "outs")); got != "kept from the caller\n" {
		t.Errorf("OUT_PATHS %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "config")); got != s.KeyValue() || !strings.Contains(got, "post-build-hook = "+hook+"\n") {
		t.Errorf("NIX_CONFIG %q, want %q", got, s.KeyValue())
	}
	if got := readFile(t, filepath.Join(dir, "var")); got != "inherited\n" {
		t.Errorf("the caller's environment: %q", got)
	}

	// Built outputs again: already valid, no hook.
	log.Reset()
	res, err = Build(ctx, st, dp, d, &Options{Settings: s, Log: &log})
	if err != nil || res.Status != store.AlreadyValid || log.Len() != 0 {
		t.Fatalf("second build %+v %v %q", res, err, log.String())
	}
	if got := readFile(t, filepath.Join(dir, "drv")); got != string(dp)+"\n" {
		t.Errorf("the hook ran for valid outputs: %q", got)
	}
}

func TestPostBuildHookOutPaths(t *testing.T) {
	requireSandbox(t)
	unsetenv(t, "OUT_PATHS")
	hook, dir := writeHook(t, "#!/bin/sh\necho \"$OUT_PATHS\" > \"$(dirname \"$0\")/outs\"\n")
	st := openStore(t)
	d := makeDrv(t, st, drvSpec{name: "outs", outputs: []string{"out", "bin", "lib"}, script: `echo > $out; echo > $bin; echo > $lib`})
	s := testSettings()
	s.PostBuildHook = hook
	res, err := Build(context.Background(), st, drvPathOf(t, st, d), d, &Options{Settings: s})
	if err != nil || res.Status != store.Built {
		t.Fatalf("build: %+v %v", res, err)
	}
	var paths []string
	for _, p := range d.OutputPaths() {
		paths = append(paths, string(p))
	}
	if got, want := readFile(t, filepath.Join(dir, "outs")), strings.Join(sortedStrings(paths), " ")+"\n"; got != want {
		t.Errorf("OUT_PATHS %q, want %q (sorted, space-separated)", got, want)
	}
}

func sortedStrings(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}

func TestPostBuildHookFailure(t *testing.T) {
	requireSandbox(t)
	missing := filepath.Join(t.TempDir(), "no-such-hook")
	noShebang, _ := writeHook(t, "echo no shebang line\nexit 0\n")
	failing, _ := writeHook(t, "#!/bin/sh\necho failing now\nexit 3\n")
	killed, _ := writeHook(t, "#!/bin/sh\nkill -9 $$\n")
	tests := []struct {
		name, hook string
		quiet      bool
		log        string // after the builder's output
		msg        string // "" for success
	}{
		{"exit code", failing, false,
			"running post-build-hook '" + failing + "'...\npost-build-hook: failing now\n",
			"program '" + failing + "' failed with exit code 3"},
		{"quiet", failing, true, "post-build-hook: failing now\n",
			"program '" + failing + "' failed with exit code 3"},
		{"signal", killed, true, "", "program '" + killed + "' failed due to signal 9 (Killed)"},
		{"missing", missing, true,
			"post-build-hook: error: executing '" + missing + "': No such file or directory\n",
			"program '" + missing + "' failed with exit code 1"},
		{"not on PATH", "ferry-no-such-hook", true,
			"post-build-hook: error: executing 'ferry-no-such-hook': No such file or directory\n",
			"program 'ferry-no-such-hook' failed with exit code 1"},
		// execvp runs a script without #! with /bin/sh.
		{"no shebang", noShebang, true, "post-build-hook: no shebang line\n", ""},
		// A name without a slash is looked up on PATH.
		{"on PATH", "true", true, "", ""},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := openStore(t)
			ctx := context.Background()
			d := makeDrv(t, st, drvSpec{name: fmt.Sprintf("hookfail%d", i), script: `echo built; echo > $out`})
			dp := drvPathOf(t, st, d)
			s := testSettings()
			s.PostBuildHook = tc.hook
			var log bytes.Buffer
			opts := &Options{Settings: s, Log: &log}
			if tc.quiet {
				opts.Log = QuietLog(&log)
			}
			res, err := Build(ctx, st, dp, d, opts)
			if got := strings.TrimPrefix(log.String(), "built\n"); got != tc.log {
				t.Errorf("log %q, want %q", got, tc.log)
			}
			out := d.OutputPaths()["out"]
			// The outputs were registered before the hook ran.
			if ok, err := st.IsValidPath(ctx, out); err != nil || !ok {
				t.Errorf("output valid: %v %v", ok, err)
			}
			if tc.msg == "" {
				if err != nil || res.Status != store.Built || res.BuiltOutputs["out"] != out {
					t.Errorf("result %+v %v", res, err)
				}
				return
			}
			var he *HookError
			if !errors.As(err, &he) || he.Msg != tc.msg || he.Hook != tc.hook {
				t.Fatalf("error %#v, want a HookError %q", err, tc.msg)
			}
			if res.Status != store.MiscFailure || res.ErrorMsg != tc.msg || res.BuiltOutputs != nil {
				t.Errorf("result %+v", res)
			}
		})
	}
}

// A failing hook stops the graph as Nix's worker stops: the derivation
// that needs the hooked one is not built.
func TestPostBuildHookStopsGraph(t *testing.T) {
	requireSandbox(t)
	hook, dir := writeHook(t, "#!/bin/sh\necho \"$DRV_PATH\" >> \"$(dirname \"$0\")/ran\"\nexit 1\n")
	st := openStore(t)
	ctx := context.Background()
	dep := makeDrv(t, st, drvSpec{name: "hook-dep", script: `echo > $out`})
	depPath := addDrv(t, st, dep)
	top := makeDrv(t, st, drvSpec{name: "hook-top", script: `cat ` + string(dep.OutputPaths()["out"]) + ` > $out`,
		inputs: map[storepath.Path][]string{depPath: {"out"}}})
	topPath := addDrv(t, st, top)
	s := testSettings()
	s.PostBuildHook = hook
	results, err := BuildGraph(ctx, st, []storepath.Path{topPath}, 2, &Options{Settings: s})
	var he *HookError
	if !errors.As(err, &he) || he.Msg != "program '"+hook+"' failed with exit code 1" {
		t.Fatalf("error %v", err)
	}
	if r := results[depPath]; r == nil || r.Status != store.MiscFailure {
		t.Errorf("dependency's result %+v", r)
	}
	if ok, _ := st.IsValidPath(ctx, top.OutputPaths()["out"]); ok {
		t.Errorf("the top derivation was built after the hook failed")
	}
	if got := readFile(t, filepath.Join(dir, "ran")); got != string(depPath)+"\n" {
		t.Errorf("the hook ran for %q", got)
	}
}

func TestNoPostBuildHook(t *testing.T) {
	requireSandbox(t)
	st := openStore(t)
	d := makeDrv(t, st, drvSpec{name: "nohook", script: `echo built; echo > $out`})
	var log bytes.Buffer
	res, err := Build(context.Background(), st, drvPathOf(t, st, d), d, &Options{Settings: testSettings(), Log: &log})
	if err != nil || res.Status != store.Built || log.String() != "built\n" {
		t.Errorf("%+v %v %q", res, err, log.String())
	}
}

// TestPostBuildHookUnderLocks: the hook runs while the build holds its
// outputs' path locks, as Nix's buildDone runs it before unlocking: a
// flock of the output's lock file from the hook fails.
func TestPostBuildHookUnderLocks(t *testing.T) {
	requireSandbox(t)
	nixtest.Require(t, "flock")
	st := openStore(t)
	d := makeDrv(t, st, drvSpec{name: "locked-hook", script: `echo > $out`})
	lockFile := st.RealPath(d.OutputPaths()["out"]) + ".lock"
	hook, dir := writeHook(t, fmt.Sprintf("#!/bin/sh\nif flock -n %q true; then echo free; else echo held; fi > \"$(dirname \"$0\")/lock\"\n", lockFile))
	s := testSettings()
	s.PostBuildHook = hook
	res, err := Build(context.Background(), st, drvPathOf(t, st, d), d, &Options{Settings: s})
	if err != nil || res.Status != store.Built {
		t.Fatalf("build: %+v %v", res, err)
	}
	if got := readFile(t, filepath.Join(dir, "lock")); got != "held\n" {
		t.Errorf("the output's lock was %q while the hook ran, want held", got)
	}
}
