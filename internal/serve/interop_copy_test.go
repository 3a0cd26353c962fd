package serve

import (
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"ferry/internal/nixtest"
	"ferry/internal/sshtest"
)

// TestSSHFerryCopy copies a closure of 61 paths, signed with a key made by
// real Nix, with ferry copy over a real sshd: to real nix-store --serve and
// to ferry serve, back again with --from, and from one ssh store to
// another. Every store passes nix-store --verify --check-contents, and nix
// path-info --json agrees on every side (NAR hash and size, references,
// CA, deriver, signatures).
func TestSSHFerryCopy(t *testing.T) {
	requireSSHInterop(t)
	ferry := ferryBin(t)
	env := nixtest.Env(t.TempDir())
	src := filepath.Join(t.TempDir(), "src")
	c := makeClosure(t, env, src)
	keys := t.TempDir()
	runTool(t, env, "nix-store", "--generate-binary-cache-key", "ferry-test-1", filepath.Join(keys, "secret"), filepath.Join(keys, "public"))
	runTool(t, env, "nix", "store", "sign", "--store", src, "-k", filepath.Join(keys, "secret"), "-r", string(c.top))
	want := pathInfos(t, env, src, c.top)
	for _, info := range want {
		if len(info.Sigs) != 1 {
			t.Fatalf("%s has signatures %v after nix store sign", info.Path, info.Sigs)
		}
	}
	if len(want) < 60 {
		t.Fatalf("closure of %d paths, want at least 60", len(want))
	}
	s := sshtest.Start(t, nil)
	cenv := append(append([]string{}, env...), s.Env()...)

	for _, remote := range remotePrograms(ferry) {
		t.Run(remote.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst")
			uri := remoteURI(s, remote.program, dst)
			out := runTool(t, cenv, ferry, "copy", "--json", "--store", src, "--to", uri, string(c.top))
			if !strings.Contains(out, `"copied":61`) || !strings.Contains(out, `"skipped":0`) {
				t.Errorf("ferry copy --to: %s", out)
			}
			verifyStore(t, env, dst)
			samePathInfos(t, "ferry copy --to", want, pathInfos(t, env, dst, c.top))

			// Nothing missing: nothing sent.
			out = runTool(t, cenv, ferry, "copy", "--json", "--store", src, "--to", uri, string(c.top))
			if !strings.Contains(out, `"copied":0`) || !strings.Contains(out, `"skipped":61`) {
				t.Errorf("second ferry copy --to: %s", out)
			}

			back := filepath.Join(t.TempDir(), "back")
			trust := append(append([]string{}, cenv...), "NIX_CONFIG="+nixtest.Config+"require-sigs = true\ntrusted-public-keys = "+strings.TrimSpace(readFile(t, filepath.Join(keys, "public")))+"\n")
			runTool(t, trust, ferry, "copy", "--store", back, "--from", uri, string(c.top))
			verifyStore(t, env, back)
			samePathInfos(t, "ferry copy --from (signatures checked)", want, pathInfos(t, env, back, c.top))

			// From one ssh store to another.
			other := filepath.Join(t.TempDir(), "other")
			otherURI := remoteURI(s, remote.program, other)
			runTool(t, cenv, ferry, "copy", "--from", uri, "--to", otherURI, string(c.top))
			verifyStore(t, env, other)
			samePathInfos(t, "ferry copy --from ssh --to ssh", want, pathInfos(t, env, other, c.top))
		})
	}
}

// remoteProgram is a serve program the client tests run on the far side.
type remoteProgram struct{ name, program string }

// remotePrograms are real nix-store --serve and ferry serve.
func remotePrograms(ferry string) []remoteProgram {
	return []remoteProgram{{"nix-store --serve", "nix-store"}, {"ferry serve", ferry}}
}

// remoteURI names the store at root behind sshd s, served by program.
func remoteURI(s *sshtest.Server, program, root string) string {
	return s.URI() + "?remote-program=" + program + "&remote-store=" + root
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestSSHFerryCopyStreams copies one 128 MiB path both ways over sshd and
// checks that ferry copy's resident memory stays far below the path's
// size: NARs stream, they are never held whole.
func TestSSHFerryCopyStreams(t *testing.T) {
	requireSSHInterop(t)
	ferry := ferryBin(t)
	env := nixtest.Env(t.TempDir())
	big := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	const size = 128 << 20
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	src := filepath.Join(t.TempDir(), "src")
	p := strings.TrimSpace(runTool(t, env, "nix-store", "--store", src, "--add", big))
	s := sshtest.Start(t, nil)
	cenv := append(append([]string{}, env...), s.Env()...)
	maxRSS := func(args ...string) int64 {
		t.Helper()
		cmd := exec.Command(ferry, args...)
		cmd.Env = cenv
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ferry %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
	}
	for _, remote := range remotePrograms(ferry) {
		t.Run(remote.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst")
			uri := remoteURI(s, remote.program, dst)
			to := maxRSS("copy", "--store", src, "--to", uri, p)
			back := filepath.Join(t.TempDir(), "back")
			from := maxRSS("copy", "--no-check-sigs", "--store", back, "--from", uri, p)
			t.Logf("max RSS copying %d MiB: --to %d MiB, --from %d MiB", size>>20, to>>20, from>>20)
			for _, rss := range []int64{to, from} {
				if rss > 96<<20 {
					t.Errorf("ferry copy used %d MiB of memory for a %d MiB path", rss>>20, size>>20)
				}
			}
			verifyStore(t, env, back)
			runTool(t, env, "nix-store", "--store", back, "--check-validity", p)
		})
	}
}

// TestSSHFerryQueries runs ferry's own read-only commands against an
// ssh:// store (real nix-store --serve and ferry serve over sshd) and
// requires the output ferry gives on the same store opened locally; what
// the serve protocol cannot do fails with an error that says so.
func TestSSHFerryQueries(t *testing.T) {
	requireSSHInterop(t)
	ferry := ferryBin(t)
	env := nixtest.Env(t.TempDir())
	root := filepath.Join(t.TempDir(), "store")
	c := makeClosure(t, env, root)
	top := string(c.top)
	s := sshtest.Start(t, nil)
	cenv := append(append([]string{}, env...), s.Env()...)
	for _, remote := range remotePrograms(ferry) {
		uri := remoteURI(s, remote.program, root)
		for _, args := range [][]string{
			{"path-info", "--closure", "--size", "--closure-size", top},
			{"query", "--requisites", top},
			{"query", "--references", top},
			{"query", "--deriver", top},
			{"store", "dump", c.all[0].String()},
		} {
			t.Run(remote.name+"/"+strings.Join(args[:len(args)-1], " "), func(t *testing.T) {
				want := runTool(t, cenv, ferry, append([]string{"--store", root}, args...)...)
				got := runTool(t, cenv, ferry, append([]string{"--store", uri}, args...)...)
				if got != want || want == "" {
					t.Errorf("ferry %s over ssh differs from the local store's answer\n ssh:   %.300q\n local: %.300q", strings.Join(args, " "), got, want)
				}
			})
		}
		for _, tc := range []struct {
			args []string
			says string
		}{
			{[]string{"query", "--referrers", top}, "cannot list referrers"},
			{[]string{"store", "verify"}, "it needs a local store"},
			{[]string{"gc", "--dry-run"}, "it needs a local store"},
		} {
			t.Run(remote.name+"/"+strings.Join(tc.args, " "), func(t *testing.T) {
				_, stderr, err := tryTool(cenv, ferry, append([]string{"--store", uri}, tc.args...)...)
				if err == nil || !strings.Contains(stderr, tc.says) || !strings.Contains(stderr, uri) {
					t.Errorf("ferry %s on %s: %v\n%s\nwant an error naming the store and saying %q", strings.Join(tc.args, " "), uri, err, stderr, tc.says)
				}
			})
		}
	}
}

// TestSSHFerryCopyIncludeOutputs copies a .drv built by real nix-build:
// without --include-outputs only the derivation's closure goes, with it
// the outputs go too (as nix copy's and nix-copy-closure's option).
func TestSSHFerryCopyIncludeOutputs(t *testing.T) {
	requireSSHInterop(t)
	ferry := ferryBin(t)
	env := nixtest.Env(t.TempDir())
	src := filepath.Join(t.TempDir(), "src")
	expr := `derivation { name = "incl"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo built > $out" ]; }`
	drv := strings.TrimSpace(runTool(t, env, "nix-instantiate", "--store", src, "-E", expr))
	out := strings.TrimSpace(runTool(t, env, "nix-build", "--store", src, "--no-out-link", drv))
	s := sshtest.Start(t, nil)
	cenv := append(append([]string{}, env...), s.Env()...)
	for _, remote := range remotePrograms(ferry) {
		t.Run(remote.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst")
			uri := remoteURI(s, remote.program, dst)
			runTool(t, cenv, ferry, "copy", "--store", src, "--to", uri, drv)
			runTool(t, env, "nix-store", "--store", dst, "--check-validity", drv)
			if _, _, err := tryTool(env, "nix-store", "--store", dst, "--check-validity", out); err == nil {
				t.Errorf("%s was copied without --include-outputs", out)
			}
			runTool(t, cenv, ferry, "copy", "--include-outputs", "--store", src, "--to", uri, drv)
			runTool(t, env, "nix-store", "--store", dst, "--check-validity", drv, out)
			verifyStore(t, env, dst)
		})
	}
}
