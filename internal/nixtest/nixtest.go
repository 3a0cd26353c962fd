// Package nixtest runs the real Nix 2.8 tools from tests, against temporary
// stores only. It never touches the machine's own /nix.
//
// Interop tests call Require first. Outside CI a missing tool skips the test;
// with CI=true it fails it, so an interop test can never pass by not running.
package nixtest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Config is the nix.conf text every Nix process started by this package
// gets: no substituters, no build users, busybox as the sandbox shell.
const Config = "experimental-features = nix-command\n" +
	"sandbox-paths = /bin/sh=/bin/busybox\n" +
	"build-users-group =\n" +
	"substituters =\n" +
	"require-sigs = false\n"

// InCI reports whether the test runs under CI (CI=true), where a missing
// tool is a failure rather than a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require looks up each tool on PATH. A missing tool skips the test, or
// fails it under CI.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if InCI() {
				t.Fatalf("required tool %q is missing (CI=true: interop tests may not skip): %v", tool, err)
			}
			t.Skipf("tool %q not installed: %v", tool, err)
		}
	}
}

// RequireNix is Require for the Nix 2.8 command-line tools.
func RequireNix(t testing.TB) {
	t.Helper()
	Require(t, "nix", "nix-store", "nix-instantiate", "nix-build")
}

// Env returns the environment for a Nix process: the current environment
// with a private HOME and XDG dirs under dir and NIX_CONFIG set to Config.
func Env(dir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "HOME", "NIX_CONFIG", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "NIX_REMOTE", "NIX_CONF_DIR", "NIX_STATE_DIR":
			continue
		}
		env = append(env, kv)
	}
	home := filepath.Join(dir, "home")
	os.MkdirAll(home, 0o755)
	return append(env,
		"HOME="+home,
		"XDG_CACHE_HOME="+filepath.Join(home, ".cache"),
		"XDG_CONFIG_HOME="+filepath.Join(home, ".config"),
		"XDG_DATA_HOME="+filepath.Join(home, ".local/share"),
		"NIX_CONF_DIR="+filepath.Join(dir, "etc-nix"),
		"NIX_CONFIG="+Config,
	)
}

// Nix runs one Nix tool with args and returns its standard output. Any
// failure fails the test with the tool's standard error.
func Nix(t testing.TB, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	out, stderr, err := Try(t, stdin, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr)
	}
	return out
}

// Try runs one Nix tool like Nix but returns its error and standard error
// instead of failing the test.
func Try(t testing.TB, stdin []byte, name string, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	return TryEnv(Env(t.TempDir()), stdin, name, args...)
}

// RunEnv runs name with args in the environment env and returns its
// standard output; a failure fails the test with its standard error.
func RunEnv(t testing.TB, env []string, name string, args ...string) []byte {
	t.Helper()
	out, stderr, err := TryEnv(env, nil, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr)
	}
	return out
}

// TryEnv is Try in the environment env.
func TryEnv(env []string, stdin []byte, name string, args ...string) (stdout, stderr []byte, err error) {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

// Line is Nix with the output trimmed of surrounding white space.
func Line(t testing.TB, name string, args ...string) string {
	t.Helper()
	return strings.TrimSpace(string(Nix(t, nil, name, args...)))
}

// Need skips the test when err (a missing prerequisite, such as working
// namespaces) is non-nil, or fails it under CI.
func Need(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if InCI() {
		t.Fatalf("prerequisite missing (CI=true): %v", err)
	}
	t.Skip(err)
}

// PathInfo is the part of `nix path-info --json` (2.8) that describes a
// path the same way in every store holding it: no registration time,
// ultimate flag or signatures.
type PathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Deriver    string   `json:"deriver"`
	CA         string   `json:"ca"`
}

// PathInfos runs `nix path-info --json --store store args...` (args are
// further flags and the paths) and returns the records by path.
func PathInfos(t testing.TB, store string, args ...string) map[string]PathInfo {
	t.Helper()
	out := Nix(t, nil, "nix", append([]string{"path-info", "--json", "--store", store}, args...)...)
	var list []PathInfo
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("nix path-info --json --store %s: %v\n%s", store, err, out)
	}
	m := make(map[string]PathInfo, len(list))
	for _, p := range list {
		sort.Strings(p.References)
		m[p.Path] = p
	}
	return m
}

// buildEnv is the environment the test binary started with: FerryBin
// builds with it, so a test that has moved HOME (t.Setenv) still finds Go's
// build and module caches.
var buildEnv = os.Environ()

var (
	ferryOnce sync.Once
	ferryDir  string
	ferryPath string
	ferryErr  error
)

// FerryBin builds the ferry command once per test binary and returns its
// absolute path: sshd runs it as a forced command or remote-program, so it
// must be a real executable, not the test binary. A TestMain may call
// RemoveFerryBin when the tests are done.
func FerryBin(t testing.TB) string {
	t.Helper()
	ferryOnce.Do(func() {
		ferryDir, ferryErr = os.MkdirTemp("", "ferry-bin-")
		if ferryErr != nil {
			return
		}
		ferryPath = filepath.Join(ferryDir, "ferry")
		cmd := exec.Command("go", "build", "-o", ferryPath, "ferry/cmd/ferry")
		cmd.Env = buildEnv
		out, err := cmd.CombinedOutput()
		if err != nil {
			ferryErr = fmt.Errorf("go build ferry/cmd/ferry: %v\n%s", err, out)
		}
	})
	if ferryErr != nil {
		t.Fatal(ferryErr)
	}
	return ferryPath
}

// RemoveFerryBin removes what FerryBin built.
func RemoveFerryBin() {
	if ferryDir != "" {
		os.RemoveAll(ferryDir)
	}
}

// Fixture returns the fields of each non-comment line of the file
// testdata/name recorded by scripts/record-fixtures (the section says which
// part of the script records it), split on single spaces into at most n
// fields (n < 0: all); `""` stands for the empty string.
func Fixture(t testing.TB, section, name string, n int) [][]string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("fixture missing (run scripts/record-fixtures %s): %v", section, err)
	}
	defer f.Close()
	var lines [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if sc.Text() == "" || strings.HasPrefix(sc.Text(), "#") {
			continue
		}
		fields := strings.SplitN(sc.Text(), " ", n)
		for i, s := range fields {
			if s == `""` {
				fields[i] = ""
			}
		}
		lines = append(lines, fields)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(lines) == 0 {
		t.Fatalf("testdata/%s is empty", name)
	}
	return lines
}

// Verify requires real `nix-store --store st --verify --check-contents` to
// find st sound: it succeeds and prints nothing but its progress
// ("reading the Nix store...", "checking ...").
func Verify(t testing.TB, st string) {
	t.Helper()
	_, stderr, err := Try(t, nil, "nix-store", "--store", st, "--verify", "--check-contents")
	for _, l := range strings.Split(strings.TrimSpace(string(stderr)), "\n") {
		if l != "" && !strings.HasPrefix(l, "reading the Nix store") && !strings.HasPrefix(l, "checking ") {
			err = errors.Join(err, errors.New(l))
		}
	}
	if err != nil {
		t.Errorf("nix-store --store %s --verify --check-contents: %v\n%s", st, err, stderr)
	}
}

// WriteExecutable writes a script or program to path, mode 0755, as
// os.WriteFile does, but with no fork in between: a process forked while
// the file is open for writing would hold it open, and executing it would
// fail with "Text file busy" (ETXTBSY) until that child execs, which
// parallel tests that start processes hit now and then.
func WriteExecutable(path string, data []byte) error {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	return os.WriteFile(path, data, 0o755)
}
