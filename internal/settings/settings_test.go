package settings

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"ferry/nix/signature"
)

func TestLoadPrecedence(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "conf")
	os.MkdirAll(conf, 0o755)
	os.WriteFile(filepath.Join(conf, "nix.conf"), []byte(`# system file
sandbox = false
sandbox-paths = /bin/sh=/bin/busybox /usr/lib?
max-silent-time = 10
timeout = 20
unknown-setting = whatever
cores = 3
include extra.conf
!include missing.conf
`), 0o644)
	os.WriteFile(filepath.Join(conf, "extra.conf"), []byte("extra-sandbox-paths = /etc/ssl=/etc/ssl\nkeep-failed = true\n"), 0o644)
	user := filepath.Join(dir, "user.conf")
	os.WriteFile(user, []byte("max-log-size = 4096\ntimeout = 30\n"), 0o644)
	env := map[string]string{
		"NIX_CONF_DIR":        conf,
		"NIX_USER_CONF_FILES": user,
		"NIX_CONFIG":          "max-silent-time = 5\nmax-jobs = 4\nextra-sandbox-paths = /data",
	}
	s, err := Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if s.Sandbox != SandboxOff || s.Cores != 3 || !s.KeepFailed || s.MaxJobs != 4 ||
		s.MaxSilentTime != 5*time.Second || s.Timeout != 30*time.Second || s.MaxLogSize != 4096 {
		t.Errorf("got %+v", s)
	}
	want := []string{"/bin/sh=/bin/busybox", "/usr/lib?", "/etc/ssl=/etc/ssl", "/data"}
	if !reflect.DeepEqual(s.SandboxPaths, want) {
		t.Errorf("sandbox paths %q, want %q", s.SandboxPaths, want)
	}
	m := s.SandboxPathMap()
	wantMap := map[string]string{"/bin/sh": "/bin/busybox", "/usr/lib": "/usr/lib?", "/etc/ssl": "/etc/ssl", "/data": "/data"}
	if !reflect.DeepEqual(m, wantMap) {
		t.Errorf("map %v, want %v", m, wantMap)
	}
}

func TestLoadDefaultsWithoutFiles(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"NIX_CONF_DIR": dir, "HOME": dir, "XDG_CONFIG_DIRS": dir}
	s, err := Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	d.Builders = "@" + dir + "/machines" // Nix's default follows NIX_CONF_DIR
	if !reflect.DeepEqual(s, d) {
		t.Errorf("got %+v, want defaults %+v", s, d)
	}
	if s.Sandbox != SandboxOn || s.MaxJobs != 1 || s.Cores < 1 {
		t.Errorf("defaults %+v", s)
	}
}

func TestSet(t *testing.T) {
	tests := []struct {
		name, value string
		check       func(*Settings) bool
		err         string
	}{
		{"sandbox", "relaxed", func(s *Settings) bool { return s.Sandbox == SandboxRelaxed }, ""},
		{"sandbox", "maybe", nil, "invalid value 'maybe'"},
		{"keep-failed", "yes", func(s *Settings) bool { return s.KeepFailed }, ""},
		{"keep-failed", "maybe", nil, "Boolean setting 'keep-failed' has invalid value 'maybe'"},
		{"gc-reserved-space", "1024", func(s *Settings) bool { return s.ReservedSize == 1024 }, ""},
		{"gc-reserved-space", "1M", nil, "invalid value '1M'"},
		{"min-free", "1000000", func(s *Settings) bool { return s.MinFree == 1000000 }, ""},
		{"min-free", "-1", nil, "invalid value '-1'"},
		{"max-free", "18446744073709551615", func(s *Settings) bool { return s.MaxFree == 1<<64-1 }, ""},
		{"max-free", "1G", nil, "invalid value '1G'"},
		{"min-free-check-interval", "0", func(s *Settings) bool { return s.MinFreeCheckInterval == 0 }, ""},
		{"min-free-check-interval", "18446744073709551615", nil, "too large"},
		{"gc-keep-outputs", "true", func(s *Settings) bool { return s.KeepOutputs }, ""},
		{"keep-derivations", "0", func(s *Settings) bool { return !s.KeepDerivations }, ""},
		{"cores", "-1", nil, "non-negative integer"},
		{"max-jobs", "auto", func(s *Settings) bool { return s.MaxJobs >= 1 }, ""},
		{"build-max-silent-time", "7", func(s *Settings) bool { return s.MaxSilentTime == 7*time.Second }, ""},
		{"sandbox-paths", "/a /b=/c", func(s *Settings) bool { return reflect.DeepEqual(s.SandboxPaths, []string{"/a", "/b=/c"}) }, ""},
		{"extra-platforms", "aarch64-linux", func(s *Settings) bool { return reflect.DeepEqual(s.ExtraPlatforms, []string{"aarch64-linux"}) }, ""},
		{"extra-system-features", "gpu", func(s *Settings) bool { return s.SystemFeatures[len(s.SystemFeatures)-1] == "gpu" }, ""},
		{"require-sigs", "false", func(s *Settings) bool { return !s.RequireSigs }, ""},
		{"require-sigs", "no", func(s *Settings) bool { return !s.RequireSigs }, ""},
		{"require-sigs", "maybe", nil, "Boolean setting 'require-sigs' has invalid value 'maybe'"},
		{"extra-require-sigs", "false", func(s *Settings) bool { return s.RequireSigs }, ""},
		{"trusted-public-keys", "a:x  b:y", func(s *Settings) bool { return reflect.DeepEqual(s.TrustedPublicKeys, []string{"a:x", "b:y"}) }, ""},
		{"trusted-public-keys", "", func(s *Settings) bool { return len(s.TrustedPublicKeys) == 0 }, ""},
		{"binary-cache-public-keys", "a:x", func(s *Settings) bool { return reflect.DeepEqual(s.TrustedPublicKeys, []string{"a:x"}) }, ""},
		{"extra-trusted-public-keys", "a:x", func(s *Settings) bool {
			return reflect.DeepEqual(s.TrustedPublicKeys, []string{DefaultTrustedPublicKey, "a:x"})
		}, ""},
		{"extra-binary-cache-public-keys", "a:x", func(s *Settings) bool {
			return reflect.DeepEqual(s.TrustedPublicKeys, []string{DefaultTrustedPublicKey, "a:x"})
		}, ""},
		{"secret-key-files", "/a /b", func(s *Settings) bool { return reflect.DeepEqual(s.SecretKeyFiles, []string{"/a", "/b"}) }, ""},
		{"no-such-setting", "1", func(s *Settings) bool { return true }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			s := Default()
			err := s.Set(tt.name, tt.value)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(s) {
				t.Errorf("unexpected %+v", s)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, text := range []string{"sandbox\n", "include\n", "include /nonexistent/x.conf\n", "timeout = x\n"} {
		if err := Default().Parse([]byte(text), "test", ""); err == nil {
			t.Errorf("%q: no error", text)
		}
	}
	dir := t.TempDir()
	self := filepath.Join(dir, "self.conf")
	os.WriteFile(self, []byte("include self.conf\n"), 0o644)
	if err := Default().ReadFile(self, false); err == nil || !strings.Contains(err.Error(), "too deeply") {
		t.Errorf("self include: %v", err)
	}
}

func TestCanBuild(t *testing.T) {
	s := Default()
	s.System, s.ExtraPlatforms, s.SystemFeatures = "x86_64-linux", []string{"i686-linux"}, []string{"big-parallel"}
	for _, tt := range []struct {
		platform, builder string
		features          []string
		want              bool
	}{
		{"x86_64-linux", "/bin/sh", nil, true},
		{"i686-linux", "/bin/sh", nil, true},
		{"aarch64-linux", "/bin/sh", nil, false},
		{"aarch64-linux", "builtin:fetchurl", nil, true},
		{"x86_64-linux", "/bin/sh", []string{"big-parallel"}, true},
		{"x86_64-linux", "/bin/sh", []string{"kvm"}, false},
	} {
		if got := s.CanBuild(tt.platform, tt.builder, tt.features); got != tt.want {
			t.Errorf("CanBuild(%s, %s, %v) = %v", tt.platform, tt.builder, tt.features, got)
		}
	}
}

// TestGCDefaults: Nix 2.8's globals.hh defaults for the GC settings.
func TestGCDefaults(t *testing.T) {
	d := Default()
	if d.ReservedSize != 8<<20 || d.MinFree != 0 || d.MaxFree != 1<<64-1 ||
		d.MinFreeCheckInterval != 5*time.Second || d.KeepOutputs || !d.KeepDerivations {
		t.Errorf("GC defaults %+v", d)
	}
}

// TestSignatureDefaults: Nix 2.8's globals.hh defaults for require-sigs,
// trusted-public-keys and secret-key-files.
func TestSignatureDefaults(t *testing.T) {
	d := Default()
	if !d.RequireSigs || len(d.SecretKeyFiles) != 0 ||
		!reflect.DeepEqual(d.TrustedPublicKeys, []string{"cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="}) {
		t.Errorf("signature defaults %+v", d)
	}
	keys, err := d.PublicKeys()
	if err != nil || len(keys) != 1 || keys["cache.nixos.org-1"].String() != DefaultTrustedPublicKey {
		t.Errorf("default keys %v, %v", keys, err)
	}
}

func TestLoadSignatureSettings(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "nix.conf"), []byte("require-sigs = false\nbinary-cache-public-keys = a:x\n"), 0o644)
	env := map[string]string{
		"NIX_CONF_DIR":        dir,
		"NIX_USER_CONF_FILES": filepath.Join(dir, "none.conf"),
		"NIX_CONFIG":          "extra-trusted-public-keys = b:y\nextra-require-sigs = true\nsecret-key-files = /k",
	}
	s, err := Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if s.RequireSigs || !reflect.DeepEqual(s.TrustedPublicKeys, []string{"a:x", "b:y"}) || !reflect.DeepEqual(s.SecretKeyFiles, []string{"/k"}) {
		t.Errorf("got require-sigs %v, trusted %q, secret key files %q", s.RequireSigs, s.TrustedPublicKeys, s.SecretKeyFiles)
	}
}

func TestPublicKeys(t *testing.T) {
	dir := t.TempDir()
	trusted, _ := signature.GenerateSecretKey("trusted-1", nil)
	own, _ := signature.GenerateSecretKey("own-1", nil)
	shadowed, _ := signature.GenerateSecretKey("trusted-1", nil)
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o600)
		return p
	}
	ownFile := write("own.sec", own.Encode()+"\n")
	shadowFile := write("shadow.sec", shadowed.Encode())
	s := Default()
	s.TrustedPublicKeys = []string{trusted.PublicKey().String(), DefaultTrustedPublicKey}
	// An unreadable secret key file is skipped, as Nix does.
	s.SecretKeyFiles = []string{filepath.Join(dir, "missing.sec"), dir, ownFile, shadowFile}
	keys, err := s.PublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 || !keys["trusted-1"].Equal(trusted.PublicKey()) || !keys["own-1"].Equal(own.PublicKey()) {
		t.Errorf("keys %v", keys)
	}
	sks, err := (&Settings{SecretKeyFiles: []string{ownFile, shadowFile}}).SecretKeys()
	if err != nil || len(sks) != 2 || sks[0].Encode() != own.Encode() || sks[1].Encode() != shadowed.Encode() {
		t.Errorf("secret keys %v, %v", sks, err)
	}

	// Errors name the bad key, a secret one by its file and name only.
	s.TrustedPublicKeys = []string{DefaultTrustedPublicKey, "broken:AAAA"}
	if _, err := s.PublicKeys(); err == nil || !strings.Contains(err.Error(), `"broken:AAAA"`) || !strings.Contains(err.Error(), "trusted-public-keys") {
		t.Errorf("bad trusted key: %v", err)
	}
	bad := write("bad.sec", "mine:"+strings.Repeat("Q", 40))
	s.TrustedPublicKeys = nil
	s.SecretKeyFiles = []string{bad}
	if _, err := s.PublicKeys(); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), `"mine"`) || strings.Contains(err.Error(), "QQQQ") {
		t.Errorf("bad secret key: %v", err)
	}
	if _, err := s.SecretKeys(); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad secret key: %v", err)
	}
	// Signing, unlike trusting, needs every file readable.
	s.SecretKeyFiles = []string{filepath.Join(dir, "missing.sec")}
	if _, err := s.SecretKeys(); err == nil {
		t.Error("missing secret key file: no error")
	}
}

func TestExperimentalFeatures(t *testing.T) {
	s := Default()
	if s.Enabled(CADerivations) {
		t.Fatal("ca-derivations on by default")
	}
	err := s.RequireFeature(CADerivations)
	want := "experimental Nix feature 'ca-derivations' is disabled; use '--extra-experimental-features ca-derivations' to override"
	if err == nil || err.Error() != want {
		t.Fatalf("RequireFeature = %v, want %q", err, want)
	}
	if err := s.Parse([]byte("experimental-features = nix-command\nextra-experimental-features = ca-derivations\n"), "test", ""); err != nil {
		t.Fatal(err)
	}
	if !s.Enabled(CADerivations) || !s.Enabled("nix-command") || s.RequireFeature(CADerivations) != nil {
		t.Fatalf("features %v", s.ExperimentalFeatures)
	}
	if err := s.Set("experimental-features", "flakes"); err != nil {
		t.Fatal(err)
	}
	if s.Enabled(CADerivations) {
		t.Fatalf("experimental-features did not replace the list: %v", s.ExperimentalFeatures)
	}
}
