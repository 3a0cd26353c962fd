package settings

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestPostBuildHookSetting(t *testing.T) {
	if Default().PostBuildHook != "" {
		t.Errorf("default post-build-hook %q, want none", Default().PostBuildHook)
	}
	s := Default()
	// nix.conf joins the words after "=" with single spaces, and the
	// value is a plain string (no path canonicalisation, as in Nix 2.8).
	if err := s.Parse([]byte("post-build-hook =   /etc/nix/upload.sh\n"), "test", ""); err != nil {
		t.Fatal(err)
	}
	if s.PostBuildHook != "/etc/nix/upload.sh" {
		t.Errorf("post-build-hook %q", s.PostBuildHook)
	}
	// Not appendable: Nix ignores extra-post-build-hook as unknown.
	if err := s.Set("extra-post-build-hook", "/other"); err != nil || s.PostBuildHook != "/etc/nix/upload.sh" {
		t.Errorf("extra-post-build-hook: %v, hook %q", err, s.PostBuildHook)
	}
	if err := s.Set("post-build-hook", "upload"); err != nil || s.PostBuildHook != "upload" {
		t.Errorf("relative name: %v, hook %q", err, s.PostBuildHook)
	}
	// Empty means none; a later file or NIX_CONFIG can clear it.
	dir := t.TempDir()
	env := map[string]string{"NIX_CONF_DIR": dir, "HOME": dir, "XDG_CONFIG_DIRS": dir,
		"NIX_CONFIG": "post-build-hook = /a/hook\npost-build-hook ="}
	s, err := Load(func(k string) string { return env[k] })
	if err != nil || s.PostBuildHook != "" {
		t.Errorf("cleared by NIX_CONFIG: %v, hook %q", err, s.PostBuildHook)
	}
	env["NIX_CONFIG"] = "post-build-hook = /a/hook"
	if s, err := Load(func(k string) string { return env[k] }); err != nil || s.PostBuildHook != "/a/hook" {
		t.Errorf("from NIX_CONFIG: %v, hook %+v", err, s)
	}
}

func TestKeyValueRoundTrip(t *testing.T) {
	s := Default()
	s.Sandbox = SandboxRelaxed
	s.SandboxFallback = false
	s.SandboxPaths = []string{"/bin/sh=/bin/busybox", "/a?"}
	s.Cores, s.MaxJobs = 3, 5
	s.MaxSilentTime, s.Timeout = 7*time.Second, 11*time.Second
	s.MaxLogSize = 4096
	s.KeepFailed = true
	s.BuildDir = "/var/tmp/builds"
	s.System = "aarch64-linux"
	s.ExtraPlatforms = []string{"armv7l-linux", "armv6l-linux"}
	s.SystemFeatures = []string{"kvm", "big-parallel"}
	s.ReservedSize = 1 << 20
	s.MinFree, s.MaxFree = 100, 200
	s.MinFreeCheckInterval = 9 * time.Second
	s.KeepOutputs, s.KeepDerivations = true, false
	s.RequireSigs = false
	s.TrustedPublicKeys = []string{"b:y", "a:x"}
	s.SecretKeyFiles = []string{"/k2", "/k1"}
	s.PostBuildHook = "/etc/nix/hook"

	text := s.KeyValue()
	for _, line := range []string{"post-build-hook = /etc/nix/hook\n", "sandbox-paths = /a? /bin/sh=/bin/busybox\n",
		"max-silent-time = 7\n", "trusted-public-keys = b:y a:x\n", "require-sigs = false\n", "build-dir = /var/tmp/builds\n"} {
		if !strings.Contains(text, line) {
			t.Errorf("KeyValue lacks %q:\n%s", line, text)
		}
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i := 1; i < len(lines); i++ {
		if lines[i-1] >= lines[i] {
			t.Errorf("not sorted by name: %q before %q", lines[i-1], lines[i])
		}
	}

	got := Default()
	if err := got.Parse([]byte(text), "KeyValue", ""); err != nil {
		t.Fatalf("parse KeyValue: %v\n%s", err, text)
	}
	// The sets come back sorted.
	want := *s
	want.SandboxPaths = []string{"/a?", "/bin/sh=/bin/busybox"}
	want.ExtraPlatforms = []string{"armv6l-linux", "armv7l-linux"}
	want.SystemFeatures = []string{"big-parallel", "kvm"}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("round trip:\n got  %+v\n want %+v", *got, want)
	}

	// build-dir, unknown to Nix 2.8, is left out when unset.
	if strings.Contains(Default().KeyValue(), "build-dir") {
		t.Errorf("default KeyValue names build-dir:\n%s", Default().KeyValue())
	}
}
