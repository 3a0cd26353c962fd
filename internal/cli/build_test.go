package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/nixtest"
	"ferry/internal/sandbox"
)

// TestMain lets the test binary act as the sandbox's init, as cmd/ferry does.
func TestMain(m *testing.M) {
	sandbox.Init()
	code := m.Run()
	nixtest.RemoveFerryBin()
	os.Exit(code)
}

func requireBuilds(t *testing.T) {
	t.Helper()
	_, err := os.Stat("/bin/busybox")
	nixtest.Need(t, err)
	nixtest.Need(t, sandbox.Available())
}

// TestBuildExamples adds the example derivations and builds the chain
// and hello, twice: the second run finds everything valid.
func TestBuildExamples(t *testing.T) {
	requireBuilds(t)
	t.Setenv("NIX_CONFIG", "sandbox-paths = /bin/sh=/bin/busybox")
	t.Setenv("NIX_CONF_DIR", t.TempDir())
	dir := filepath.Join(t.TempDir(), "store")
	ex := filepath.Join("..", "..", "examples")
	drvs := strings.Fields(mustFerry(t, nil, "--store", dir, "derivation", "add",
		filepath.Join(ex, "hello.json"), filepath.Join(ex, "chain-a.json"), filepath.Join(ex, "chain-b.json"), filepath.Join(ex, "chain-c.json")))
	if len(drvs) != 4 {
		t.Fatalf("added %v", drvs)
	}
	hello, chainC := drvs[0], drvs[3]
	out := mustFerry(t, nil, "--store", dir, "build", "-j", "2", chainC, hello)
	lines := strings.Fields(out)
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "-chain-c") || !strings.HasSuffix(lines[1], "-hello") {
		t.Fatalf("printed %q", out)
	}
	msg, err := os.ReadFile(filepath.Join(dir, lines[0], "message"))
	if err != nil || string(msg) != "passed to the builder as a file\n" {
		t.Errorf("chain-c message %q %v", msg, err)
	}
	var res []buildResultJSON
	if err := json.Unmarshal([]byte(mustFerry(t, nil, "--store", dir, "build", "--json", drvs[2])), &res); err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Status != "AlreadyValid" || len(res[0].Outputs) != 2 {
		t.Errorf("json %+v", res)
	}
	refs := mustFerry(t, nil, "--store", dir, "query", "--references", lines[0])
	if strings.Count(refs, "\n") != 2 || !strings.Contains(refs, "-chain-b-lib") {
		t.Errorf("chain-c references %q", refs)
	}
}

func TestBuildFailureExitCodes(t *testing.T) {
	requireBuilds(t)
	t.Setenv("NIX_CONFIG", "sandbox-paths = /bin/sh=/bin/busybox")
	t.Setenv("NIX_CONF_DIR", t.TempDir())
	dir := filepath.Join(t.TempDir(), "store")
	write := func(name, script string) string {
		f := filepath.Join(t.TempDir(), name+".json")
		j := `{"outputs":{"out":{"path":""}},"inputSrcs":[],"inputDrvs":{},"system":"x86_64-linux","builder":"/bin/sh",` +
			`"args":["-c",` + strings.TrimSpace(mustJSON(script)) + `],"env":{"builder":"/bin/sh","name":"` + name + `","out":"","system":"x86_64-linux"}}`
		os.WriteFile(f, []byte(j), 0o644)
		return strings.TrimSpace(mustFerry(t, nil, "--store", dir, "derivation", "add", f))
	}
	fail := write("fails", "echo oops; exit 1")
	slow := write("slow", "sleep 20")
	for _, tt := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{fail}, 100, "failed with exit code 1;\nlast 1 log lines:\n> oops"},
		{[]string{"--max-silent-time", "1", slow}, 101, "timed out after 1 seconds of silence"},
		{[]string{"--timeout", "1", slow}, 101, "timed out after 1 seconds"},
	} {
		_, errs, code := ferry(t, nil, append([]string{"--store", dir, "build"}, tt.args...)...)
		if code != tt.code || !strings.Contains(errs, tt.msg) {
			t.Errorf("%v: exit %d, stderr %q", tt.args, code, errs)
		}
	}
}

func mustJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
