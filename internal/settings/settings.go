// Package settings reads the nix.conf settings ferry understands, from the
// same places and with the same precedence as Nix 2.8, so that a machine set
// up for Nix needs no second configuration: $NIX_CONF_DIR/nix.conf (default
// /etc/nix/nix.conf), then the user's files ($NIX_USER_CONF_FILES, else
// $XDG_CONFIG_DIRS and $XDG_CONFIG_HOME nix/nix.conf), then $NIX_CONFIG.
// Later settings override earlier ones, "extra-NAME" appends to a list,
// "include FILE" and "!include FILE" read another file (the "!" form
// ignores a missing one). Settings ferry doesn't know are ignored, as
// options for other programs. Command-line flags are applied last by the
// caller, with Set.
package settings

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"ferry/nix/signature"
)

// Sandbox modes, as nix.conf's "sandbox" spells them.
const (
	SandboxOn      = "true"
	SandboxOff     = "false"
	SandboxRelaxed = "relaxed"
)

// Settings are the build settings ferry takes from nix.conf. The zero
// value is not the default: use Default.
type Settings struct {
	// Sandbox is "true", "false" or "relaxed" (treated as "true": ferry
	// doesn't honour __noChroot). Default "true".
	Sandbox string
	// SandboxFallback lets a build run unsandboxed when namespaces don't
	// work. Default true.
	SandboxFallback bool
	// SandboxPaths are the sandbox-paths entries as written:
	// "target=source", "path" (same inside and out), each optionally
	// ending in "?". Default "/bin/sh=/bin/busybox" when /bin/busybox
	// exists (Nix's compiled-in SANDBOX_SHELL on Debian), else empty.
	SandboxPaths []string
	// Cores is NIX_BUILD_CORES; 0 means every hardware thread. Default
	// the number of hardware threads.
	Cores int
	// MaxJobs is how many builds run at once. Default 1; "auto" is the
	// number of hardware threads.
	MaxJobs int
	// MaxSilentTime kills a builder silent for that long; 0 means never.
	MaxSilentTime time.Duration
	// Timeout kills a builder running for that long; 0 means never.
	Timeout time.Duration
	// MaxLogSize kills a builder writing more log bytes; 0 means no limit.
	MaxLogSize uint64
	// KeepFailed keeps the build directory of a failed build.
	KeepFailed bool
	// BuildDir is where build directories are made; "" means $TMPDIR or
	// /tmp (Nix 2.8 has no such setting; ferry reads "build-dir" as
	// later Nix does).
	BuildDir string
	// System is the platform this machine builds for. Default
	// "x86_64-linux" style, from GOARCH and GOOS.
	System string
	// ExtraPlatforms are other platforms it can build for (i686-linux
	// on x86_64-linux by default).
	ExtraPlatforms []string
	// SystemFeatures are the features of this machine
	// (requiredSystemFeatures). Default nixos-test, benchmark,
	// big-parallel, plus kvm when /dev/kvm exists.
	SystemFeatures []string

	// ReservedSize is gc-reserved-space: the size of db/reserved, which
	// opening a store creates and a deleting garbage collection removes
	// first. Default 8 MiB.
	ReservedSize int64
	// MinFree is min-free: when free space on the store's filesystem
	// falls below it during a build, a garbage collection runs in the
	// background. Default 0, which disables that.
	MinFree uint64
	// MaxFree is max-free: such a collection stops once about this many
	// bytes are free. Default math.MaxUint64 (delete all garbage).
	MaxFree uint64
	// MinFreeCheckInterval is min-free-check-interval: free space is
	// checked at most this often. Default 5 seconds.
	MinFreeCheckInterval time.Duration
	// KeepOutputs is keep-outputs (alias gc-keep-outputs): the garbage
	// collector keeps the outputs of live derivations. Default false.
	KeepOutputs bool
	// KeepDerivations is keep-derivations (alias gc-keep-derivations):
	// the garbage collector keeps the derivers of live paths. Default
	// true.
	KeepDerivations bool

	// RequireSigs is require-sigs: a path that is not content-addressed
	// must carry a signature by a trusted key (TrustedPublicKeys, or the
	// public half of a SecretKeyFiles key) to be added or copied to the
	// store. Default true (Nix 2.8.0 src/libstore/globals.hh).
	RequireSigs bool
	// TrustedPublicKeys is trusted-public-keys (alias
	// binary-cache-public-keys): the keys, "name:base64", whose
	// signatures are trusted, as written; PublicKeys parses them.
	// Default cache.nixos.org's key, DefaultTrustedPublicKey.
	TrustedPublicKeys []string
	// SecretKeyFiles is secret-key-files: files holding secret keys,
	// "name:base64", to sign locally built paths with; their public
	// halves are trusted too. Default none.
	SecretKeyFiles []string

	// PostBuildHook is post-build-hook: a program run after each
	// successful build (internal/build's hook.go), "" for none. Nix 2.8
	// declares it a plain string setting (src/libstore/globals.hh), so
	// the value is kept as written: an absolute path is run directly, a
	// name without a slash is looked up on PATH (Nix runs it with
	// execvp). Default "".
	PostBuildHook string

	// KeepBuildLog is keep-build-log: builds keep their log in the
	// store's log directory (drvs/), for nix-store --read-log. Default
	// true. CompressBuildLog is compress-build-log (default true), which
	// ferry accepts but does not act on: it writes logs uncompressed,
	// which Nix reads as well.
	KeepBuildLog, CompressBuildLog bool

	// ExperimentalFeatures is experimental-features: the names of the
	// experimental features that are on, as written. Default none. ferry
	// acts on "ca-derivations" (Enabled, RequireFeature).
	ExperimentalFeatures []string

	// Builders is builders: the machines (internal/machines parses it),
	// as written. Default "@$NIX_CONF_DIR/machines" (DefaultBuilders).
	Builders string
	// BuildersUseSubstitutes is builders-use-substitutes: build machines
	// substitute the inputs they lack. Default false.
	BuildersUseSubstitutes bool

	// TrustedUsers is trusted-users: user names, "@group" and "*", as
	// Nix's daemon reads it. Default "root". The ferry scheduler serves
	// these users besides root and its own.
	TrustedUsers []string
}

// DefaultBuilders is the default of builders in Nix 2.8.0
// (src/libstore/globals.hh, globals.cc): "@" + nixConfDir + "/machines",
// nixConfDir being $NIX_CONF_DIR or /etc/nix; a set NIX_REMOTE_SYSTEMS
// replaces it with "@P" for each ":"-separated P, joined by spaces (so
// that more than one P names a file that does not exist, as in Nix).
func DefaultBuilders(getenv func(string) string) string {
	if getenv == nil {
		getenv = os.Getenv
	}
	// An empty NIX_REMOTE_SYSTEMS counts as unset here (getenv cannot
	// tell them apart); Nix would make builders empty.
	if v := getenv("NIX_REMOTE_SYSTEMS"); v != "" {
		var ps []string
		for _, p := range strings.Split(v, ":") {
			if p != "" {
				ps = append(ps, "@"+p)
			}
		}
		return strings.Join(ps, " ")
	}
	confDir := getenv("NIX_CONF_DIR")
	if confDir == "" {
		confDir = "/etc/nix"
	}
	return "@" + filepath.Clean(confDir) + "/machines"
}

// CADerivations is the experimental feature of content-addressed
// derivations (Nix 2.8's Xp::CaDerivations).
const CADerivations = "ca-derivations"

// Enabled reports whether the experimental feature name is on.
func (s *Settings) Enabled(feature string) bool {
	for _, f := range s.ExperimentalFeatures {
		if f == feature {
			return true
		}
	}
	return false
}

// RequireFeature returns Nix 2.8's MissingExperimentalFeature error
// (src/libutil/experimental-features.cc@2.8.0) unless feature is on.
func (s *Settings) RequireFeature(feature string) error {
	if s.Enabled(feature) {
		return nil
	}
	return MissingFeatureError(feature)
}

// MissingFeatureError is Nix 2.8's message for a disabled experimental
// feature.
func MissingFeatureError(feature string) error {
	return fmt.Errorf("experimental Nix feature '%s' is disabled; use '--extra-experimental-features %s' to override", feature, feature)
}

// DefaultTrustedPublicKey is the default of trusted-public-keys in Nix
// 2.8.0 (src/libstore/globals.hh): cache.nixos.org's key.
const DefaultTrustedPublicKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="

// Default returns Nix 2.8's defaults for this machine.
func Default() *Settings {
	s := &Settings{
		Sandbox:         SandboxOn,
		SandboxFallback: true,
		Cores:           runtime.NumCPU(),
		MaxJobs:         1,
		System:          thisSystem(),
		SystemFeatures:  []string{"nixos-test", "benchmark", "big-parallel"},

		ReservedSize:         8 << 20,
		MaxFree:              math.MaxUint64,
		MinFreeCheckInterval: 5 * time.Second,
		KeepDerivations:      true,

		RequireSigs:       true,
		TrustedPublicKeys: []string{DefaultTrustedPublicKey},

		KeepBuildLog:     true,
		CompressBuildLog: true,

		Builders:     "@/etc/nix/machines",
		TrustedUsers: []string{"root"},
	}
	if _, err := os.Stat("/bin/busybox"); err == nil {
		s.SandboxPaths = []string{"/bin/sh=/bin/busybox"}
	}
	if s.System == "x86_64-linux" {
		s.ExtraPlatforms = []string{"i686-linux"}
	}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		s.SystemFeatures = append(s.SystemFeatures, "kvm")
	}
	return s
}

func thisSystem() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "arm": "armv7l", "riscv64": "riscv64"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return arch + "-" + runtime.GOOS
}

// Load returns the defaults overridden by the nix.conf files and
// NIX_CONFIG that getenv points at (os.Getenv when nil).
func Load(getenv func(string) string) (*Settings, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	s := Default()
	s.Builders = DefaultBuilders(getenv)
	confDir := getenv("NIX_CONF_DIR")
	if confDir == "" {
		confDir = "/etc/nix"
	}
	if err := s.ReadFile(filepath.Join(confDir, "nix.conf"), true); err != nil {
		return nil, err
	}
	for _, f := range userConfFiles(getenv) {
		if err := s.ReadFile(f, true); err != nil {
			return nil, err
		}
	}
	if c := getenv("NIX_CONFIG"); c != "" {
		if err := s.Parse([]byte(c), "NIX_CONFIG", ""); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// userConfFiles lists the user's nix.conf files, lowest priority first
// (Nix's getUserConfigFiles, applied in reverse so the first wins).
func userConfFiles(getenv func(string) string) []string {
	var files []string
	if v := getenv("NIX_USER_CONF_FILES"); v != "" {
		files = strings.Split(v, ":")
	} else {
		home := getenv("XDG_CONFIG_HOME")
		if home == "" && getenv("HOME") != "" {
			home = filepath.Join(getenv("HOME"), ".config")
		}
		if home != "" {
			files = append(files, filepath.Join(home, "nix", "nix.conf"))
		}
		dirs := getenv("XDG_CONFIG_DIRS")
		if dirs == "" {
			dirs = "/etc/xdg"
		}
		for _, d := range strings.Split(dirs, ":") {
			if d != "" {
				files = append(files, filepath.Join(d, "nix", "nix.conf"))
			}
		}
	}
	// Nix applies them in reverse order, so the first file has the last word.
	for i, j := 0, len(files)-1; i < j; i, j = i+1, j-1 {
		files[i], files[j] = files[j], files[i]
	}
	return files
}

// ReadFile applies the settings in the nix.conf file path. A missing file
// is an error unless optional.
func (s *Settings) ReadFile(path string, optional bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		if optional && errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("read configuration file: %w", err)
	}
	return s.Parse(data, path, filepath.Dir(path))
}

// maxIncludeDepth bounds include recursion (a file including itself).
const maxIncludeDepth = 16

// Parse applies nix.conf text. name labels errors; dir resolves relative
// include paths ("" means the current directory).
func (s *Settings) Parse(data []byte, name, dir string) error {
	return s.parse(data, name, dir, 0)
}

func (s *Settings) parse(data []byte, name, dir string, depth int) error {
	if depth > maxIncludeDepth {
		return fmt.Errorf("read configuration %s: includes nested too deeply", name)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		tokens := strings.Fields(line)
		if len(tokens) == 0 {
			continue
		}
		if tokens[0] == "include" || tokens[0] == "!include" {
			if len(tokens) != 2 {
				return fmt.Errorf("read configuration %s:%d: syntax error in include", name, n)
			}
			p := tokens[1]
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			inc, err := os.ReadFile(p)
			if err != nil {
				if tokens[0] == "!include" && errors.Is(err, os.ErrNotExist) {
					continue
				}
				return fmt.Errorf("read configuration %s:%d: %w", name, n, err)
			}
			if err := s.parse(inc, p, filepath.Dir(p), depth+1); err != nil {
				return err
			}
			continue
		}
		if len(tokens) < 2 || tokens[1] != "=" {
			return fmt.Errorf("read configuration %s:%d: illegal configuration line '%s'", name, n, strings.TrimSpace(sc.Text()))
		}
		if err := s.Set(tokens[0], strings.Join(tokens[2:], " ")); err != nil {
			return fmt.Errorf("read configuration %s:%d: %w", name, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read configuration %s: %w", name, err)
	}
	return nil
}

// Set applies one setting the way nix.conf and --option do; "extra-NAME"
// appends to list settings. Unknown names are ignored.
func (s *Settings) Set(name, value string) error {
	// "extra-platforms" is itself a setting's name; "extra-extra-platforms"
	// appends to it.
	switch name {
	case "extra-platforms":
		s.ExtraPlatforms = strings.Fields(value)
		return nil
	case "extra-extra-platforms":
		s.ExtraPlatforms = append(s.ExtraPlatforms, strings.Fields(value)...)
		return nil
	}
	extra := strings.HasPrefix(name, "extra-")
	base := strings.TrimPrefix(name, "extra-")
	list := func(dst *[]string) {
		if !extra {
			*dst = nil
		}
		*dst = append(*dst, strings.Fields(value)...)
	}
	var err error
	switch base {
	case "sandbox":
		switch value {
		case SandboxOn, SandboxOff, SandboxRelaxed:
			s.Sandbox = value
		default:
			err = fmt.Errorf("option '%s' has invalid value '%s'", name, value)
		}
	case "sandbox-fallback":
		s.SandboxFallback, err = ParseBool(name, value)
	case "sandbox-paths", "build-chroot-dirs", "build-sandbox-paths":
		list(&s.SandboxPaths)
	case "cores", "build-cores":
		s.Cores, err = parseInt(name, value)
	case "max-jobs", "build-max-jobs":
		if value == "auto" {
			s.MaxJobs = runtime.NumCPU()
		} else {
			s.MaxJobs, err = parseInt(name, value)
		}
	case "max-silent-time", "build-max-silent-time":
		s.MaxSilentTime, err = parseSeconds(name, value)
	case "timeout", "build-timeout":
		s.Timeout, err = parseSeconds(name, value)
	case "max-log-size", "build-max-log-size":
		var n int
		n, err = parseInt(name, value)
		s.MaxLogSize = uint64(n)
	case "keep-failed":
		s.KeepFailed, err = ParseBool(name, value)
	case "build-dir":
		s.BuildDir = value
	case "system":
		s.System = value
	case "system-features":
		list(&s.SystemFeatures)
	case "gc-reserved-space":
		s.ReservedSize, err = strconv.ParseInt(value, 10, 64)
		if err != nil {
			err = invalid(name, value)
		}
	case "min-free":
		s.MinFree, err = parseUint64(name, value)
	case "max-free":
		s.MaxFree, err = parseUint64(name, value)
	case "min-free-check-interval":
		var n uint64
		n, err = parseUint64(name, value)
		if err == nil && n > uint64(time.Duration(math.MaxInt64)/time.Second) {
			err = fmt.Errorf("option '%s' has invalid value '%s': too large", name, value)
		}
		s.MinFreeCheckInterval = time.Duration(n) * time.Second
	case "keep-outputs", "gc-keep-outputs":
		s.KeepOutputs, err = ParseBool(name, value)
	case "keep-derivations", "gc-keep-derivations":
		s.KeepDerivations, err = ParseBool(name, value)
	case "require-sigs":
		// A Boolean takes no "extra-": Nix 2.8's Config::set finds no
		// appendable setting and ignores it as unknown.
		if !extra {
			s.RequireSigs, err = ParseBool(name, value)
		}
	case "trusted-public-keys", "binary-cache-public-keys":
		list(&s.TrustedPublicKeys)
	case "secret-key-files":
		list(&s.SecretKeyFiles)
	case "keep-build-log", "build-keep-log":
		s.KeepBuildLog, err = ParseBool(name, value)
	case "compress-build-log", "build-compress-log":
		s.CompressBuildLog, err = ParseBool(name, value)
	case "post-build-hook":
		// Not a list: "extra-post-build-hook" is ignored as unknown, as
		// Nix 2.8's Config::set does.
		if !extra {
			s.PostBuildHook = value
		}
	case "experimental-features":
		list(&s.ExperimentalFeatures)
	case "builders":
		// A plain string in Nix 2.8: "extra-builders" is unknown.
		if !extra {
			s.Builders = value
		}
	case "builders-use-substitutes":
		if !extra {
			s.BuildersUseSubstitutes, err = ParseBool(name, value)
		}
	case "trusted-users":
		list(&s.TrustedUsers)
	}
	return err
}

// ParseBool reads a Boolean setting (nix.conf's or a store URI's) the way
// Nix 2.8's BaseSetting<bool>::set does: true, yes or 1; false, no or 0;
// anything else is Nix's error.
func ParseBool(name, v string) (bool, error) {
	switch v {
	case "true", "yes", "1":
		return true, nil
	case "false", "no", "0":
		return false, nil
	}
	return false, fmt.Errorf("Boolean setting '%s' has invalid value '%s'", name, v)
}

func invalid(name, v string) error {
	return fmt.Errorf("option '%s' has invalid value '%s'", name, v)
}

// parseUint64 reads an unsigned integer setting (Nix's string2Int of
// uint64_t: decimal, no sign, no unit suffix).
func parseUint64(name, v string) (uint64, error) {
	if strings.HasPrefix(v, "+") {
		return 0, invalid(name, v)
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, invalid(name, v)
	}
	return n, nil
}

func parseInt(name, v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("option '%s' has invalid value '%s': expected a non-negative integer", name, v)
	}
	return n, nil
}

func parseSeconds(name, v string) (time.Duration, error) {
	n, err := parseInt(name, v)
	if err != nil {
		return 0, err
	}
	if n > int(time.Duration(1<<62)/time.Second) {
		return 0, fmt.Errorf("option '%s' has invalid value '%s': too large", name, v)
	}
	return time.Duration(n) * time.Second, nil
}

// PublicKeys returns the keys signatures are checked against, as Nix
// 2.8.0's getDefaultPublicKeys (src/libstore/crypto.cc) gathers them: the
// TrustedPublicKeys, then the public half of each SecretKeyFiles key,
// the first key of a name winning. A secret key file that can't be read is
// skipped, as Nix does ("normal in a multi-user installation"); a key that
// doesn't parse is an error naming it (a secret key by its file and name).
func (s *Settings) PublicKeys() (signature.PublicKeys, error) {
	keys := make(signature.PublicKeys, len(s.TrustedPublicKeys)+len(s.SecretKeyFiles))
	for _, k := range s.TrustedPublicKeys {
		pk, err := signature.ParsePublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("trusted-public-keys: %w", err)
		}
		keys.Add(pk)
	}
	for _, f := range s.SecretKeyFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		sk, err := signature.ParseSecretKey(string(data))
		if err != nil {
			return nil, fmt.Errorf("secret-key-files: %s: %w", f, err)
		}
		keys.Add(sk.PublicKey())
	}
	return keys, nil
}

// SecretKeys reads the SecretKeyFiles keys, to sign locally built paths
// with, as Nix 2.8.0's LocalStore::signPathInfo (src/libstore/local-store.cc)
// does: there a file that can't be read is an error.
func (s *Settings) SecretKeys() ([]signature.SecretKey, error) {
	var keys []signature.SecretKey
	for _, f := range s.SecretKeyFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("secret-key-files: %w", err)
		}
		sk, err := signature.ParseSecretKey(string(data))
		if err != nil {
			return nil, fmt.Errorf("secret-key-files: %s: %w", f, err)
		}
		keys = append(keys, sk)
	}
	return keys, nil
}

// SandboxPathMap turns SandboxPaths into target → source, as Nix reads
// them: "target=source", or "path" for the same path on both sides. A
// trailing "?" (kept on the source) marks an optional path.
func (s *Settings) SandboxPathMap() map[string]string {
	m := make(map[string]string, len(s.SandboxPaths))
	for _, e := range s.SandboxPaths {
		optional := strings.HasSuffix(e, "?")
		e = strings.TrimSuffix(e, "?")
		target, source, ok := strings.Cut(e, "=")
		if !ok {
			source = target
		}
		if optional {
			source += "?"
		}
		m[target] = source
	}
	return m
}

// CanBuild reports whether this machine builds for platform with the
// required features (Nix's Derivation::canBuildLocally); builtin:
// builders run anywhere.
func (s *Settings) CanBuild(platform, builder string, features []string) bool {
	ok := platform == s.System || strings.HasPrefix(builder, "builtin:")
	for _, p := range s.ExtraPlatforms {
		ok = ok || p == platform
	}
	if !ok {
		return false
	}
	for _, f := range features {
		found := false
		for _, g := range s.SystemFeatures {
			found = found || f == g
		}
		if !found {
			return false
		}
	}
	return true
}

// KeyValue renders the settings as nix.conf text, one "name = value" line
// per setting, sorted by name: the NIX_CONFIG a post-build hook gets when
// the environment has none, as Nix 2.8 passes globalConfig.toKeyValue()
// (src/libstore/build/derivation-goal.cc, runPostBuildHook), so that a
// Nix or ferry run by the hook sees the same settings, command-line
// overrides included. Only the settings ferry knows are rendered (Nix
// lists all of its own); build-dir, which Nix 2.8 does not know, only when
// set. Set-valued settings (sandbox-paths, system-features,
// extra-platforms) are sorted, as Nix's std::set prints them. Parse reads
// the text back to the same settings.
func (s *Settings) KeyValue() string {
	sorted := func(v []string) string {
		c := append([]string(nil), v...)
		sort.Strings(c)
		return strings.Join(c, " ")
	}
	secs := func(d time.Duration) string { return strconv.FormatInt(int64(d/time.Second), 10) }
	kv := map[string]string{
		"sandbox":                  s.Sandbox,
		"sandbox-fallback":         strconv.FormatBool(s.SandboxFallback),
		"sandbox-paths":            sorted(s.SandboxPaths),
		"cores":                    strconv.Itoa(s.Cores),
		"max-jobs":                 strconv.Itoa(s.MaxJobs),
		"max-silent-time":          secs(s.MaxSilentTime),
		"timeout":                  secs(s.Timeout),
		"max-log-size":             strconv.FormatUint(s.MaxLogSize, 10),
		"keep-failed":              strconv.FormatBool(s.KeepFailed),
		"system":                   s.System,
		"extra-platforms":          sorted(s.ExtraPlatforms),
		"system-features":          sorted(s.SystemFeatures),
		"gc-reserved-space":        strconv.FormatInt(s.ReservedSize, 10),
		"min-free":                 strconv.FormatUint(s.MinFree, 10),
		"max-free":                 strconv.FormatUint(s.MaxFree, 10),
		"min-free-check-interval":  secs(s.MinFreeCheckInterval),
		"keep-outputs":             strconv.FormatBool(s.KeepOutputs),
		"keep-derivations":         strconv.FormatBool(s.KeepDerivations),
		"require-sigs":             strconv.FormatBool(s.RequireSigs),
		"trusted-public-keys":      strings.Join(s.TrustedPublicKeys, " "),
		"secret-key-files":         strings.Join(s.SecretKeyFiles, " "),
		"post-build-hook":          s.PostBuildHook,
		"keep-build-log":           strconv.FormatBool(s.KeepBuildLog),
		"compress-build-log":       strconv.FormatBool(s.CompressBuildLog),
		"builders":                 s.Builders,
		"builders-use-substitutes": strconv.FormatBool(s.BuildersUseSubstitutes),
		"trusted-users":            strings.Join(s.TrustedUsers, " "),
	}
	if s.BuildDir != "" {
		kv["build-dir"] = s.BuildDir
	}
	names := make([]string, 0, len(kv))
	for k := range kv {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		fmt.Fprintf(&b, "%s = %s\n", k, kv[k])
	}
	return b.String()
}
