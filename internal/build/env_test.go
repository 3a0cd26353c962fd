package build

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/nix/derivation"
)

func TestBuilderEnv(t *testing.T) {
	dir := t.TempDir()
	d := &derivation.Derivation{Env: map[string]string{
		"PATH": "/overridden", "NIX_BUILD_TOP": "/not/allowed", "TERM": "dumb",
		"foo": "file contents", "passAsFile": "foo missing", "impureEnvVars": "http_proxy UNSET_VAR",
	}}
	env, err := builderEnv(d, envSpec{storeDir: "/nix/store", cores: 0, hostDir: dir, dir: "/build", fixed: true,
		getenv: func(k string) string { return map[string]string{"http_proxy": "http://proxy"}[k] }})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = v
	}
	// The .attr- name is nix32(sha256("foo")), verified against Nix 2.8
	// (docs/store.md §8.1).
	const attr = ".attr-1bp7cri8hplaz6hbz0v4f0nl44rl84q1sg25kgwqzipzd1mv89ic"
	want := map[string]string{
		"PATH": "/overridden", "HOME": "/homeless-shelter", "NIX_STORE": "/nix/store", "NIX_BUILD_CORES": "0",
		"NIX_BUILD_TOP": "/build", "TMPDIR": "/build", "TEMPDIR": "/build", "TMP": "/build", "TEMP": "/build", "PWD": "/build",
		"NIX_OUTPUT_CHECKED": "1", "http_proxy": "http://proxy", "UNSET_VAR": "", "NIX_LOG_FD": "2", "TERM": "xterm-256color",
		"fooPath": "/build/" + attr, "passAsFile": "foo missing", "impureEnvVars": "http_proxy UNSET_VAR",
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %q, want %q", k, g, v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d variables, want %d: %v", len(got), len(want), env)
	}
	if b, err := os.ReadFile(filepath.Join(dir, attr)); err != nil || string(b) != "file contents" {
		t.Errorf("attr file %q %v", b, err)
	}
}
