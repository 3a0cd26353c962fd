package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"ferry/internal/nixtest"
)

// copyConfig makes the in-process ferry (and the processes it starts) read
// only conf: NIX_CONFIG is conf, and the system's and the user's nix.conf
// files are looked for in empty directories, so the machine's own
// configuration can't leak in.
func copyConfig(t *testing.T, conf string) {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("XDG_CONFIG_DIRS", filepath.Join(home, "xdg"))
	t.Setenv("NIX_USER_CONF_FILES", "")
	t.Setenv("NIX_CONF_DIR", filepath.Join(home, "etc-nix"))
	t.Setenv("NIX_CONFIG", conf)
}

// sigConfig is the configuration of a destination that checks signatures
// (or not) against the trusted keys.
func sigConfig(require bool, trusted ...string) string {
	return fmt.Sprintf("require-sigs = %v\ntrusted-public-keys = %s\n", require, strings.Join(trusted, " "))
}

// buildCopyClosure builds, with real nix-build in the store src, three
// input-addressed derivations (so no path of the closure is
// content-addressed): c refers to b and a, b to a. It returns c's output
// and its closure.
func buildCopyClosure(t *testing.T, src string) (top string, closure []string) {
	t.Helper()
	expr := `let
  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  a = mk "copy-a" "echo a > $out";
  b = mk "copy-b" "mkdir $out; echo ${a} > $out/a; echo b > $out/b";
in mk "copy-c" "mkdir $out; echo ${a} ${b} > $out/deps"`
	top = nixtest.Line(t, "nix-build", "--store", src, "--no-out-link", "-E", expr)
	closure = strings.Fields(nixtest.Line(t, "nix-store", "--store", src, "-qR", top))
	if len(closure) != 3 {
		t.Fatalf("closure of %s: %q, want 3 paths", top, closure)
	}
	for p, info := range nixtest.PathInfos(t, src, "-r", top) {
		if info.CA != "" {
			t.Fatalf("%s is content-addressed (%s)", p, info.CA)
		}
	}
	return top, closure
}

// genKey makes a signing key pair with nix-store --generate-binary-cache-key
// and returns the secret key's file and the public key.
func genKey(t *testing.T, name string) (secretFile, public string) {
	t.Helper()
	dir := t.TempDir()
	secretFile, pubFile := filepath.Join(dir, "secret"), filepath.Join(dir, "public")
	nixtest.Nix(t, nil, "nix-store", "--generate-binary-cache-key", name, secretFile, pubFile)
	pub, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	return secretFile, strings.TrimSpace(string(pub))
}

// signatures returns the signatures `nix path-info --json -r` shows for the
// closure of path in st, by path.
func signatures(t *testing.T, st, path string) map[string][]string {
	t.Helper()
	out := nixtest.Nix(t, nil, "nix", "path-info", "--json", "--store", st, "-r", path)
	var infos []struct {
		Path       string   `json:"path"`
		Signatures []string `json:"signatures"`
	}
	if err := json.Unmarshal(out, &infos); err != nil {
		t.Fatalf("nix path-info --json: %v\n%s", err, out)
	}
	m := make(map[string][]string)
	for _, i := range infos {
		slices.Sort(i.Signatures)
		m[i.Path] = i.Signatures
	}
	return m
}

// requireInvalid checks that none of paths is valid in st and that st is
// still consistent.
func requireInvalid(t *testing.T, st string, paths []string) {
	t.Helper()
	for _, p := range paths {
		if _, _, err := nixtest.Try(t, nil, "nix-store", "--store", st, "--check-validity", p); err == nil {
			t.Errorf("%s is valid in %s after a refused copy", p, st)
		}
	}
	nixtest.Nix(t, nil, "nix-store", "--store", st, "--verify", "--check-contents")
}

// requireCopied checks that every path of the closure is in dst as in src
// (nix path-info), signatures included, and that dst verifies.
func requireCopied(t *testing.T, src, dst, top string) {
	t.Helper()
	want, got := nixtest.PathInfos(t, src, "-r", top), nixtest.PathInfos(t, dst, "-r", top)
	for p, w := range want {
		g := got[p]
		if g.NarHash != w.NarHash || g.NarSize != w.NarSize || !slices.Equal(g.References, w.References) || g.Deriver != w.Deriver || g.CA != w.CA {
			t.Errorf("%s:\nin %s: %+v\nin %s: %+v", p, dst, g, src, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("closure of %s: %d paths in %s, %d in %s", top, len(got), dst, len(want), src)
	}
	if ws, gs := signatures(t, src, top), signatures(t, dst, top); !equalSigs(ws, gs) {
		t.Errorf("signatures in %s: %q\nin %s: %q", dst, gs, src, ws)
	}
	nixtest.Nix(t, nil, "nix-store", "--store", dst, "--verify", "--check-contents")
}

func equalSigs(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for p, s := range a {
		if t, ok := b[p]; !ok || !slices.Equal(s, t) {
			return false
		}
	}
	return true
}

// requireBusybox needs the /bin/sh that nixtest.Config gives Nix's sandbox.
func requireBusybox(t *testing.T) {
	t.Helper()
	_, err := os.Stat("/bin/busybox")
	nixtest.Need(t, err)
}

var lacksSig = regexp.MustCompile(`cannot add path '(/nix/store/[^']+)' because it lacks a valid signature`)

// TestCopySignatures copies a closure of input-addressed paths (made by
// real nix-build) from one local store into another, whose configuration
// requires signatures, as Nix 2.8's LocalStore::addToStore does: unsigned
// or untrusted paths are refused before anything is registered; signed
// ones are copied with their signatures; --no-check-sigs and
// require-sigs = false let anything in; a content-addressed path needs no
// signature.
func TestCopySignatures(t *testing.T) {
	nixtest.RequireNix(t)
	requireBusybox(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	top, closure := buildCopyClosure(t, src)
	trustedSecret, trustedPub := genKey(t, "trusted-1")
	otherSecret, _ := genKey(t, "other-1")

	// dstParams, when set, is the query of the destination's URI.
	dstParams := ""
	refused := func(t *testing.T, what string, args ...string) {
		t.Helper()
		dst := filepath.Join(t.TempDir(), "dst")
		args = append(args, "--to", dst+dstParams, top)
		out, errs, code := ferry(t, nil, args...)
		if code == 0 {
			t.Fatalf("%s: ferry %s succeeded\n%s", what, strings.Join(args, " "), errs)
		}
		m := lacksSig.FindStringSubmatch(errs)
		if m == nil || !slices.Contains(closure, m[1]) {
			t.Errorf("%s: ferry %s: exit %d; stderr %q does not say a path of the closure %q lacks a valid signature", what, strings.Join(args, " "), code, errs, closure)
		}
		if out != "" {
			t.Errorf("%s: stdout %q", what, out)
		}
		requireInvalid(t, dst, closure)
	}
	accepted := func(t *testing.T, what string, args ...string) {
		t.Helper()
		dst := filepath.Join(t.TempDir(), "dst")
		args = append(args, "--to", dst+dstParams, top)
		if _, errs, code := ferry(t, nil, args...); code != 0 {
			t.Fatalf("%s: ferry %s: exit %d\n%s", what, strings.Join(args, " "), code, errs)
		}
		requireCopied(t, src, dst, top)
	}

	t.Run("unsigned", func(t *testing.T) {
		copyConfig(t, sigConfig(true, trustedPub))
		refused(t, "unsigned paths", "copy", "--store", src)
		refused(t, "unsigned paths, --from", "copy", "--from", src)
		// The same with the keys in the user's nix.conf instead of
		// NIX_CONFIG.
		copyConfig(t, "")
		conf := filepath.Join(os.Getenv("XDG_CONFIG_HOME"), "nix", "nix.conf")
		os.MkdirAll(filepath.Dir(conf), 0o755)
		if err := os.WriteFile(conf, []byte(sigConfig(true, trustedPub)), 0o644); err != nil {
			t.Fatal(err)
		}
		refused(t, "unsigned paths, keys in nix.conf", "copy", "--store", src)
	})
	if t.Failed() {
		return
	}

	// Signed by a key the destination does not trust.
	nixtest.Nix(t, nil, "nix", "store", "sign", "--store", src, "-k", otherSecret, "-r", top)
	for p, sigs := range signatures(t, src, top) {
		if len(sigs) != 1 || !strings.HasPrefix(sigs[0], "other-1:") {
			t.Fatalf("%s signatures after nix store sign: %q", p, sigs)
		}
	}
	t.Run("untrusted", func(t *testing.T) {
		copyConfig(t, sigConfig(true, trustedPub))
		refused(t, "signed by an untrusted key", "copy", "--store", src)
	})
	t.Run("no-check-sigs", func(t *testing.T) {
		copyConfig(t, sigConfig(true, trustedPub))
		accepted(t, "--no-check-sigs", "copy", "--no-check-sigs", "--store", src)
	})
	t.Run("require-sigs=false", func(t *testing.T) {
		copyConfig(t, sigConfig(false, trustedPub))
		accepted(t, "require-sigs = false", "copy", "--from", src)
	})
	// The destination's require-sigs= replaces nix.conf's, as Nix's
	// LocalStoreConfig setting does.
	t.Run("store require-sigs", func(t *testing.T) {
		defer func() { dstParams = "" }()
		copyConfig(t, sigConfig(true, trustedPub))
		dstParams = "?require-sigs=false"
		accepted(t, "dst?require-sigs=false", "copy", "--store", src)
		copyConfig(t, sigConfig(false, trustedPub))
		dstParams = "?require-sigs=true"
		refused(t, "dst?require-sigs=true", "copy", "--store", src)
	})

	// Signed by the trusted key too.
	nixtest.Nix(t, nil, "nix", "store", "sign", "--store", src, "-k", trustedSecret, "-r", top)
	t.Run("trusted", func(t *testing.T) {
		copyConfig(t, sigConfig(true, trustedPub))
		accepted(t, "signed by a trusted key", "copy", "--store", src)
		accepted(t, "signed by a trusted key, --from", "copy", "--from", src)
		for p, sigs := range signatures(t, src, top) {
			if len(sigs) != 2 {
				t.Errorf("%s signatures: %q, want other-1's and trusted-1's", p, sigs)
			}
		}
	})

	t.Run("content-addressed", func(t *testing.T) {
		copyConfig(t, sigConfig(true, trustedPub))
		file := filepath.Join(t.TempDir(), "ca-file")
		if err := os.WriteFile(file, []byte("content-addressed\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		ca := nixtest.Line(t, "nix-store", "--store", src, "--add", file)
		if sigs := signatures(t, src, ca)[ca]; len(sigs) != 0 {
			t.Fatalf("%s has signatures %q", ca, sigs)
		}
		dst := filepath.Join(t.TempDir(), "dst")
		if _, errs, code := ferry(t, nil, "copy", "--store", src, "--to", dst, ca); code != 0 {
			t.Fatalf("copy of the content-addressed %s: exit %d\n%s", ca, code, errs)
		}
		requireCopied(t, src, dst, ca)
		if info := nixtest.PathInfos(t, dst, ca)[ca]; !strings.HasPrefix(info.CA, "fixed:r:sha256:") {
			t.Errorf("%s in %s: ca %q", ca, dst, info.CA)
		}
	})
}

// TestCopyJSONSummary checks --json: the first copy sends the whole
// closure, counting the NAR bytes nix path-info reports; the second sends
// nothing.
func TestCopyJSONSummary(t *testing.T) {
	nixtest.RequireNix(t)
	requireBusybox(t)
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	top, closure := buildCopyClosure(t, src)
	copyConfig(t, sigConfig(false))
	var narBytes uint64
	for _, info := range nixtest.PathInfos(t, src, "-r", top) {
		narBytes += info.NarSize
	}
	run := func() copySummary {
		t.Helper()
		out, errs, code := ferry(t, nil, "copy", "--json", "--store", src, "--to", dst, top)
		if code != 0 {
			t.Fatalf("copy --json: exit %d\n%s", code, errs)
		}
		if errs != "" {
			t.Errorf("copy --json wrote to stderr: %q", errs)
		}
		var s copySummary
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&s); err != nil || dec.More() {
			t.Fatalf("copy --json printed %q: %v", out, err)
		}
		if s.From != src || s.To != dst || s.Seconds <= 0 {
			t.Errorf("summary %+v: want from %s, to %s, seconds > 0", s, src, dst)
		}
		return s
	}
	first := run()
	if first.Copied != len(closure) || first.Skipped != 0 || first.Bytes != narBytes {
		t.Errorf("first copy: %+v, want copied %d, skipped 0, bytes %d", first, len(closure), narBytes)
	}
	requireCopied(t, src, dst, top)
	second := run()
	if second.Copied != 0 || second.Skipped != len(closure) || second.Bytes != 0 {
		t.Errorf("second copy: %+v, want copied 0, skipped %d, bytes 0", second, len(closure))
	}
}

// TestCopyVerbose checks that -v shows the protocol steps of a copy to an
// ssh:// store: the locked query, then the uploads; nothing is uploaded
// the second time.
func TestCopyVerbose(t *testing.T) {
	nixtest.RequireNix(t)
	ferryBin := nixtest.FerryBin(t) // before copyConfig: go build needs the real HOME's caches
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	copyConfig(t, sigConfig(true))
	file := filepath.Join(dir, "verbose-file")
	if err := os.WriteFile(file, []byte("verbose\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := nixtest.Line(t, "nix-store", "--store", src, "--add", file)
	uri := "ssh://localhost?remote-program=" + ferryBin + "&remote-store=" + dst
	out, errs, code := ferry(t, nil, "-v", "copy", "--store", src, "--to", uri, p)
	if code != 0 {
		t.Fatalf("ferry -v copy: exit %d\n%s", code, errs)
	}
	if out != "" {
		t.Errorf("stdout %q", out)
	}
	lines := strings.Split(errs, "\n")
	query := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "QueryValidPaths") })
	add := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "AddToStoreNar") })
	if query < 0 || add < 0 || query > add {
		t.Errorf("ferry -v copy to %s: stderr does not show QueryValidPaths, then AddToStoreNar:\n%s", uri, errs)
	}
	nixtest.Nix(t, nil, "nix-store", "--store", dst, "--check-validity", p)

	_, errs, code = ferry(t, nil, "-v", "copy", "--store", src, "--to", uri, p)
	if code != 0 || !strings.Contains(errs, "QueryValidPaths") || strings.Contains(errs, "AddToStoreNar") {
		t.Errorf("second ferry -v copy: exit %d; want QueryValidPaths and no AddToStoreNar:\n%s", code, errs)
	}
}

// tmuxSession runs command in a detached tmux session on its own server
// (its own socket, in a short temporary directory: a socket's path has a
// short limit) with a width x 50 screen, and returns a function that
// captures the screen. The server is killed and its socket removed when
// the test ends.
func tmuxSession(t *testing.T, name string, width int, command string) (capture func() string) {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "tmux")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(sockDir, "s")
	// Not a session nested in the one the tests may run in.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "TMUX=") })
	tmux := func(args ...string) ([]byte, error) {
		cmd := exec.Command("tmux", append([]string{"-S", sock, "-f", "/dev/null"}, args...)...)
		cmd.Env = env
		return cmd.CombinedOutput()
	}
	t.Cleanup(func() {
		tmux("kill-server")
		os.RemoveAll(sockDir)
	})
	if out, err := tmux("new-session", "-d", "-s", name, "-x", fmt.Sprint(width), "-y", "50", command); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	return func() string {
		out, err := tmux("capture-pane", "-p", "-t", name)
		if err != nil {
			t.Fatalf("tmux capture-pane: %v\n%s", err, out)
		}
		return string(out)
	}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func nonEmptyLines(screen string) []string {
	var out []string
	for _, l := range strings.Split(screen, "\n") {
		if l = strings.TrimRight(l, " "); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// progressLine matches the progress display's line: percentage, bar,
// bytes sent of the total and the rate, paths done of the total.
var progressLine = regexp.MustCompile(`^ *(\d+)% \|[█ ]*\| \( *\d+(\.\d)?( (B|[KMG]iB))?/\d+(\.\d)? [KMG]iB(, \d+(\.\d)? (B|[KMG]iB)/s)?\) 0/1 paths(, ETA [^:]+)?: `)

// TestCopyProgressTerminal runs the real ferry in a real terminal (tmux),
// copying one path of 256 MiB of random data, whose name is too long for
// the line, to ssh://localhost (ferry serve, no sshd). The screen shows
// the progress on one line that fits the terminal (the name cut short), at
// 200 and at 80 columns, and then a summary line only. With stderr not a
// terminal, a successful copy writes nothing there.
func TestCopyProgressTerminal(t *testing.T) {
	nixtest.RequireNix(t)
	nixtest.Require(t, "tmux")
	ferryBin := nixtest.FerryBin(t) // before copyConfig: go build needs the real HOME's caches
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	copyConfig(t, sigConfig(true))

	name := "big-" + strings.Repeat("x", 180)
	file := filepath.Join(dir, name)
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 1<<20)
	for range 256 {
		rng.Read(buf)
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	p := nixtest.Line(t, "nix-store", "--store", src, "--add", file)
	os.Remove(file)

	for _, width := range []int{200, 80} {
		t.Run(fmt.Sprint(width), func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst")
			uri := "ssh://localhost?remote-program=" + ferryBin + "&remote-store=" + dst
			cmd := strings.Join([]string{shellQuote(ferryBin), "copy", "--store", shellQuote(src), "--to", shellQuote(uri), shellQuote(p)}, " ") +
				`; echo "EXIT=$?"; sleep 30`
			session := fmt.Sprintf("ferry-copy-%d-%d", os.Getpid(), width)
			capture := tmuxSession(t, session, width, cmd)

			var screen string
			var midway []string // progress lines seen before the end
			odd := 0            // screens in a row that were not one progress line
			deadline := time.Now().Add(2 * time.Minute)
			for {
				screen = capture()
				if strings.Contains(screen, "EXIT=") || strings.Contains(screen, "copied ") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the copy did not end:\n%s", screen)
				}
				lines := nonEmptyLines(screen)
				if len(lines) == 0 {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				if len(lines) != 1 || !progressLine.MatchString(lines[0]) {
					// Once may be tmux caught between two reads of one
					// redraw; twice in a row is the display.
					if odd++; odd == 2 {
						t.Fatalf("the screen during the copy is not one progress line (percentage, bar, bytes, rate, paths, the path):\n%s", screen)
					}
					continue
				}
				odd = 0
				if m := progressLine.FindStringSubmatch(lines[0]); m[1] != "100" {
					midway = append(midway, lines[0])
				}
				time.Sleep(20 * time.Millisecond)
			}
			if len(midway) == 0 {
				t.Fatalf("no progress seen before the copy ended:\n%s", screen)
			}
			t.Logf("%d progress lines, e.g. %q", len(midway), midway[len(midway)/2])
			if !slices.ContainsFunc(midway, func(l string) bool { return strings.Contains(l, "MiB/s)") }) {
				t.Errorf("no progress line shows the rate: %q", midway)
			}
			for _, l := range midway {
				if len([]rune(l)) >= width {
					t.Errorf("progress line is %d columns on a %d-column terminal: %q", len([]rune(l)), width, l)
				}
				if !strings.Contains(l, ": big-") || !strings.HasSuffix(l, "…") {
					t.Errorf("progress line %q does not show the path being sent, cut short", l)
				}
			}
			for !strings.Contains(screen, "EXIT=") && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				screen = capture()
			}
			// The summary replaces the bar: nothing else is left.
			lines := nonEmptyLines(screen)
			summary := regexp.MustCompile(`^copied 1/1 paths, 256\.0 MiB in \S+ \([0-9.]+ [KMG]iB/s\)$`)
			if len(lines) != 2 || !summary.MatchString(lines[0]) || lines[1] != "EXIT=0" {
				t.Fatalf("the screen after the copy:\n%s\nwant the summary line and EXIT=0", screen)
			}
			nixtest.Nix(t, nil, "nix-store", "--store", dst, "--check-validity", p)
		})
	}

	t.Run("not a terminal", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "dst")
		uri := "ssh://localhost?remote-program=" + ferryBin + "&remote-store=" + dst
		errFile, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
		if err != nil {
			t.Fatal(err)
		}
		defer errFile.Close()
		var out bytes.Buffer
		cmd := exec.Command(ferryBin, "copy", "--store", src, "--to", uri, p)
		cmd.Stdout, cmd.Stderr = &out, errFile
		if err := cmd.Run(); err != nil {
			data, _ := os.ReadFile(errFile.Name())
			t.Fatalf("ferry copy: %v\n%s", err, data)
		}
		if data, _ := os.ReadFile(errFile.Name()); len(data) != 0 || out.Len() != 0 {
			t.Errorf("ferry copy with stderr not a terminal wrote %q to stderr, %q to stdout", data, out.String())
		}
		nixtest.Nix(t, nil, "nix-store", "--store", dst, "--check-validity", p)
	})
}
