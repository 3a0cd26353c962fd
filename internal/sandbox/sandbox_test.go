//go:build linux

package sandbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ferry/internal/nixtest"
	"ferry/internal/sandbox"
)

func TestMain(m *testing.M) {
	sandbox.Init()
	os.Exit(m.Run())
}

const (
	storeDir = "/nix/store"
	busybox  = "/bin/busybox"
	inDir    = storeDir + "/0c9b2nyhcdkcccyx9rx8ma0wf1fkc3v6-input-dir"
	inFile   = storeDir + "/1d8vq0b2pqr3bv7x9hqlw6yjz4c5rf2m-input-file"
	inLink   = storeDir + "/2mw0a3kz6p1fq9xj8b2dn5lh7c4v0rsg-input-link"
	secret   = storeDir + "/3xq9kw2m1zv8b6j0c7p5n4d3f2h1g0ls-not-an-input"
	outDir   = storeDir + "/4a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-out"
	outFile  = storeDir + "/5a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-out-file"
	outNone  = storeDir + "/6a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-never-built"
)

func requireSandbox(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(busybox); err != nil {
		if nixtest.InCI() {
			t.Fatalf("busybox: %v", err)
		}
		t.Skipf("busybox: %v", err)
	}
	if err := sandbox.Available(); err != nil {
		if nixtest.InCI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

// fakeStore makes a physical store directory holding the input paths and
// one path that is not an input.
func fakeStore(t *testing.T) string {
	t.Helper()
	real := filepath.Join(t.TempDir(), "store")
	must(t, os.MkdirAll(filepath.Join(real, filepath.Base(inDir), "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(real, filepath.Base(inDir), "sub", "data"), []byte("input data\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(real, filepath.Base(inFile)), []byte("input file\n"), 0o444))
	must(t, os.Symlink(inFile, filepath.Join(real, filepath.Base(inLink))))
	must(t, os.MkdirAll(filepath.Join(real, filepath.Base(secret)), 0o755))
	return real
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// noUserNS reports whether this test binary runs its sandboxes without a
// user namespace (see export_test.go); they then use nobody as build user.
func noUserNS() bool { return os.Getenv("FERRY_SANDBOX_TEST_NO_USERNS") == "1" }

// sandboxSpec returns a sandboxed spec running script with /bin/sh.
func sandboxSpec(t *testing.T, script string) *sandbox.Spec {
	t.Helper()
	spec := newSandboxSpec(t, script)
	if noUserNS() {
		spec.UID, spec.GID = 65534, 65534
		must(t, os.Chown(spec.BuildDir, spec.UID, spec.GID))
	}
	return spec
}

func newSandboxSpec(t *testing.T, script string) *sandbox.Spec {
	t.Helper()
	real := fakeStore(t)
	return &sandbox.Spec{
		Sandbox:      true,
		Builder:      "/bin/sh",
		Args:         []string{"-c", script},
		Env:          []string{"PATH=/path-not-set", "HOME=/homeless-shelter", "B=" + busybox},
		BuildDir:     t.TempDir(),
		StoreDir:     storeDir,
		RealStoreDir: real,
		Name:         "3c5pfh1k0zv0bfk8xq1dgvqjq7y0p1dl-test.drv",
		Inputs:       []string{inDir, inFile, inLink},
		Outputs:      []string{outDir, outFile, outNone},
		Paths:        map[string]string{"/bin/sh": busybox, "/bin/busybox": busybox, "/no/such/path": "/no/such/source?"},
	}
}

// run runs spec to completion and returns its merged output.
func run(t *testing.T, spec *sandbox.Spec) (string, error) {
	t.Helper()
	var out bytes.Buffer
	spec.Stdout = &out
	p, err := sandbox.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	err = p.Wait()
	return out.String(), err
}

// keyValues parses "key=value" lines.
func keyValues(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

func TestSandboxStoreHoldsOnlyInputs(t *testing.T) {
	requireSandbox(t)
	spec := sandboxSpec(t, `
		$B ls -a /nix/store
		echo ---
		$B cat `+inDir+`/sub/data `+inFile+` `+inLink+`
		echo ---
		$B ls `+secret+` 2>/dev/null && echo secret-visible
		echo x 2>/dev/null >`+inFile+` && echo input-writable
		echo x 2>/dev/null >`+inDir+`/sub/data && echo input-writable
		$B chmod u+w `+inDir+`/sub/data 2>/dev/null && echo input-chmod
		$B touch `+inDir+`/new 2>/dev/null && echo input-dir-writable
		echo x 2>/dev/null >/bin/busybox && echo busybox-writable
		exit 0
	`)
	out, err := run(t, spec)
	if err != nil {
		t.Fatalf("Wait: %v\n%s", err, out)
	}
	parts := strings.Split(out, "---\n")
	if len(parts) != 3 {
		t.Fatalf("output:\n%s", out)
	}
	var want []string
	for _, p := range spec.Inputs {
		want = append(want, filepath.Base(p))
	}
	sort.Strings(want)
	want = append([]string{".", ".."}, want...)
	if got := strings.Fields(parts[0]); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("store listing = %q, want %q", got, want)
	}
	if got, want := parts[1], "input data\ninput file\ninput file\n"; got != want {
		t.Errorf("input contents = %q, want %q", got, want)
	}
	if parts[2] != "" {
		t.Errorf("the builder could reach or change what it must not:\n%s", parts[2])
	}
	data, err := os.ReadFile(filepath.Join(spec.RealStoreDir, filepath.Base(inDir), "sub", "data"))
	if err != nil || string(data) != "input data\n" {
		t.Errorf("input on the host = %q, %v", data, err)
	}
}

func TestSandboxEnvironment(t *testing.T) {
	requireSandbox(t)
	spec := sandboxSpec(t, `
		echo pwd=$($B pwd)
		echo PWD=$PWD
		echo pid=$$
		echo uid=$($B id -u)
		echo gid=$($B id -g)
		echo hostname=$($B hostname)
		echo domainname=$($B cat /proc/sys/kernel/domainname)
		echo pids=$($B ls /proc | $B grep '^[0-9]' | $B sort -n | $B tr '\n' ,)
		echo links=$($B ls /sys/class/net 2>/dev/null; $B cat /proc/net/dev | $B tail -n +3 | $B cut -d: -f1 | $B tr -d ' ' | $B tr '\n' ,)
		echo lo=$($B ip link show lo | $B grep -c UP)
		echo personality=$($B cat /proc/self/personality)
		echo nonewprivs=$($B grep NoNewPrivs /proc/self/status | $B tr -d '\t ' | $B cut -d: -f2)
		echo capeff=$($B grep CapEff /proc/self/status | $B tr -d '\t ' | $B cut -d: -f2)
		echo seccomp=$($B grep Seccomp: /proc/self/status | $B tr -d '\t ' | $B cut -d: -f2)
		echo x >/tmp/suid; $B chmod 4755 /tmp/suid 2>/dev/null && echo setuid=allowed
		$B chmod 0755 /tmp/suid && echo chmod=ok
		echo core=$(ulimit -c)
		echo umask=$(umask)
		echo tmp=$($B stat -c %f /tmp)
		echo store=$($B stat -c %f /nix/store)
		echo null=$(echo hi >/dev/null && echo ok)
		echo devs=$($B ls /dev | $B tr '\n' ,)
		echo fd=$($B readlink /dev/fd)
		echo shm=$($B grep -c ' /dev/shm ' /proc/mounts)
		echo env=$($B env | $B sort | $B tr '\n' ,)
		echo "passwd<<$($B cat /etc/passwd)>>"
		echo "group<<$($B cat /etc/group)>>"
		echo "hosts<<$($B cat /etc/hosts)>>"
		echo written >/build/from-builder
		echo tmpfile >/tmp/x && echo tmpwrite=ok
	`)
	must(t, os.WriteFile(filepath.Join(spec.BuildDir, "from-host"), nil, 0o644))
	out, err := run(t, spec)
	if err != nil {
		t.Fatalf("Wait: %v\n%s", err, out)
	}
	kv := keyValues(out)
	want := map[string]string{
		"pwd":         "/build",
		"PWD":         "/build",
		"pid":         "1",
		"hostname":    "localhost",
		"domainname":  "(none)",
		"links":       "lo,",
		"lo":          "1",
		"personality": "00040000",
		"nonewprivs":  "1",
		"capeff":      "0000000000000000",
		"core":        "0",
		"seccomp":     "2",
		"chmod":       "ok",
		"setuid":      "",
		"umask":       "0022",
		"tmp":         "43ff",
		"store":       "43fd",
		"null":        "ok",
		"devs":        "fd,full,null,ptmx,pts,random,shm,stderr,stdin,stdout,tty,urandom,zero,",
		"fd":          "/proc/self/fd",
		"shm":         "1",
		"env":         "B=/bin/busybox,HOME=/homeless-shelter,PATH=/path-not-set,PWD=/build,SHLVL=1,",
		"tmpwrite":    "ok",
	}
	want["uid"], want["gid"] = "1000", "100"
	if noUserNS() {
		want["uid"], want["gid"] = "65534", "65534"
	}
	pids := strings.Split(strings.TrimSuffix(kv["pids"], ","), ",")
	if len(pids) == 0 || pids[0] != "1" || len(pids[len(pids)-1]) > 2 {
		t.Errorf("pids = %q, want 1 and a few more below 100", kv["pids"])
	}
	for k, v := range want {
		if kv[k] != v {
			t.Errorf("%s = %q, want %q", k, kv[k], v)
		}
	}
	for name, content := range map[string]string{
		"passwd": "root:x:0:0:Nix build user:/build:/noshell\nnixbld:x:1000:100:Nix build user:/build:/noshell\nnobody:x:65534:65534:Nobody:/:/noshell",
		"group":  "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:",
		"hosts":  "127.0.0.1 localhost\n::1 localhost",
	} {
		if w := name + "<<" + content + ">>"; !strings.Contains(out, w) {
			t.Errorf("missing %q in\n%s", w, out)
		}
	}
	if b, err := os.ReadFile(filepath.Join(spec.BuildDir, "from-builder")); err != nil || string(b) != "written\n" {
		t.Errorf("build dir on the host: %q, %v", b, err)
	}
	if !strings.Contains(out, "tmpwrite=ok") {
		t.Errorf("no /tmp write:\n%s", out)
	}
}

func TestSandboxNetwork(t *testing.T) {
	requireSandbox(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer ln.Close()
	var mu sync.Mutex
	var got []string
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b := make([]byte, 64)
			n, _ := c.Read(b)
			mu.Lock()
			got = append(got, string(b[:n]))
			mu.Unlock()
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	for _, tc := range []struct {
		network bool
		want    string
	}{
		{false, "unreachable"},
		{true, "reached"},
	} {
		t.Run(fmt.Sprint("network=", tc.network), func(t *testing.T) {
			token := fmt.Sprintf("hello-%v", tc.network)
			spec := sandboxSpec(t, fmt.Sprintf(`
				if echo %s | $B nc -w 2 127.0.0.1 %d; then echo reached; else echo unreachable; fi
				if [ -e /etc/resolv.conf ]; then echo resolv; fi
			`, token, port))
			spec.Network = tc.network
			out, err := run(t, spec)
			if err != nil {
				t.Fatalf("Wait: %v\n%s", err, out)
			}
			if !strings.Contains(out, tc.want+"\n") {
				t.Errorf("want %q, output:\n%s", tc.want, out)
			}
			mu.Lock()
			defer mu.Unlock()
			seen := strings.Contains(strings.Join(got, ","), token)
			if seen != tc.network {
				t.Errorf("host listener saw the token: %v, want %v", seen, tc.network)
			}
			if _, err := os.Stat("/etc/resolv.conf"); err == nil && tc.network != strings.Contains(out, "resolv") {
				t.Errorf("/etc/resolv.conf inside: %v, want %v", strings.Contains(out, "resolv"), tc.network)
			}
		})
	}
}

func TestSandboxOutputs(t *testing.T) {
	requireSandbox(t)
	spec := sandboxSpec(t, `
		$B mkdir -p $out/bin && echo hi >$out/bin/x && echo file >$outFile
		$B chmod 0555 $out/bin
	`)
	spec.Env = append(spec.Env, "out="+outDir, "outFile="+outFile)
	out, err := run(t, spec)
	if err != nil {
		t.Fatalf("Wait: %v\n%s", err, out)
	}
	// The builder left a read-only directory; let TempDir remove it.
	defer os.Chmod(filepath.Join(spec.RealStoreDir, filepath.Base(outDir), "bin"), 0o755)
	if b, err := os.ReadFile(filepath.Join(spec.RealStoreDir, filepath.Base(outDir), "bin", "x")); err != nil || string(b) != "hi\n" {
		t.Errorf("output dir on the host: %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(spec.RealStoreDir, filepath.Base(outFile))); err != nil || string(b) != "file\n" {
		t.Errorf("output file on the host: %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(spec.RealStoreDir, filepath.Base(outNone))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unbuilt output: %v", err)
	}
	entries, _ := os.ReadDir(spec.RealStoreDir)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".chroot") {
			t.Errorf("chroot left behind: %s", e.Name())
		}
	}
}

// directSpec returns an unsandboxed spec running script with busybox sh.
func directSpec(t *testing.T, script string) *sandbox.Spec {
	return &sandbox.Spec{
		Builder:  busybox,
		Args:     []string{"sh", "-c", script},
		Env:      []string{"B=" + busybox, "PATH=/path-not-set"},
		BuildDir: t.TempDir(),
		StoreDir: storeDir,
	}
}

func TestModes(t *testing.T) {
	for _, sandboxed := range []bool{false, true} {
		t.Run(fmt.Sprint("sandbox=", sandboxed), func(t *testing.T) {
			spec := func(script string) *sandbox.Spec {
				if sandboxed {
					requireSandbox(t)
					return sandboxSpec(t, script)
				}
				return directSpec(t, script)
			}
			t.Run("exit code", func(t *testing.T) {
				out, err := run(t, spec("echo failing; exit 3"))
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 3 {
					t.Fatalf("Wait = %v, want exit status 3", err)
				}
				if out != "failing\n" {
					t.Errorf("output = %q", out)
				}
			})
			t.Run("stderr merged", func(t *testing.T) {
				out, err := run(t, spec("echo one; echo two >&2; echo three"))
				if err != nil || out != "one\ntwo\nthree\n" {
					t.Errorf("Wait = %v, output %q", err, out)
				}
			})
			t.Run("cancel kills all", func(t *testing.T) {
				testCancel(t, spec)
			})
			t.Run("early EOF kills", func(t *testing.T) {
				start := time.Now()
				_, err := run(t, spec("exec >/dev/null 2>&1; $B sleep 10; exit 0"))
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != -1 {
					t.Fatalf("Wait = %v, want killed", err)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("took %v", d)
				}
			})
			t.Run("missing builder", func(t *testing.T) {
				s := spec("")
				s.Builder = "/no/such/builder"
				_, err := sandbox.Start(context.Background(), s)
				if err == nil || !strings.Contains(err.Error(), "/no/such/builder") {
					t.Errorf("Start = %v", err)
				}
			})
			t.Run("writer error kills", func(t *testing.T) {
				s := spec("while :; do echo spam; done")
				s.Stdout = failingWriter{}
				p, err := sandbox.Start(context.Background(), s)
				if err != nil {
					t.Fatal(err)
				}
				if err := p.Wait(); err == nil || !strings.Contains(err.Error(), "write build log") {
					t.Errorf("Wait = %v", err)
				}
			})
		})
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("log limit") }

// testCancel starts a builder with a background child, cancels it, and
// checks that neither survives.
func testCancel(t *testing.T, spec func(string) *sandbox.Spec) {
	marker := fmt.Sprint(time.Now().UnixNano()%1e6 + 7e6)
	s := spec("$B sleep " + marker + " & echo started; $B sleep " + marker + "1; wait")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, w, err := os.Pipe()
	must(t, err)
	defer r.Close()
	s.Stdout = w
	defer w.Close()
	p, err := sandbox.Start(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "started\n" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	for deadline := time.Now().Add(5 * time.Second); countProcs(marker) != 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d sleep processes before cancel, want 2", countProcs(marker))
		}
	}
	cancel()
	err = p.Wait()
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Wait = %v, want context.Canceled", err)
	}
	if n := countProcs(marker); n != 0 {
		t.Errorf("%d sleep processes left after cancel", n)
	}
}

// countProcs counts host processes with an argument starting with marker.
func countProcs(marker string) int {
	n := 0
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		for _, arg := range bytes.Split(b, []byte{0}) {
			if bytes.HasPrefix(arg, []byte(marker)) {
				n++
				break
			}
		}
	}
	return n
}

func TestDirect(t *testing.T) {
	spec := directSpec(t, `echo pwd=$($B pwd); echo env=$($B env | $B sort | $B tr '\n' ,); echo x >out
		$B chmod 4755 out 2>/dev/null && echo setuid=allowed
		$B chmod 0755 out && echo chmod=ok`)
	spec.Env = append(spec.Env, "A=1")
	out, err := run(t, spec)
	if err != nil {
		t.Fatalf("Wait: %v\n%s", err, out)
	}
	kv := keyValues(out)
	if kv["setuid"] != "" || kv["chmod"] != "ok" {
		t.Errorf("seccomp: setuid=%q chmod=%q, want setuid refused and chmod allowed", kv["setuid"], kv["chmod"])
	}
	if kv["pwd"] != spec.BuildDir {
		t.Errorf("pwd = %q, want %q", kv["pwd"], spec.BuildDir)
	}
	if want := "A=1,B=/bin/busybox,PATH=/path-not-set,PWD=" + spec.BuildDir + ",SHLVL=1,"; kv["env"] != want {
		t.Errorf("env = %q, want %q", kv["env"], want)
	}
	if _, err := os.Stat(filepath.Join(spec.BuildDir, "out")); err != nil {
		t.Error(err)
	}

	spec.RealStoreDir = t.TempDir()
	if _, err := sandbox.Start(context.Background(), spec); !errors.Is(err, sandbox.ErrSandboxRequired) {
		t.Errorf("Start with a chroot store = %v, want ErrSandboxRequired", err)
	}
}

func TestSandboxSetupErrors(t *testing.T) {
	requireSandbox(t)
	for _, tc := range []struct {
		name   string
		change func(*sandbox.Spec)
		want   string
	}{
		{"missing sandbox path", func(s *sandbox.Spec) { s.Paths["/x"] = "/no/such/source" }, "/no/such/source"},
		{"missing input", func(s *sandbox.Spec) { s.Inputs = append(s.Inputs, storeDir+"/7a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-gone") }, "gone"},
		{"input outside the store", func(s *sandbox.Spec) { s.Inputs = append(s.Inputs, "/etc") }, "not in /nix/store"},
		{"input is an output", func(s *sandbox.Spec) { s.Inputs = append(s.Inputs, outDir) }, "both an input and an output"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := sandboxSpec(t, "exit 0")
			tc.change(spec)
			_, err := sandbox.Start(context.Background(), spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start = %v, want an error containing %q", err, tc.want)
			}
			entries, _ := os.ReadDir(spec.RealStoreDir)
			for _, e := range entries {
				if strings.HasSuffix(e.Name(), ".chroot") {
					t.Errorf("chroot left behind: %s", e.Name())
				}
			}
		})
	}
}

func TestBuildUser(t *testing.T) {
	requireSandbox(t)
	if os.Geteuid() != 0 {
		t.Skip("build users need root")
	}
	const uid, gid = 30001, 30000
	for _, sandboxed := range []bool{false, true} {
		t.Run(fmt.Sprint("sandbox=", sandboxed), func(t *testing.T) {
			script := `echo id=$($B id -u):$($B id -g):$($B id -G); echo x >$out`
			var spec *sandbox.Spec
			if sandboxed {
				spec = newSandboxSpec(t, script)
				spec.Env = append(spec.Env, "out="+outFile)
			} else {
				spec = directSpec(t, script)
				spec.Env = append(spec.Env, "out=made-by-build-user")
			}
			spec.UID, spec.GID = uid, gid
			must(t, os.Chown(spec.BuildDir, uid, gid))
			out, err := run(t, spec)
			if err != nil {
				t.Fatalf("Wait: %v\n%s", err, out)
			}
			want := "id=30001:30000:30000\n"
			made := filepath.Join(spec.BuildDir, "made-by-build-user")
			if sandboxed {
				want = "id=1000:100:100\n"
				if noUserNS() {
					want = "id=30001:30000:30000\n"
				}
				made = filepath.Join(spec.RealStoreDir, filepath.Base(outFile))
			}
			if out != want {
				t.Errorf("output %q, want %q", out, want)
			}
			st, err := os.Stat(made)
			if err != nil {
				t.Fatal(err)
			}
			if sys := st.Sys().(*syscall.Stat_t); sys.Uid != uid || sys.Gid != gid {
				t.Errorf("output owned by %d:%d, want %d:%d", sys.Uid, sys.Gid, uid, gid)
			}
		})
	}
}

// TestOtherModes reruns the tests in a child test binary without a user
// namespace (as root) and as an unprivileged user (with one).
func TestOtherModes(t *testing.T) {
	requireSandbox(t)
	if os.Geteuid() != 0 || os.Getenv("FERRY_SANDBOX_TEST_CHILD") != "" {
		t.Skip("needs root, and runs once")
	}
	exe, err := os.Executable()
	must(t, err)
	// A copy of the test binary and a TMPDIR the unprivileged user can use.
	dir := t.TempDir()
	must(t, os.Chmod(filepath.Dir(dir), 0o755))
	must(t, os.Chmod(dir, 0o755))
	bin := filepath.Join(dir, "sandbox.test")
	data, err := os.ReadFile(exe)
	must(t, err)
	must(t, nixtest.WriteExecutable(bin, data))
	tmp := filepath.Join(dir, "tmp")
	must(t, os.Mkdir(tmp, 0o777))
	must(t, os.Chmod(tmp, 0o777))

	for _, tc := range []struct {
		name string
		env  string
		cred *syscall.Credential
		run  string
	}{
		{"no user namespace", "FERRY_SANDBOX_TEST_NO_USERNS=1", nil, "^(TestSandbox|TestModes|TestBuildUser)"},
		{"unprivileged", "", &syscall.Credential{Uid: 65534, Gid: 65534}, "^(TestSandbox|TestModes|TestDirect)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, "-test.run", tc.run, "-test.count=1")
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "FERRY_SANDBOX_TEST_CHILD=1", tc.env)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: tc.cred}
			out, err := cmd.CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("PASS")) {
				t.Fatalf("child tests: %v\n%s", err, out)
			}
		})
	}
}
