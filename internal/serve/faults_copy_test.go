package serve

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"ferry/internal/nixtest"
	"ferry/internal/sshtest"
	"ferry/nix/storepath"
)

// faultSource makes a source store holding the 61-path closure of
// makeClosure plus a 96 MiB path, and a top text object referring to both,
// so a copy of top runs long enough to be cut short.
func faultSource(t *testing.T, env []string) (src, top string) {
	t.Helper()
	src = filepath.Join(t.TempDir(), "src")
	c := makeClosure(t, env, src)
	big := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, 96<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	bigPath := strings.TrimSpace(runTool(t, env, "nix-store", "--store", src, "--add", big))
	top = strings.Trim(strings.TrimSpace(runTool(t, env, "nix-instantiate", "--store", src, "--read-write-mode", "--eval", "-E",
		fmt.Sprintf(`builtins.toFile "top" "${builtins.storePath %q} ${builtins.storePath %q}"`, string(c.top), bigPath))), `"`)
	return src, top
}

// pidWrapper writes a remote program that records its pid and then
// becomes program (exec), so the test can kill the serve process.
func pidWrapper(t *testing.T, program string) (wrapper, pidFile string) {
	t.Helper()
	dir := t.TempDir()
	pidFile = filepath.Join(dir, "pid")
	wrapper = filepath.Join(dir, "serve")
	script := fmt.Sprintf("#!/bin/sh\necho $$ > %s\nexec %s \"$@\"\n", pidFile, program)
	if err := nixtest.WriteExecutable(wrapper, []byte(script)); err != nil {
		t.Fatal(err)
	}
	return wrapper, pidFile
}

// startCopy runs ferry -v copy with args and returns it once it has begun
// uploading (its -v trace names AddToStoreNar).
func startCopy(t *testing.T, env []string, ferry string, args ...string) (*exec.Cmd, *bytes.Buffer, chan error) {
	t.Helper()
	cmd := exec.Command(ferry, append([]string{"-v", "copy"}, args...)...)
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	uploading := make(chan struct{})
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "AddToStoreNar") {
				once = true
				close(uploading)
			}
		}
	}()
	done := make(chan error, 1)
	go func() { <-copied; done <- cmd.Wait() }()
	select {
	case <-uploading:
	case err := <-done:
		t.Fatalf("ferry copy ended before uploading: %v\n%s", err, log.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("ferry copy never started uploading\n%s", log.String())
	}
	// Let part of the upload through.
	time.Sleep(300 * time.Millisecond)
	return cmd, &log, done
}

// TestSSHFerryCopyFaults cuts a ferry copy short (SIGINT to ferry copy; the
// remote serve process killed), into real nix-store --serve and into ferry
// serve over sshd: the copy fails naming the remote, both stores stay valid
// (nix-store --verify --check-contents), only complete paths are valid at
// the destination, and the next copy completes, sending only what is still
// missing.
func TestSSHFerryCopyFaults(t *testing.T) {
	requireSSHInterop(t)
	ferry := ferryBin(t)
	env := nixtest.Env(t.TempDir())
	src, top := faultSource(t, env)
	total := len(strings.Fields(runTool(t, env, "nix-store", "--store", src, "-qR", top)))
	s := sshtest.Start(t, nil)
	cenv := append(append([]string{}, env...), s.Env()...)

	for _, remote := range remotePrograms(ferry) {
		for _, fault := range []string{"interrupt", "killed server"} {
			t.Run(remote.name+"/"+fault, func(t *testing.T) {
				dst := filepath.Join(t.TempDir(), "dst")
				wrapper, pidFile := pidWrapper(t, remote.program)
				uri := remoteURI(s, wrapper, dst)
				cmd, log, done := startCopy(t, cenv, ferry, "--store", src, "--to", uri, top)
				switch fault {
				case "interrupt":
					cmd.Process.Signal(os.Interrupt)
				case "killed server":
					data, err := os.ReadFile(pidFile)
					if err != nil {
						t.Fatal(err)
					}
					pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
					if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
						t.Fatalf("kill the serve process %d: %v", pid, err)
					}
				}
				var err error
				select {
				case err = <-done:
				case <-time.After(30 * time.Second):
					cmd.Process.Kill()
					t.Fatalf("ferry copy did not end after the fault\n%s", log.String())
				}
				if err == nil {
					t.Fatalf("ferry copy succeeded despite the fault\n%s", log.String())
				}
				if !strings.Contains(log.String(), "error: copy to "+uri) {
					t.Errorf("the error does not name the destination:\n%s", log.String())
				}
				t.Logf("%s: %v: %s", fault, err, lastLines(log.String(), 2))
				// Give the remote a moment to finish its session end.
				time.Sleep(200 * time.Millisecond)
				verifyStore(t, env, dst)
				verifyStore(t, env, src)
				out := runTool(t, cenv, ferry, "copy", "--json", "--store", src, "--to", remoteURI(s, remote.program, dst), top)
				t.Logf("the next copy: %s", strings.TrimSpace(out))
				if !strings.Contains(out, fmt.Sprintf(`"skipped":%d`, total-countCopied(t, out))) {
					t.Errorf("copied and skipped do not add up to %d: %s", total, out)
				}
				verifyStore(t, env, dst)
				samePathInfos(t, "after the fault and a second copy", pathInfos(t, env, src, storepath.Path(top)), pathInfos(t, env, dst, storepath.Path(top)))
			})
		}
	}
}

// TestSSHFerryCopyRefused sends a path whose contents no longer match its
// recorded hash (the source file was changed after registration): the
// remote refuses it, ferry copy fails with the remote's message, and the
// destination stays valid without it.
func TestSSHFerryCopyRefused(t *testing.T) {
	requireSSHInterop(t)
	ferry := ferryBin(t)
	env := nixtest.Env(t.TempDir())
	src := filepath.Join(t.TempDir(), "src")
	file := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(file, []byte("original contents\n"), 0o644)
	p := strings.TrimSpace(runTool(t, env, "nix-store", "--store", src, "--add", file))
	real := filepath.Join(src, p)
	os.Chmod(filepath.Dir(real), 0o755)
	os.Chmod(real, 0o644)
	if err := os.WriteFile(real, []byte("changed contents!\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	s := sshtest.Start(t, nil)
	cenv := append(append([]string{}, env...), s.Env()...)
	for _, remote := range []struct{ name, program, says string }{
		{"nix-store --serve", "nix-store", "hash mismatch"},
		{"ferry serve", ferry, "hash mismatch"},
	} {
		t.Run(remote.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst")
			uri := remoteURI(s, remote.program, dst)
			_, stderr, err := tryTool(cenv, ferry, "copy", "--store", src, "--to", uri, p)
			if err == nil {
				t.Fatal("ferry copy of a corrupt path succeeded")
			}
			if !strings.Contains(stderr, remote.says) || !strings.Contains(stderr, uri) {
				t.Errorf("ferry copy's error lacks the remote's message %q or the URI:\n%s", remote.says, stderr)
			}
			t.Logf("refused: %s", strings.TrimSpace(stderr))
			verifyStore(t, env, dst)
			if _, _, err := tryTool(env, "nix-store", "--store", dst, "--check-validity", p); err == nil {
				t.Errorf("%s is valid at the destination after the refusal", p)
			}
		})
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}

func countCopied(t *testing.T, summary string) int {
	t.Helper()
	i := strings.Index(summary, `"copied":`)
	if i < 0 {
		t.Fatalf("no copied count in %s", summary)
	}
	rest := summary[i+len(`"copied":`):]
	j := strings.IndexAny(rest, ",}")
	n, err := strconv.Atoi(rest[:j])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSSHFerryCopyDiskFull copies a closure whose last path does not fit on
// the remote's disk (its store is on a 3 MiB tmpfs, mounted in a private
// user and mount namespace by the remote program's wrapper): the copy fails
// with the remote's "No space left on device", the remote store still
// passes nix-store --verify --check-contents (run by the wrapper once the
// server is done, while the tmpfs is still there), and the big path is not
// valid there.
func TestSSHFerryCopyDiskFull(t *testing.T) {
	requireSSHInterop(t)
	nixtest.Require(t, "unshare")
	ferry := ferryBin(t)
	env := nixtest.Env(t.TempDir())
	src := filepath.Join(t.TempDir(), "src")
	files := t.TempDir()
	small := filepath.Join(files, "small")
	os.WriteFile(small, []byte("a small path that fits\n"), 0o644)
	smallPath := strings.TrimSpace(runTool(t, env, "nix-store", "--store", src, "--add", small))
	big := filepath.Join(files, "big")
	f, _ := os.Create(big)
	io.CopyN(f, rand.Reader, 8<<20)
	f.Close()
	bigPath := strings.TrimSpace(runTool(t, env, "nix-store", "--store", src, "--add", big))
	top := strings.Trim(strings.TrimSpace(runTool(t, env, "nix-instantiate", "--store", src, "--read-write-mode", "--eval", "-E",
		fmt.Sprintf(`builtins.toFile "top" "${builtins.storePath %q} ${builtins.storePath %q}"`, smallPath, bigPath))), `"`)
	s := sshtest.Start(t, nil)
	cenv := append(append([]string{}, env...), s.Env()...)
	for _, remote := range remotePrograms(ferry) {
		t.Run(remote.name, func(t *testing.T) {
			disk := t.TempDir()
			out := t.TempDir()
			dst := filepath.Join(disk, "store")
			wrapper := filepath.Join(out, "serve")
			script := fmt.Sprintf(`#!/bin/sh
exec unshare -Urm sh -c 'mount -t tmpfs -o size=3m tmpfs %[1]s || exit 1
%[2]s "$@"; status=$?
nix-store --store %[3]s --verify --check-contents >%[4]s/verify.log 2>&1; echo $? >%[4]s/verify.status
nix-store --store %[3]s --check-validity %[5]s >%[4]s/big.log 2>&1; echo $? >%[4]s/big.status
exit $status' sh "$@"
`, disk, remote.program, dst, out, bigPath)
			if err := nixtest.WriteExecutable(wrapper, []byte(script)); err != nil {
				t.Fatal(err)
			}
			uri := remoteURI(s, wrapper, dst)
			_, stderr, err := tryTool(cenv, ferry, "copy", "--store", src, "--to", uri, top)
			if err == nil {
				t.Fatal("ferry copy of 8 MiB onto a 3 MiB disk succeeded")
			}
			if !strings.Contains(strings.ToLower(stderr), "no space left on device") || !strings.Contains(stderr, uri) {
				t.Errorf("ferry copy's error lacks the remote's disk-full message or the URI:\n%s", stderr)
			}
			t.Logf("refused: %s", lastLines(stderr, 3))
			// The wrapper checks the store once the server has ended.
			var status []byte
			for i := 0; i < 100; i++ {
				if status, _ = os.ReadFile(filepath.Join(out, "big.status")); len(status) > 0 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			verify, _ := os.ReadFile(filepath.Join(out, "verify.log"))
			if vs, _ := os.ReadFile(filepath.Join(out, "verify.status")); strings.TrimSpace(string(vs)) != "0" ||
				strings.Contains(string(verify), "error") {
				t.Errorf("the remote store does not verify after the disk filled (status %q):\n%s", vs, verify)
			}
			if strings.TrimSpace(string(status)) == "0" || len(status) == 0 {
				t.Errorf("the path that did not fit is valid on the remote (status %q)", status)
			}
		})
	}
}
