package serve

// Interop tests of the post-build hook: each scenario runs once with real
// Nix 2.8 and once with ferry and requires the same outcome (exit status,
// store contents, the hook's lines in the log, what the hook saw).
// Helpers start with "hk".

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"ferry/internal/nixtest"
	"ferry/internal/sshtest"
	"ferry/nix/storepath"
	"ferry/store"
)

func TestInteropPostBuildHook(t *testing.T) {
	nixtest.RequireNix(t)
	nixtest.Require(t, "ssh", "go")
	ferry := ferryBin(t)
	system := strings.Trim(nixtest.Line(t, "nix-instantiate", "--eval", "--expr", "builtins.currentSystem"), `"`)
	e := &ibEnv{ferry: ferry, system: system}
	// Nix 2.8.0 passes an empty OUT_PATHS (NixOS/nix#6446, fixed in
	// 2.8.1); ferry passes the outputs, as 2.8.1 does.
	version := nixtest.Line(t, "nix-store", "--version")
	nixEmptyOutPaths := strings.HasSuffix(version, " 2.8.0")
	for _, exit := range []int{0, 3} {
		name := map[int]string{0: "ok", 3: "failing"}[exit]
		t.Run("local/"+name, func(t *testing.T) { t.Parallel(); hkLocal(t, e, exit, nixEmptyOutPaths) })
		t.Run("builders-localhost/"+name, func(t *testing.T) {
			t.Parallel()
			hkBuilders(t, e, nil, exit, nixEmptyOutPaths)
		})
		t.Run("serve-protocol/"+name, func(t *testing.T) { t.Parallel(); hkServe(t, e, exit, nixEmptyOutPaths) })
	}
	t.Run("builders-sshd/ok", func(t *testing.T) {
		t.Parallel()
		hkBuilders(t, e, sshtest.Start(t, nil), 0, nixEmptyOutPaths)
	})
}

// hkHook writes a hook that records DRV_PATH and OUT_PATHS, writes a line
// to stdout, one to stderr and a last one without a newline, and exits
// with exit. It returns the hook's path and the record's.
func hkHook(t *testing.T, exit int) (hook, record string) {
	t.Helper()
	d := t.TempDir()
	hook, record = filepath.Join(d, "hook.sh"), filepath.Join(d, "record")
	script := fmt.Sprintf(`#!/bin/sh
{ echo "DRV_PATH=$DRV_PATH"; echo "OUT_PATHS=$OUT_PATHS"; } >> %s
echo "hook stdout line"
echo "hook stderr line" >&2
printf 'partial line'
exit %d
`, record, exit)
	if err := nixtest.WriteExecutable(hook, []byte(script)); err != nil {
		t.Fatal(err)
	}
	return hook, record
}

// hkConfig is nixtest's NIX_CONFIG with the hook set.
func hkConfig(hook string) string {
	return "NIX_CONFIG=" + nixtest.Config + "post-build-hook = " + hook + "\n"
}

// hkExpr is a derivation with two outputs, so that OUT_PATHS has two.
func hkExpr(t *testing.T, e *ibEnv, tag string) string {
	return ibWriteFile(t, fmt.Sprintf(`derivation {
  name = "hk-%s"; system = %q; builder = "/bin/sh";
  outputs = [ "out" "doc" ];
  args = [ "-c" "echo building hk; echo out > $out; echo doc > $doc" ];
}`, tag, e.system))
}

// hkLines are the lines of a log that the hook produced: "running
// post-build-hook ..." (Nix's activity), each "post-build-hook: ..." line
// and an empty line right after one (Nix's last line without a newline).
func hkLines(log string) []string {
	var out []string
	prev := false
	for _, l := range strings.Split(log, "\n") {
		switch {
		case strings.HasPrefix(l, "running post-build-hook"), strings.HasPrefix(l, "post-build-hook: "):
			out = append(out, l)
			prev = strings.HasPrefix(l, "post-build-hook: ")
		case l == "" && prev:
			out = append(out, l)
			prev = false
		default:
			prev = false
		}
	}
	return out
}

// hkErrors are the "error: ..." lines of a log.
func hkErrors(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.HasPrefix(l, "error: ") {
			out = append(out, l)
		}
	}
	return out
}

// hkRecord reads what the hook recorded; "" if it never ran.
func hkRecord(t *testing.T, record string) string {
	t.Helper()
	b, err := os.ReadFile(record)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// hkWantRecord is what a hook run for drv with outputs outs records, on
// Nix's side (OUT_PATHS empty with Nix 2.8.0) or ferry's.
func hkWantRecord(drv string, outs []string, nix, nixEmptyOutPaths bool) string {
	o := strings.Join(outs, " ")
	if nix && nixEmptyOutPaths {
		o = ""
	}
	return "DRV_PATH=" + drv + "\nOUT_PATHS=" + o + "\n"
}

// hkOutputs are the output paths of drv in st, sorted.
func hkOutputs(t *testing.T, st, drv string) []string {
	t.Helper()
	outs := strings.Fields(ibMust(t, nil, "nix-store", "--store", st, "-q", "--outputs", drv))
	if len(outs) != 2 {
		t.Fatalf("outputs of %s: %q", drv, outs)
	}
	for _, p := range outs {
		ibParse(t, p)
	}
	return hkSort(outs)
}

func hkSort(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}

// hkValid reports which of paths are valid in the store st.
func hkValid(t *testing.T, st string, paths []string) []string {
	t.Helper()
	var valid []string
	for _, p := range paths {
		if _, _, err := ibRun(t, nil, "nix-store", "--store", st, "--check-validity", p); err == nil {
			valid = append(valid, p)
		}
	}
	return valid
}

type hkOutcome struct {
	exit   int
	stderr string
	record string
	valid  []string
	infos  map[string]nixtest.PathInfo
}

func hkExit(err error) int {
	if err == nil {
		return 0
	}
	if x, ok := err.(*exec.ExitError); ok {
		return x.ExitCode()
	}
	return -1
}

// hkLocal: nix-build --store N against ferry build --store F, each with
// post-build-hook in NIX_CONFIG. A failing hook fails both with exit 1
// and Nix's message, the outputs stay valid, and the next build is a
// no-op that does not run the hook again.
func hkLocal(t *testing.T, e *ibEnv, exit int, nixEmptyOutPaths bool) {
	expr := hkExpr(t, e, fmt.Sprintf("local-%d", exit))
	results := map[string]*hkOutcome{}
	var drv string
	var outs []string
	for _, side := range []string{"nix", "ferry"} {
		hook, record := hkHook(t, exit)
		st := t.TempDir()
		env := []string{hkConfig(hook)}
		d := ibMust(t, nil, "nix-instantiate", "--store", st, expr)
		if drv != "" && d != drv {
			t.Fatalf("drv paths differ: %s, %s", drv, d)
		}
		drv = d
		outs = hkOutputs(t, st, drv)
		build := func() (string, string, error) {
			if side == "nix" {
				return ibRun(t, env, "nix-build", "--store", st, "--no-out-link", drv)
			}
			return ibRun(t, env, e.ferry, "build", "--store", st, drv)
		}
		stdout, stderr, err := build()
		o := &hkOutcome{exit: hkExit(err), stderr: stderr, record: hkRecord(t, record), valid: hkValid(t, st, outs)}
		if len(o.valid) == len(outs) {
			o.infos = nixtest.PathInfos(t, st, outs...)
		}
		// nix-build prints the out output, ferry build every output.
		if err == nil && !slices.Contains(strings.Fields(stdout), outs[len(outs)-1]) && !slices.Contains(strings.Fields(stdout), outs[0]) {
			t.Errorf("%s printed %q, want output paths %q", side, stdout, outs)
		}
		if err != nil && stdout != "" {
			t.Errorf("%s printed %q after a failing hook", side, stdout)
		}
		results[side] = o
		// Again: the outputs are valid, nothing is built, the hook
		// doesn't run, and the build succeeds.
		if _, stderr, err := build(); err != nil {
			t.Errorf("%s: second build: %v\n%s", side, err, stderr)
		}
		if got := hkRecord(t, record); got != o.record {
			t.Errorf("%s: the hook ran again for valid outputs: %q", side, got)
		}
		nixtest.Verify(t, st)
	}
	hkCompare(t, results, drv, outs, exit, nixEmptyOutPaths)
	nix, ferry := results["nix"], results["ferry"]
	// Locally, Nix logs the activity first.
	if l := hkLines(nix.stderr); len(l) == 0 || l[0] != "running post-build-hook '"+hkHookOf(nix.stderr)+"'..." {
		t.Errorf("nix's hook lines %q", l)
	}
	wantExit := 0
	if exit != 0 {
		wantExit = 1
	}
	if nix.exit != wantExit || ferry.exit != wantExit {
		t.Errorf("exit: nix %d, ferry %d, want %d", nix.exit, ferry.exit, wantExit)
	}
	if exit != 0 {
		// Nix's one error line, with the hook's path; the paths differ
		// between the sides, so compare the shapes.
		for side, o := range results {
			errs := hkErrors(o.stderr)
			want := fmt.Sprintf("error: program '%s' failed with exit code %d", hkHookOf(o.stderr), exit)
			if len(errs) != 1 || errs[0] != want {
				t.Errorf("%s's errors %q, want [%q]\n%s", side, errs, want, o.stderr)
			}
		}
	}
}

// hkHookOf finds the hook's path in a log ("... '/tmp/.../hook.sh' ...");
// in a log without one, a string no log has.
func hkHookOf(log string) string {
	i := strings.Index(log, "/hook.sh")
	if i < 0 {
		return "\x00no hook path"
	}
	j := strings.LastIndex(log[:i], "'")
	return log[j+1 : i+len("/hook.sh")]
}

// hkCompare requires the same outcome on both sides: exit status, the
// outputs valid (they stay registered when the hook fails) with the same
// path infos, the hook's lines with its path replaced, and what it saw.
func hkCompare(t *testing.T, results map[string]*hkOutcome, drv string, outs []string, exit int, nixEmptyOutPaths bool) {
	t.Helper()
	nix, ferry := results["nix"], results["ferry"]
	if nix.exit != ferry.exit {
		t.Errorf("exit status: nix %d, ferry %d\n nix:\n%s\n ferry:\n%s", nix.exit, ferry.exit, nix.stderr, ferry.stderr)
	}
	for side, o := range results {
		if !reflect.DeepEqual(o.valid, outs) {
			t.Errorf("%s: valid outputs %q, want %q", side, o.valid, outs)
		}
		if want := hkWantRecord(drv, outs, side == "nix", nixEmptyOutPaths); o.record != want {
			t.Errorf("%s: the hook recorded %q, want %q", side, o.record, want)
		}
	}
	if !reflect.DeepEqual(nix.infos, ferry.infos) {
		t.Errorf("path infos differ:\n nix   %+v\n ferry %+v", nix.infos, ferry.infos)
	}
	norm := func(o *hkOutcome) []string {
		var l []string
		for _, s := range hkLines(o.stderr) {
			l = append(l, strings.ReplaceAll(s, hkHookOf(o.stderr), "HOOK"))
		}
		return l
	}
	nl, fl := norm(nix), norm(ferry)
	if !reflect.DeepEqual(nl, fl) {
		t.Errorf("hook lines differ:\n nix   %q\n ferry %q\n nix's log:\n%s\n ferry's log:\n%s", nl, fl, nix.stderr, ferry.stderr)
	}
	for _, want := range []string{"post-build-hook: hook stdout line", "post-build-hook: hook stderr line", "post-build-hook: partial line"} {
		if !slices.Contains(nl, want) {
			t.Errorf("nix's hook lines %q lack %q", nl, want)
		}
	}
}

// hkWrapper writes a remote program that sets post-build-hook in the
// remote side's NIX_CONFIG and runs prog (nix-store or ferry).
func hkWrapper(t *testing.T, prog, hook string) string {
	t.Helper()
	w := filepath.Join(t.TempDir(), "remote-program")
	script := fmt.Sprintf("#!/bin/sh\nNIX_CONFIG='%spost-build-hook = %s\n'\nexport NIX_CONFIG\nexec %s \"$@\"\n",
		nixtest.Config, hook, prog)
	if err := nixtest.WriteExecutable(w, []byte(script)); err != nil {
		t.Fatal(err)
	}
	return w
}

// hkBuilders: nix-build --max-jobs 0 with one ssh builder, reached as
// ssh://localhost (no sshd: Nix runs the remote program itself) or, with
// s, over a real sshd; the remote program sets post-build-hook on the
// remote side and runs nix-store or ferry. The derivation arrives as a
// BuildDerivation; the hook runs on the remote with DRV_PATH the .drv path
// the client sent. A failing hook fails the remote build (MiscFailure),
// so the client's build fails and its outputs are not copied back, while
// on the remote they stay valid.
func hkBuilders(t *testing.T, e *ibEnv, s *sshtest.Server, exit int, nixEmptyOutPaths bool) {
	expr := hkExpr(t, e, fmt.Sprintf("builders-%d-%v", exit, s != nil))
	results := map[string]*hkOutcome{}
	var drv string
	var outs []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for side, prog := range map[string]string{"nix": "nix-store", "ferry": e.ferry} {
		hook, record := hkHook(t, exit)
		local, remote := t.TempDir(), t.TempDir()
		d := ibMust(t, nil, "nix-instantiate", "--store", local, expr)
		o := hkOutputs(t, local, d)
		drv, outs = d, o
		uri := "ssh://localhost?remote-program=" + hkWrapper(t, prog, hook) + "&remote-store=" + remote
		machine := uri + " " + e.system
		var env []string
		if s != nil {
			uri = s.URI() + "?remote-program=" + hkWrapper(t, prog, hook) + "&remote-store=" + remote
			machine = uri + " " + e.system + " " + s.KeyFile + " 1 1"
			env = s.Env()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, stderr, err := ibRun(t, env, "nix-build", "--store", local, "--no-out-link", "--max-jobs", "0", "--builders", machine, d)
			oc := &hkOutcome{exit: hkExit(err), stderr: strings.ReplaceAll(stderr, uri, "URI"), record: hkRecord(t, record), valid: hkValid(t, remote, o)}
			if len(oc.valid) == len(o) {
				oc.infos = nixtest.PathInfos(t, remote, o...)
			}
			// The client has the outputs only after a successful hook.
			clientValid := hkValid(t, local, o)
			if (exit == 0 && len(clientValid) != len(o)) || (exit != 0 && len(clientValid) != 0) {
				t.Errorf("%s: client's valid outputs %q after a hook exiting %d\n%s", side, clientValid, exit, stderr)
			}
			nixtest.Verify(t, remote)
			mu.Lock()
			results[side] = oc
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	hkCompare(t, results, drv, outs, exit, nixEmptyOutPaths)
	nix, ferry := results["nix"], results["ferry"]
	// A serve session logs at error verbosity: the hook's lines, not the
	// "running post-build-hook" activity.
	if l := hkLines(nix.stderr); len(l) == 0 || strings.HasPrefix(l[0], "running") {
		t.Errorf("nix's hook lines over ssh %q", l)
	}
	if exit != 0 {
		// The client's errors: the remote's message, then its own.
		ne, fe := hkErrors(nix.stderr), hkErrors(ferry.stderr)
		for i := range ne {
			ne[i] = strings.ReplaceAll(ne[i], hkHookOf(nix.stderr), "HOOK")
		}
		for i := range fe {
			fe[i] = strings.ReplaceAll(fe[i], hkHookOf(ferry.stderr), "HOOK")
		}
		want := fmt.Sprintf("error: build of '%s' on 'URI' failed: error: program 'HOOK' failed with exit code %d", drv, exit)
		if len(ne) == 0 || ne[0] != want {
			t.Errorf("nix's errors %q, want first %q", ne, want)
		}
		if !reflect.DeepEqual(ne, fe) {
			t.Errorf("client errors differ:\n nix   %q\n ferry %q", ne, fe)
		}
	}
}

// hkServe: one serve session per side (nix-store --serve --write and
// ferry --serve --write, post-build-hook in their NIX_CONFIG): a
// BuildDerivation of an in-memory derivation, then BuildPaths of a .drv
// imported into the store. The replies must be the same but for the
// timestamps and the hook's path; the hook's lines are on stderr; the
// outputs are valid even when the hook failed.
func hkServe(t *testing.T, e *ibEnv, exit int, nixEmptyOutPaths bool) {
	mem := ibDrv(t, e, fmt.Sprintf("hk-serve-mem-%d", exit), nil, "echo in memory > $out; echo dev > $dev", "out", "dev")
	memDrv, err := mem.Path(dir)
	if err != nil {
		t.Fatal(err)
	}
	var memOuts []string
	for _, p := range mem.OutputPaths() {
		memOuts = append(memOuts, string(p))
	}
	memOuts = hkSort(memOuts)
	src := t.TempDir()
	topDrv := ibMust(t, nil, "nix-instantiate", "--store", src, hkExpr(t, e, fmt.Sprintf("serve-paths-%d", exit)))
	topOuts := hkOutputs(t, src, topDrv)
	drvStream := ibExport(t, src, topDrv)

	type reply struct {
		res      *BuildResult
		paths    *BuildPathsReply
		stderr   string
		record   string
		valid    []string
		hookPath string
	}
	replies := map[string]*reply{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, side := range []string{"nix", "ferry"} {
		hook, record := hkHook(t, exit)
		dst := t.TempDir()
		cmd := ibNixCmd(t, dst)
		if side == "ferry" {
			cmd = ibFerryCmd(t, e, dst)
		}
		cmd.Env = append(cmd.Env, hkConfig(hook))
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := ibStart(t, cmd)
			c.handshake(Version)
			r := &reply{hookPath: hook}
			r.res = c.buildDerivation(Version, mem, &store.BuildSettings{})
			c.importPaths(drvStream)
			WriteCommand(c.w, CmdBuildPaths)
			WriteBuildPaths(c.w, Version, []DerivedPath{{Path: ibParse(t, topDrv), Outputs: []string{"out", "doc"}}}, &store.BuildSettings{})
			c.flush()
			var err error
			if r.paths, err = ReadBuildPathsReply(c.r); err != nil {
				c.fatal("build paths: %v", err)
			}
			var all []storepath.Path
			for _, p := range append(append([]string(nil), memOuts...), topOuts...) {
				all = append(all, ibParse(t, p))
			}
			for _, p := range c.queryValid(false, false, all...) {
				r.valid = append(r.valid, string(p))
			}
			c.close()
			r.stderr = c.stderr.String()
			r.record = hkRecord(t, record)
			nixtest.Verify(t, dst)
			mu.Lock()
			replies[side] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	nix, ferry := replies["nix"], replies["ferry"]
	for side, r := range replies {
		// Both builds ran the hook, in order, and their outputs are
		// valid whatever the hook did.
		want := hkWantRecord(string(memDrv), memOuts, side == "nix", nixEmptyOutPaths) +
			hkWantRecord(topDrv, topOuts, side == "nix", nixEmptyOutPaths)
		if r.record != want {
			t.Errorf("%s: the hook recorded %q, want %q", side, r.record, want)
		}
		if wantValid := hkSort(append(append([]string(nil), memOuts...), topOuts...)); !reflect.DeepEqual(hkSort(r.valid), wantValid) {
			t.Errorf("%s: valid %q, want %q", side, r.valid, wantValid)
		}
		r.res.StartTime, r.res.StopTime = 0, 0
		r.res.ErrorMsg = strings.ReplaceAll(r.res.ErrorMsg, r.hookPath, "HOOK")
		r.paths.Message = strings.ReplaceAll(r.paths.Message, r.hookPath, "HOOK")
	}
	if exit == 0 {
		if nix.res.Status != store.Built || nix.paths.Status != 0 {
			t.Errorf("nix: %+v, %+v", nix.res, nix.paths)
		}
	} else {
		red := "\x1b[31;1merror:\x1b[0m "
		want := fmt.Sprintf("program 'HOOK' failed with exit code %d", exit)
		if nix.res.Status != store.MiscFailure || nix.res.ErrorMsg != red+want || nix.res.TimesBuilt != 0 || len(nix.res.BuiltOutputs) != 0 {
			t.Errorf("nix's BuildDerivation result %+v, want MiscFailure %q", nix.res, red+want)
		}
		if nix.paths.Status != 1 || nix.paths.Message != red+want {
			t.Errorf("nix's BuildPaths reply %+v, want 1 %q", nix.paths, red+want)
		}
	}
	if !reflect.DeepEqual(nix.res, ferry.res) {
		t.Errorf("BuildDerivation results differ:\n nix   %+v\n ferry %+v", nix.res, ferry.res)
	}
	if !reflect.DeepEqual(nix.paths, ferry.paths) {
		t.Errorf("BuildPaths replies differ:\n nix   %+v\n ferry %+v", nix.paths, ferry.paths)
	}
	norm := func(r *reply) []string {
		var l []string
		for _, s := range hkLines(r.stderr) {
			l = append(l, strings.ReplaceAll(s, r.hookPath, "HOOK"))
		}
		return l
	}
	if nl, fl := norm(nix), norm(ferry); !reflect.DeepEqual(nl, fl) || len(nl) != 8 {
		t.Errorf("hook lines on stderr (want 4 per build):\n nix   %q\n ferry %q", nl, fl)
	}
}
