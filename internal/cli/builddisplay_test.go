package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"ferry/internal/nixtest"
)

// TestBuildDisplayTerminal runs the real ferry build --builders in a real
// terminal (tmux) on two builders (ssh://localhost: ferry serve and
// nix-store --serve, no sshd). While builds run, the bottom of the screen
// shows the counts and one line per machine with its running builds;
// when they end, a summary line and the output path remain, and the
// prefixed build logs stand above.
func TestBuildDisplayTerminal(t *testing.T) {
	nixtest.RequireNix(t)
	nixtest.Require(t, "tmux")
	requireBusybox(t)
	dir := t.TempDir()
	expr := filepath.Join(dir, "slow.nix")
	os.WriteFile(expr, []byte(`let
  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  leaves = builtins.genList (i: mk "slowleaf-${toString i}" "echo leaf ${toString i} says hello; sleep 3; echo ${toString i} > $out") 4;
in mk "slowtop" "mkdir $out; cat ${builtins.concatStringsSep " " (map toString leaves)} > $out/all"
`), 0o644)
	env := nixtest.Env(filepath.Join(dir, "env"))
	local := filepath.Join(dir, "local")
	drv := strings.TrimSpace(string(runIn(t, env, "nix-instantiate", "--store", local, expr)))
	ferryBin := nixtest.FerryBin(t)
	builders := "ssh://localhost?remote-program=" + ferryBin + "&remote-store=" + filepath.Join(dir, "b1") + " - - 2 1;" +
		"ssh://localhost?remote-program=nix-store&remote-store=" + filepath.Join(dir, "b2") + " - - 2 1"
	var script strings.Builder
	for _, kv := range env {
		script.WriteString("export " + shellQuote(kv) + "\n")
	}
	script.WriteString(shellQuote(ferryBin) + " --store " + shellQuote(local) + " build -j 0 --builders " + shellQuote(builders) + " " + drv + "\necho exit=$?\nsleep 60\n")
	sh := filepath.Join(dir, "run.sh")
	nixtest.WriteExecutable(sh, []byte(script.String()))
	capture := tmuxSession(t, "display", 120, "sh "+sh)

	running := regexp.MustCompile(`^\[0/5 done, 4 running, 1 queued, .* in flight, .* sent\] \d+s$`)
	machine := regexp.MustCompile(`^  localhost#[12]: slowleaf-\d \(\d+s\), slowleaf-\d \(\d+s\)$`)
	var screen string
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		screen = capture()
		ls := nonEmptyLines(screen)
		if len(ls) >= 3 && running.MatchString(ls[len(ls)-3]) && machine.MatchString(ls[len(ls)-2]) && machine.MatchString(ls[len(ls)-1]) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	ls := nonEmptyLines(screen)
	if len(ls) < 3 || !running.MatchString(ls[len(ls)-3]) || !machine.MatchString(ls[len(ls)-1]) {
		t.Fatalf("no live display of 4 running builds on 2 machines:\n%s", screen)
	}
	for time.Now().Before(deadline) {
		screen = capture()
		if strings.Contains(screen, "exit=") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	ls = nonEmptyLines(screen)
	if len(ls) < 3 || ls[len(ls)-1] != "exit=0" || !strings.HasSuffix(ls[len(ls)-2], "-slowtop") ||
		!regexp.MustCompile(`^5 of 5 derivations done in [0-9.]+s, .* sent$`).MatchString(ls[len(ls)-3]) {
		t.Errorf("the screen after the build does not end with the summary and the output:\n%s", screen)
	}
	if !regexp.MustCompile(`(?m)^slowleaf-\d@localhost#[12]> leaf \d says hello$`).MatchString(screen) {
		t.Errorf("no prefixed build log above the display:\n%s", screen)
	}
	if strings.Contains(screen, "running,") {
		t.Errorf("the live block was left on the screen:\n%s", screen)
	}
}

func runIn(t *testing.T, env []string, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}
