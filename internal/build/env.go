package build

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"ferry/nix/derivation"
	"ferry/nix/hash"
)

// envSpec is what the environment depends on besides the derivation.
type envSpec struct {
	storeDir string
	cores    int
	hostDir  string // the build directory on the host
	dir      string // the build directory as the builder sees it
	fixed    bool   // fixed-output: NIX_OUTPUT_CHECKED and impureEnvVars
	getenv   func(string) string
}

// builderEnv returns the builder's environment, sorted, in the order of
// Nix 2.8's initEnv and initTmpDir (local-derivation-goal.cc:974-1080;
// docs/store.md §8.1), and writes the passAsFile files into the host
// build directory. Later assignments win.
func builderEnv(d *derivation.Derivation, es envSpec) ([]string, error) {
	env := map[string]string{
		"PATH":            "/path-not-set",
		"HOME":            "/homeless-shelter",
		"NIX_STORE":       es.storeDir,
		"NIX_BUILD_CORES": strconv.Itoa(es.cores),
	}
	passAsFile := map[string]bool{}
	for _, n := range strings.Fields(d.Env["passAsFile"]) {
		passAsFile[n] = true
	}
	for k, v := range d.Env {
		if !passAsFile[k] {
			env[k] = v
			continue
		}
		fn := ".attr-" + hash.SumString(hash.SHA256, k).Encode(hash.Nix32, false)
		if err := os.WriteFile(filepath.Join(es.hostDir, fn), []byte(v), 0o644); err != nil {
			return nil, err
		}
		env[k+"Path"] = es.dir + "/" + fn
	}
	for _, k := range []string{"NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"} {
		env[k] = es.dir
	}
	if es.fixed {
		env["NIX_OUTPUT_CHECKED"] = "1"
		// Fixed-output derivations may see these of the caller's
		// variables (proxies, for fetchers); unset ones are set empty.
		for _, k := range strings.Fields(d.Env["impureEnvVars"]) {
			env[k] = es.getenv(k)
		}
	}
	env["NIX_LOG_FD"] = "2"
	env["TERM"] = "xterm-256color"
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out, nil
}
