package build

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"ferry/internal/settings"
	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/store"
)

func TestBuildFailures(t *testing.T) {
	requireSandbox(t)
	wrong := hash.SumString(hash.SHA256, "not what the builder writes")
	tests := []struct {
		name   string
		spec   drvSpec
		set    func(*settings.Settings)
		status store.BuildStatus
		msg    []string
	}{
		{
			name:   "exit code",
			spec:   drvSpec{name: "fails", script: `mkdir $out; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line$i; done; exit 3`},
			status: store.PermanentFailure,
			msg:    []string{"failed with exit code 3;\nlast 10 log lines:\n> line3\n", "> line12"},
		},
		{
			name:   "silent",
			spec:   drvSpec{name: "silent", script: `mkdir $out; echo start; sleep 30`},
			set:    func(s *settings.Settings) { s.MaxSilentTime = time.Second },
			status: store.TimedOut,
			msg:    []string{"timed out after 1 seconds of silence"},
		},
		{
			name:   "timeout",
			spec:   drvSpec{name: "slow", script: `mkdir $out; while true; do echo tick; sleep 0.2; done`},
			set:    func(s *settings.Settings) { s.Timeout = time.Second; s.MaxSilentTime = 10 * time.Second },
			status: store.TimedOut,
			msg:    []string{"timed out after 1 seconds"},
		},
		{
			name:   "log size",
			spec:   drvSpec{name: "chatty", script: `mkdir $out; while true; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done`},
			set:    func(s *settings.Settings) { s.MaxLogSize = 10000 },
			status: store.LogLimitExceeded,
			msg:    []string{"killed after writing more than 10000 bytes of log output"},
		},
		{
			name:   "no output",
			spec:   drvSpec{name: "lazy", script: `true`},
			status: store.OutputRejected,
			msg:    []string{"failed to produce output path for output 'out'"},
		},
		{
			name:   "one of two outputs",
			spec:   drvSpec{name: "half", script: `mkdir $out`, outputs: []string{"out", "dev"}},
			status: store.OutputRejected,
			msg:    []string{"failed to produce output path for output 'dev'"},
		},
		{
			name: "fod mismatch",
			spec: drvSpec{name: "fod-bad", script: `echo hi > $out`,
				fixed: &derivation.Output{Method: storepath.Flat, HashAlgo: hash.SHA256, Hash: wrong}},
			status: store.OutputRejected,
			msg: []string{"hash mismatch in fixed-output derivation '", "':\n  specified: " + wrong.SRI() + "\n     got:    " +
				hash.SumString(hash.SHA256, "hi\n").SRI()},
		},
		{
			name: "fod flat executable",
			spec: drvSpec{name: "fod-exec", script: `echo hi > $out; chmod +x $out`,
				fixed: &derivation.Output{Method: storepath.Flat, HashAlgo: hash.SHA256, Hash: hash.SumString(hash.SHA256, "hi\n")}},
			status: store.OutputRejected,
			msg:    []string{"should be a non-executable regular file"},
		},
		{
			name: "fod builder fails",
			spec: drvSpec{name: "fod-fail", script: `exit 1`,
				fixed: &derivation.Output{Method: storepath.Flat, HashAlgo: hash.SHA256, Hash: wrong}},
			status: store.TransientFailure,
			msg:    []string{"failed with exit code 1"},
		},
		{
			name:   "disallowed reference",
			spec:   drvSpec{name: "selfish", script: `echo $out > $out`, env: map[string]string{"allowedReferences": ""}},
			status: store.Built, // self-references are always allowed
		},
		{
			name:   "wrong platform",
			spec:   drvSpec{name: "alien", script: `true`},
			set:    func(s *settings.Settings) { s.System = "riscv64-linux"; s.ExtraPlatforms = nil },
			status: store.InputRejected,
			msg:    []string{"is required to build"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := openStore(t)
			ctx := context.Background()
			d := makeDrv(t, st, tt.spec)
			dp := drvPathOf(t, st, d)
			s := testSettings()
			if tt.set != nil {
				tt.set(s)
			}
			res, err := Build(ctx, st, dp, d, &Options{Settings: s})
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != tt.status {
				t.Fatalf("status %v, want %v: %s", res.Status, tt.status, res.ErrorMsg)
			}
			for _, m := range tt.msg {
				if !strings.Contains(res.ErrorMsg, m) {
					t.Errorf("message %q lacks %q", res.ErrorMsg, m)
				}
			}
			if tt.status.Success() {
				return
			}
			// Like Nix, a builder that ran to its end counts in
			// timesBuilt even if the build failed; one killed for a limit
			// or never started does not.
			var times uint64
			switch tt.status {
			case store.PermanentFailure, store.TransientFailure, store.OutputRejected:
				times = 1
			}
			if res.TimesBuilt != times || res.BuiltOutputs != nil {
				t.Errorf("result %+v, want timesBuilt %d and no outputs", res, times)
			}
			all, err := st.QueryAllValidPaths(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(all) != 0 {
				t.Errorf("a failed build registered %v", all)
			}
			for _, o := range d.Outputs {
				if _, err := os.Lstat(st.RealPath(o.Path)); err == nil {
					t.Errorf("a failed build left %s", o.Path)
				}
			}
		})
	}
}

func TestMissingInputs(t *testing.T) {
	requireSandbox(t)
	st := openStore(t)
	missingSrc := storepath.Path("/nix/store/00000000000000000000000000000000-gone")
	d := makeDrv(t, st, drvSpec{name: "orphan", script: `mkdir $out`, srcs: []storepath.Path{missingSrc}})
	res, err := Build(context.Background(), st, drvPathOf(t, st, d), d, &Options{Settings: testSettings()})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != store.MiscFailure || !strings.Contains(res.ErrorMsg, string(missingSrc)) {
		t.Errorf("result %+v", res)
	}
}

func TestKeepFailed(t *testing.T) {
	requireSandbox(t)
	st := openStore(t)
	s := testSettings()
	s.KeepFailed = true
	s.BuildDir = t.TempDir()
	d := makeDrv(t, st, drvSpec{name: "keep", script: `echo data > file; exit 1`})
	res, _ := Build(context.Background(), st, drvPathOf(t, st, d), d, &Options{Settings: s})
	if !strings.Contains(res.ErrorMsg, "keeping build directory") {
		t.Fatalf("%+v", res)
	}
	dir := s.BuildDir + "/nix-build-" + drvPathOf(t, st, d).Name() + "-0"
	if b, err := os.ReadFile(dir + "/file"); err != nil || string(b) != "data\n" {
		t.Errorf("kept dir: %q %v", b, err)
	}
}
