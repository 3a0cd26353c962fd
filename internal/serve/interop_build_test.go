package serve

// Interop tests for building through ferry's serve protocol: real Nix 2.8
// (nix-build --builders over a real sshd, and nix-store --serve for
// comparison) and Hydra-style sessions written with this package's client
// codecs, all against the ferry binary as the remote end. Every helper here
// starts with "ib" to stay apart from the other tests of the package.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"ferry/internal/lock"
	"ferry/internal/nixtest"
	"ferry/internal/sshtest"
	"ferry/nix/derivation"
	"ferry/nix/export"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

// TestInteropBuild runs every build interop scenario as a parallel subtest
// against the ferry binary.
func TestInteropBuild(t *testing.T) {
	nixtest.RequireNix(t)
	nixtest.Require(t, "ssh", "go")
	ferry := ferryBin(t)
	system := strings.Trim(nixtest.Line(t, "nix-instantiate", "--eval", "--expr", "builtins.currentSystem"), `"`)
	e := &ibEnv{ferry: ferry, system: system}
	t.Run("NixBuildersGraph", func(t *testing.T) { t.Parallel(); ibNixBuildersGraph(t, e) })
	t.Run("HydraSession", func(t *testing.T) { t.Parallel(); ibHydraSession(t, e) })
	t.Run("DisconnectKillsBuild", func(t *testing.T) { t.Parallel(); ibDisconnect(t, e) })
	t.Run("SameRepliesAsNix", func(t *testing.T) { t.Parallel(); ibSameReplies(t, e) })
	t.Run("FailureLikeNix", func(t *testing.T) { t.Parallel(); ibFailure(t, e) })
}

type ibEnv struct {
	ferry  string // the ferry binary
	system string // builtins.currentSystem
}

// ibRun runs a Nix tool (or ssh) with nixtest.Env plus extra and returns
// its trimmed stdout and its stderr.
func ibRun(t *testing.T, extra []string, name string, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(nixtest.Env(t.TempDir()), extra...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	return strings.TrimSpace(o.String()), e.String(), err
}

// ibMust is ibRun that fails the test on error.
func ibMust(t *testing.T, extra []string, name string, args ...string) string {
	t.Helper()
	out, stderr, err := ibRun(t, extra, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr)
	}
	return out
}

func ibWriteFile(t *testing.T, text string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "expr.nix")
	if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// ibGraphNix is a graph of derivations over several levels: a flat
// fixed-output derivation, a three-output derivation whose outputs refer to
// each other and to themselves, one with passAsFile that refers to all of
// those, and a two-output top whose outputs refer to their inputs and to
// each other (one way: output cycles are an error).
const ibGraphNix = `{ system }:
let
  mk = name: attrs: derivation ({ inherit name system; builder = "/bin/sh"; } // attrs);
  fod = mk "ib-fod" {
    args = [ "-c" "echo fixed output contents > $out" ];
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "@FODHASH@";
  };
  multi = mk "ib-multi" {
    outputs = [ "out" "dev" "lib" ];
    args = [ "-c" "mkdir $lib && echo library > $lib/name && echo $lib > $dev && mkdir $out && echo $dev > $out/dev-ref && echo $out > $out/self-ref" ];
  };
  mid = mk "ib-mid" {
    passAsFile = [ "payload" ];
    payload = "passed as a file\n";
    args = [ "-c" "mkdir $out && cat $payloadPath > $out/payload && cat ${multi.dev} > $out/lib-ref && echo ${fod} > $out/fod-ref && cat ${fod} > $out/fod-copy && echo ${multi} > $out/multi-ref" ];
  };
in mk "ib-top" {
  outputs = [ "out" "bin" ];
  args = [ "-c" "mkdir $out $bin && echo $bin > $out/bin-ref && echo ${mid} > $bin/mid-ref && ls ${mid} > $out/listing && echo ${multi.lib} > $out/lib-ref" ];
}
`

func ibGraphExpr(t *testing.T) string {
	h := sha256.Sum256([]byte("fixed output contents\n"))
	return ibWriteFile(t, strings.ReplaceAll(ibGraphNix, "@FODHASH@", fmt.Sprintf("%x", h)))
}

// ibNixBuildersGraph: real nix-build with --max-jobs 0 builds a graph of
// derivations on ferry, reached over a real sshd as
// ssh://...?remote-program=<ferry>&remote-store=DST, so every derivation
// travels as a BuildDerivation. The outputs must be the ones a local real
// Nix build gives, and ferry's store must verify with real Nix.
func ibNixBuildersGraph(t *testing.T, e *ibEnv) {
	s := sshtest.Start(t, nil)
	expr := ibGraphExpr(t)
	local, dst, ref := t.TempDir(), t.TempDir(), t.TempDir()
	uri := s.URI() + "?remote-program=" + e.ferry + "&remote-store=" + dst
	builders := uri + " " + e.system + " " + s.KeyFile + " 4 1"

	var remoteOut, remoteErr string
	var err error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		remoteOut, remoteErr, err = ibRun(t, s.Env(), "nix-build", "--store", local, "--max-jobs", "0",
			"--builders", builders, "--no-out-link", "--argstr", "system", e.system, expr)
	}()
	refOut := ibMust(t, nil, "nix-build", "--store", ref, "--no-out-link", "--argstr", "system", e.system, expr)
	wg.Wait()
	if err != nil {
		t.Fatalf("nix-build --builders ferry: %v\n%s\nsshd log:\n%s", err, remoteErr, s.Log())
	}
	if remoteOut != refOut {
		t.Fatalf("output paths: via ferry %q, local %q", remoteOut, refOut)
	}
	outs := strings.Fields(refOut)
	if len(outs) != 1 {
		t.Fatalf("nix-build printed %q, want the out output of ib-top", refOut)
	}
	// Every derivation ran on ferry: nothing was built locally
	// (--max-jobs 0), and the ssh log shows the sessions.
	if !strings.Contains(s.Log(), "Accepted publickey") {
		t.Errorf("no ssh session in sshd's log:\n%s", s.Log())
	}

	want := nixtest.PathInfos(t, ref, append([]string{"--recursive"}, outs...)...)
	if len(want) != 7 { // fod, multi×3, mid, top×2 (out refers to bin)
		t.Errorf("reference closure has %d paths, want 7: %v", len(want), want)
	}
	for name, st := range map[string]string{"ferry's store": dst, "the client's store": local} {
		got := nixtest.PathInfos(t, st, append([]string{"--recursive"}, outs...)...)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s differs from a local build:\n got  %+v\n want %+v", name, got, want)
		}
	}
	for _, p := range want {
		if !strings.HasSuffix(p.Deriver, ".drv") {
			t.Errorf("%s has deriver %q", p.Path, p.Deriver)
		}
		// The .drv files never reach ferry: Nix sends BuildDerivation.
		if _, err := os.Lstat(filepath.Join(dst, p.Deriver)); err == nil {
			t.Errorf("%s exists in ferry's store", p.Deriver)
		}
	}
	nixtest.Verify(t, dst)
	nixtest.Verify(t, local)
}

// ibConn is a serve-protocol client session on a subprocess: ferry
// directly, nix-store --serve, or ssh to a forced command.
type ibConn struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	w      *wire.Writer
	br     *bufio.Reader
	r      *wire.Reader
	raw    bytes.Buffer // bytes read from stdout since the last take
	stderr bytes.Buffer
}

func ibStart(t *testing.T, cmd *exec.Cmd) *ibConn {
	t.Helper()
	c := &ibConn{t: t, cmd: cmd}
	cmd.Stderr = &c.stderr
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	c.w = wire.NewWriter(c.stdin)
	c.br = bufio.NewReader(io.TeeReader(stdout, &c.raw))
	c.r = wire.NewReader(c.br)
	return c
}

// ibFerryCmd runs the ferry binary with Nix's own serve argv on dst.
func ibFerryCmd(t *testing.T, e *ibEnv, dst string) *exec.Cmd {
	cmd := exec.Command(e.ferry, "--serve", "--write", "--store", dst)
	cmd.Env = nixtest.Env(t.TempDir())
	return cmd
}

// ibNixCmd runs real nix-store --serve --write on dst.
func ibNixCmd(t *testing.T, dst string) *exec.Cmd {
	cmd := exec.Command("nix-store", "--serve", "--write", "--store", dst)
	cmd.Env = nixtest.Env(t.TempDir())
	return cmd
}

func (c *ibConn) fatal(format string, args ...any) {
	c.t.Helper()
	c.t.Fatalf("%s\nserver stderr:\n%s", fmt.Sprintf(format, args...), c.stderr.String())
}

func (c *ibConn) flush() {
	c.t.Helper()
	if err := c.w.Flush(); err != nil {
		c.fatal("flush: %v", err)
	}
}

// take returns the raw reply bytes read since the last take. The server
// writes nothing before it has the whole request, so after a reply has
// been decoded these are exactly its bytes.
func (c *ibConn) take() []byte {
	c.t.Helper()
	if n := c.br.Buffered(); n != 0 {
		c.fatal("%d bytes beyond the reply", n)
	}
	b := bytes.Clone(c.raw.Bytes())
	c.raw.Reset()
	return b
}

func (c *ibConn) handshake(version uint64) {
	c.t.Helper()
	if _, err := ClientHandshake(c.r, c.w, version); err != nil {
		c.fatal("handshake: %v", err)
	}
}

func (c *ibConn) queryValid(lock, subst bool, paths ...storepath.Path) []storepath.Path {
	c.t.Helper()
	WriteCommand(c.w, CmdQueryValidPaths)
	WriteQueryValidPaths(c.w, &QueryValidPathsRequest{Lock: lock, Substitute: subst, Paths: paths})
	c.flush()
	got, err := ReadPathSet(c.r, dir)
	if err != nil {
		c.fatal("query valid paths: %v", err)
	}
	return got
}

func (c *ibConn) importPaths(stream []byte) {
	c.t.Helper()
	WriteCommand(c.w, CmdImportPaths)
	c.w.Write(stream)
	c.flush()
	if v, err := c.r.ReadUint64(); err != nil || v != 1 {
		c.fatal("import paths: reply %d, %v", v, err)
	}
}

func (c *ibConn) buildDerivation(version uint64, drv *derivation.Derivation, bs *store.BuildSettings) *BuildResult {
	c.t.Helper()
	dp, err := drv.Path(dir)
	if err != nil {
		c.t.Fatal(err)
	}
	WriteCommand(c.w, CmdBuildDerivation)
	WritePath(c.w, dp)
	WriteBasicDerivation(c.w, drv)
	WriteBuildSettings(c.w, version, bs)
	c.flush()
	res, err := ReadBuildResult(c.r, dir, version)
	if err != nil {
		c.fatal("build derivation: %v", err)
	}
	return res
}

func (c *ibConn) pathInfos(version uint64, paths ...storepath.Path) []*store.PathInfo {
	c.t.Helper()
	WriteCommand(c.w, CmdQueryPathInfos)
	WritePathSet(c.w, paths)
	c.flush()
	var infos []*store.PathInfo
	for {
		info, err := ReadPathInfo(c.r, dir, version)
		if err != nil {
			c.fatal("query path infos: %v", err)
		}
		if info == nil {
			return infos
		}
		infos = append(infos, info)
	}
}

// dump reads the NAR of p with DumpStorePath and returns its SHA-256 and
// size, found by parsing it (the reply has no length prefix).
func (c *ibConn) dump(p storepath.Path) (hash.Hash, uint64) {
	c.t.Helper()
	WriteCommand(c.w, CmdDumpStorePath)
	WritePath(c.w, p)
	c.flush()
	h := sha256.New()
	cr := &ibCounter{r: c.br}
	nr := nar.NewReader(io.TeeReader(cr, h))
	for {
		if _, err := nr.Next(); err == io.EOF {
			break
		} else if err != nil {
			c.fatal("dump %s: %v", p, err)
		}
		io.Copy(io.Discard, nr)
	}
	return hash.FromHasher(hash.SHA256, h), uint64(cr.n)
}

type ibCounter struct {
	r io.Reader
	n int64
}

func (c *ibCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// close ends the session cleanly and waits for the server, which must
// exit 0.
func (c *ibConn) close() {
	c.t.Helper()
	c.stdin.Close()
	rest, _ := io.ReadAll(c.br)
	if err := c.cmd.Wait(); err != nil {
		c.fatal("server exit: %v", err)
	}
	if len(rest) != 0 {
		c.fatal("server wrote %d bytes after the last reply", len(rest))
	}
}

// ibInputs builds, with real Nix in a fresh store, an input-addressed path
// that refers to a text source, and returns the store, the path, its
// closure and the closure's export stream.
func ibInputs(t *testing.T, e *ibEnv, tag string) (src string, input storepath.Path, closure []storepath.Path, stream []byte) {
	t.Helper()
	src = t.TempDir()
	expr := ibWriteFile(t, fmt.Sprintf(`let s = builtins.toFile "ib-%[1]s-src" "source text %[1]s\n"; in
derivation { name = "ib-%[1]s-input"; system = %[2]q; builder = "/bin/sh";
  args = [ "-c" "mkdir $out && echo ${s} > $out/src-ref && cat ${s} > $out/copy" ]; }`, tag, e.system))
	out := ibMust(t, nil, "nix-build", "--store", src, "--no-out-link", expr)
	input = ibParse(t, out)
	for _, l := range strings.Fields(ibMust(t, nil, "nix-store", "--store", src, "-qR", out)) {
		closure = append(closure, ibParse(t, l))
	}
	var names []string
	for _, p := range closure {
		names = append(names, string(p))
	}
	stream = ibExport(t, src, names...)
	return src, input, closure, stream
}

func ibParse(t *testing.T, s string) storepath.Path {
	t.Helper()
	p, err := storepath.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ibDrv makes an in-memory BasicDerivation (no input derivations) with
// the given outputs and shell script, its output paths filled in.
func ibDrv(t *testing.T, e *ibEnv, name string, inputs []storepath.Path, script string, outputs ...string) *derivation.Derivation {
	t.Helper()
	if len(outputs) == 0 {
		outputs = []string{"out"}
	}
	d := &derivation.Derivation{
		Name:      name,
		Outputs:   map[string]derivation.Output{},
		InputDrvs: map[storepath.Path][]string{},
		InputSrcs: append([]storepath.Path(nil), inputs...),
		Platform:  e.system,
		Builder:   "/bin/sh",
		Args:      []string{"-c", script},
		Env: map[string]string{"builder": "/bin/sh", "name": name, "system": e.system,
			"outputs": strings.Join(outputs, " ")},
	}
	for _, o := range outputs {
		d.Outputs[o] = derivation.Output{}
	}
	if err := d.FillOutputPaths(dir, derivation.MapResolver(nil), nil); err != nil {
		t.Fatal(err)
	}
	return d
}

// ibHydraSession is a Hydra-style session over ssh to a forced command
// running ferry: client version 2.6, query valid paths with lock=1
// substitute=1, inputs sent with ImportPaths, BuildDerivation of a
// derivation whose .drv never reaches the server, outputs read back from
// builtOutputs with QueryPathInfos and DumpStorePath.
func ibHydraSession(t *testing.T, e *ibEnv) {
	dst := t.TempDir()
	s := sshtest.Start(t, &sshtest.Options{ForcedCommand: e.ferry + " --serve --write --store " + dst})
	_, input, closure, stream := ibInputs(t, e, "hydra")
	drv := ibDrv(t, e, "ib-hydra", closure,
		"mkdir $out && echo $doc > $out/doc-ref && echo "+string(input)+" > $out/input-ref && cat "+string(input)+"/copy > $out/copy && echo $out > $out/self && echo doc > $doc",
		"out", "doc")
	drvPath, _ := drv.Path(dir)
	const v = 0x206

	c := ibStart(t, s.Command("nix-store", "--serve", "--write"))
	c.handshake(v)
	outs := drv.OutputPaths()
	if got := c.queryValid(true, true, outs["out"], outs["doc"]); len(got) != 0 {
		t.Fatalf("outputs valid before the build: %v", got)
	}
	if got := c.queryValid(true, true, closure...); len(got) != 0 {
		t.Fatalf("inputs valid before the import: %v", got)
	}
	c.importPaths(stream)
	if got := c.queryValid(true, true, closure...); !reflect.DeepEqual(got, closure) {
		t.Fatalf("valid inputs after the import %v, want %v", got, closure)
	}
	res := c.buildDerivation(v, drv, &store.BuildSettings{MaxSilentTime: time.Minute, Timeout: 2 * time.Minute, MaxLogSize: 1 << 20})
	if res.Status != store.Built {
		c.fatal("build: %v %s", res.Status, res.ErrorMsg)
	}
	if res.StartTime == 0 || res.StopTime < res.StartTime || res.TimesBuilt != 1 {
		t.Errorf("build result times %d..%d, timesBuilt %d", res.StartTime, res.StopTime, res.TimesBuilt)
	}
	var built []storepath.Path
	for _, o := range res.BuiltOutputs {
		if outs[o.Output] != o.OutPath {
			t.Errorf("builtOutputs %s = %s, want %s", o.Output, o.OutPath, outs[o.Output])
		}
		built = append(built, o.OutPath)
	}
	if len(built) != 2 {
		t.Fatalf("builtOutputs %+v, want out and doc", res.BuiltOutputs)
	}
	infos := c.pathInfos(v, built...)
	if len(infos) != 2 {
		t.Fatalf("path infos of the outputs: %+v", infos)
	}
	for _, info := range infos {
		if info.Deriver != drvPath {
			t.Errorf("%s: deriver %s, want %s", info.Path, info.Deriver, drvPath)
		}
		h, n := c.dump(info.Path)
		if !h.Equal(info.NarHash) || n != info.NarSize {
			t.Errorf("%s: dumped NAR %s (%d bytes), path info says %s (%d bytes)", info.Path, h, n, info.NarHash, info.NarSize)
		}
	}
	want := []storepath.Path{outs["doc"], input, outs["out"]}
	if infos[0].Path != outs["out"] {
		infos[0], infos[1] = infos[1], infos[0]
	}
	if got := infos[0].References; !reflect.DeepEqual(ibSortByName(got), ibSortByName(want)) {
		t.Errorf("references of out %v, want %v", got, want)
	}
	c.close()

	// The derivation only ever existed in memory.
	if _, err := os.Lstat(filepath.Join(dst, string(drvPath))); err == nil {
		t.Errorf("%s was created on the server", drvPath)
	}
	if _, _, err := ibRun(t, nil, "nix-store", "--store", dst, "--check-validity", string(drvPath)); err == nil {
		t.Errorf("%s is valid on the server", drvPath)
	}
	nixtest.Verify(t, dst)
}

func ibSortByName(ps []storepath.Path) []string {
	var ss []string
	for _, p := range ps {
		ss = append(ss, p.Base())
	}
	slices.Sort(ss)
	return ss
}

// ibProcs returns the pids of the processes, other than this one, whose
// command line contains every one of words.
func ibProcs(words ...string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		all := true
		for _, w := range words {
			all = all && slices.Contains(args, w)
		}
		if all {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ibAlive reports whether process pid exists and is not a zombie waiting
// for its parent (sshd) to reap it.
func ibAlive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces, so look after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || !bytes.HasPrefix(b[i+1:], []byte(" Z"))
}

// ibWaitFor polls cond every 20ms for up to d.
func ibWaitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

// ibDisconnect: a client that goes away in the middle of a BuildDerivation
// (the ssh client is killed) kills the build: the builder process is gone
// within seconds, the session's process exits, its temp roots file is
// removed and the output's lock is free again; nothing is registered.
func ibDisconnect(t *testing.T, e *ibEnv) {
	dst := t.TempDir()
	s := sshtest.Start(t, &sshtest.Options{ForcedCommand: e.ferry + " --serve --write --store " + dst})
	// A sleep argument no other process has: busybox's sleep takes
	// fractions, and the builder's argv carries it.
	secs := fmt.Sprintf("31.%09d", time.Now().UnixNano()%1e9)
	drv := ibDrv(t, e, "ib-sleeper", nil, "sleep "+secs+"; echo done > $out")
	out := drv.OutputPaths()["out"]
	dp, _ := drv.Path(dir)

	c := ibStart(t, s.Command())
	c.handshake(Version)
	WriteCommand(c.w, CmdBuildDerivation)
	WritePath(c.w, dp)
	WriteBasicDerivation(c.w, drv)
	WriteBuildSettings(c.w, Version, &store.BuildSettings{})
	c.flush()

	var builder []int
	if !ibWaitFor(15*time.Second, func() bool { builder = ibProcs("sleep", secs); return len(builder) > 0 }) {
		c.fatal("the builder (sleep %s) never started", secs)
	}
	servers := ibProcs(e.ferry, "--serve", dst)
	if len(servers) != 1 {
		t.Fatalf("ferry processes serving %s: %v", dst, servers)
	}
	roots := filepath.Join(dst, "nix/var/nix/temproots", strconv.Itoa(servers[0]))
	if b, err := os.ReadFile(roots); err != nil || !bytes.Contains(b, []byte(out)) {
		t.Errorf("temp roots of the session %s: %q, %v; want %s among them", roots, b, err, out)
	}
	ctx := context.Background()
	physical := filepath.Join(dst, string(out))
	if l, err := lock.LockPaths(ctx, []string{physical}, false); err == nil {
		l.Unlock()
		t.Errorf("output %s not locked during its build", out)
	} else if !errors.Is(err, lock.ErrWouldBlock) {
		t.Errorf("lock %s: %v", out, err)
	}

	// The client goes away.
	c.stdin.Close()
	c.cmd.Process.Kill()
	start := time.Now()
	if !ibWaitFor(5*time.Second, func() bool { return len(ibProcs("sleep", secs)) == 0 }) {
		t.Fatalf("builder %v still running 5s after the client left", builder)
	}
	t.Logf("builder gone %v after the disconnect", time.Since(start).Round(time.Millisecond))
	if !ibWaitFor(5*time.Second, func() bool { return !ibAlive(servers[0]) }) {
		t.Fatalf("ferry (pid %d) still running 5s after the client left", servers[0])
	}
	t.Logf("builder and session gone %v after the disconnect", time.Since(start).Round(time.Millisecond))
	if _, err := os.Stat(roots); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp roots file %s after the session: %v", roots, err)
	}
	l, err := lock.LockPaths(ctx, []string{physical}, false)
	if err != nil {
		t.Fatalf("output lock after the session: %v", err)
	}
	l.Unlock()
	if _, err := os.Lstat(physical); err == nil {
		t.Errorf("%s exists after the killed build", out)
	}
	if _, _, err := ibRun(t, nil, "nix-store", "--store", dst, "--check-validity", string(out)); err == nil {
		t.Errorf("%s is valid after the killed build", out)
	}
}

// ibStep is one request of a scripted session and the decoding of its
// reply; it returns the reply normalised for comparison, or nil to use
// the raw reply bytes.
type ibStep struct {
	name string
	run  func(c *ibConn) []byte
}

// ibNormBuildResult re-encodes a BuildResult with its timestamps zeroed
// and its error message in plain form (ibPlainMessage), after checking
// that re-encoding it as read gives the bytes on the wire.
func ibNormBuildResult(c *ibConn, version uint64, res *BuildResult) []byte {
	c.t.Helper()
	raw := c.take()
	var b bytes.Buffer
	w := wire.NewWriter(&b)
	WriteBuildResult(w, version, res)
	w.Flush()
	if !bytes.Equal(b.Bytes(), raw) {
		c.fatal("BuildResult re-encodes differently:\n wire %x\n ours %x", raw, b.Bytes())
	}
	r := *res
	r.StartTime, r.StopTime = 0, 0
	r.ErrorMsg = ibPlainMessage(r.ErrorMsg)
	b.Reset()
	WriteBuildResult(w, version, &r)
	w.Flush()
	return b.Bytes()
}

// ibPlainMessage strips what differs between Nix's and ferry's wording of
// a build error: Nix's ANSI colours (hintfmt), and the log tail ferry
// appends (";\nlast N log lines:\n> ..."), which Nix leaves out in serve
// mode because its logger there is verbose and the log went to stderr.
func ibPlainMessage(msg string) string {
	msg = ibANSI.ReplaceAllString(msg, "")
	if i := strings.Index(msg, ";\nlast "); i >= 0 {
		msg = msg[:i]
	}
	return msg
}

var ibANSI = regexp.MustCompile("\x1b\\[[0-9;]*m")

// ibSameReplies runs one scripted build session against real
// `nix-store --serve --write` and against ferry, each on its own empty
// store, and requires the same replies byte for byte except for the
// BuildResult timestamps and, for the failing build, the colours and log
// tail of its message (ibPlainMessage).
func ibSameReplies(t *testing.T, e *ibEnv) {
	src, input, closure, stream := ibInputs(t, e, "cmp")
	// A .drv graph for BuildPaths: ib-cmp-top needs ib-cmp-dep built first.
	graph := ibWriteFile(t, fmt.Sprintf(`let
  mk = name: attrs: derivation ({ inherit name; system = %q; builder = "/bin/sh"; } // attrs);
  dep = mk "ib-cmp-dep" { outputs = [ "out" "man" ]; args = [ "-c" "echo dep > $out; echo $out > $man" ]; };
in mk "ib-cmp-top" { args = [ "-c" "mkdir $out; echo ${dep.man} > $out/man-ref; cat ${dep} > $out/dep" ]; }`, e.system))
	topDrv := ibParse(t, ibMust(t, nil, "nix-instantiate", "--store", src, graph))
	topOut := ibParse(t, ibMust(t, nil, "nix-store", "--store", src, "-q", "--outputs", string(topDrv)))
	drvStream := ibExport(t, src, strings.Fields(ibMust(t, nil, "nix-store", "--store", src, "-qR", string(topDrv)))...)

	multi := ibDrv(t, e, "ib-cmp-multi", closure,
		"mkdir $out $dev && echo $dev > $out/dev-ref && echo "+string(input)+" > $dev/input-ref && echo $out > $out/self && echo built; echo to stderr >&2",
		"out", "dev")
	mouts := multi.OutputPaths()
	failing := ibDrv(t, e, "ib-cmp-fail", nil, "echo failing now; exit 3")
	bs := &store.BuildSettings{MaxSilentTime: time.Minute, Timeout: 2 * time.Minute, MaxLogSize: 1 << 20}
	const v = Version
	var missing storepath.Path = "/nix/store/00000000000000000000000000000000-ib-missing"

	steps := []ibStep{
		{"handshake", func(c *ibConn) []byte { c.handshake(v); return nil }},
		{"query valid before import", func(c *ibConn) []byte {
			c.queryValid(false, false, append(closure, mouts["out"], topDrv)...)
			return nil
		}},
		{"import inputs", func(c *ibConn) []byte { c.importPaths(stream); return nil }},
		{"import drv graph", func(c *ibConn) []byte { c.importPaths(drvStream); return nil }},
		{"query valid lock", func(c *ibConn) []byte { c.queryValid(true, false, append(closure, topDrv)...); return nil }},
		{"path infos of inputs", func(c *ibConn) []byte { c.pathInfos(v, closure...); return nil }},
		{"build derivation", func(c *ibConn) []byte {
			res := c.buildDerivation(v, multi, bs)
			if res.Status != store.Built {
				c.fatal("build: %v %s", res.Status, res.ErrorMsg)
			}
			return ibNormBuildResult(c, v, res)
		}},
		{"path infos of outputs", func(c *ibConn) []byte { c.pathInfos(v, mouts["out"], mouts["dev"]); return nil }},
		{"dump output", func(c *ibConn) []byte { c.dump(mouts["out"]); return nil }},
		{"build derivation again", func(c *ibConn) []byte {
			return ibNormBuildResult(c, v, c.buildDerivation(v, multi, bs))
		}},
		{"build paths", func(c *ibConn) []byte {
			WriteCommand(c.w, CmdBuildPaths)
			WriteBuildPaths(c.w, v, []DerivedPath{{Path: topDrv, Outputs: []string{"out"}}}, bs)
			c.flush()
			rep, err := ReadBuildPathsReply(c.r)
			if err != nil || rep.Status != 0 {
				c.fatal("build paths: %+v %v", rep, err)
			}
			return nil
		}},
		{"build paths opaque", func(c *ibConn) []byte {
			WriteCommand(c.w, CmdBuildPaths)
			WriteBuildPaths(c.w, v, []DerivedPath{{Path: input}}, bs)
			c.flush()
			if _, err := ReadBuildPathsReply(c.r); err != nil {
				c.fatal("build paths: %v", err)
			}
			return nil
		}},
		{"query closure with outputs", func(c *ibConn) []byte {
			WriteCommand(c.w, CmdQueryClosure)
			WriteQueryClosure(c.w, true, []storepath.Path{topDrv})
			c.flush()
			if _, err := ReadPathSet(c.r, dir); err != nil {
				c.fatal("query closure: %v", err)
			}
			return nil
		}},
		{"path infos of built paths", func(c *ibConn) []byte { c.pathInfos(v, topOut, missing); return nil }},
		{"failing build", func(c *ibConn) []byte {
			res := c.buildDerivation(v, failing, bs)
			if res.Status != store.PermanentFailure {
				c.fatal("failing build: %v %q", res.Status, res.ErrorMsg)
			}
			return ibNormBuildResult(c, v, res)
		}},
		{"query valid after failure", func(c *ibConn) []byte {
			c.queryValid(false, false, failing.OutputPaths()["out"], topOut)
			return nil
		}},
		{"export outputs", func(c *ibConn) []byte {
			WriteCommand(c.w, CmdExportPaths)
			WriteExportPaths(c.w, []storepath.Path{topOut, mouts["out"]})
			c.flush()
			er := export.NewReader(c.br, nil)
			for {
				if err := er.Next(); err == io.EOF {
					break
				} else if err != nil {
					c.fatal("export: %v", err)
				}
				if _, err := er.Info(); err != nil {
					c.fatal("export: %v", err)
				}
			}
			return nil
		}},
	}

	run := func(cmd *exec.Cmd) [][]byte {
		c := ibStart(t, cmd)
		var replies [][]byte
		for _, st := range steps {
			norm := st.run(c)
			raw := c.take()
			if norm == nil {
				norm = raw
			}
			replies = append(replies, norm)
		}
		c.close()
		return replies
	}
	var nixReplies, ferryReplies [][]byte
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); nixReplies = run(ibNixCmd(t, t.TempDir())) }()
	ferryDst := t.TempDir()
	ferryReplies = run(ibFerryCmd(t, e, ferryDst))
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, st := range steps {
		if !bytes.Equal(nixReplies[i], ferryReplies[i]) {
			t.Errorf("%s: replies differ\n nix   %q\n ferry %q", st.name, nixReplies[i], ferryReplies[i])
		}
	}
	nixtest.Verify(t, ferryDst)
}

// ibExport returns the export stream of paths in the store st.
func ibExport(t *testing.T, st string, paths ...string) []byte {
	t.Helper()
	cmd := exec.Command("nix-store", append([]string{"--store", st, "--export"}, paths...)...)
	cmd.Env = nixtest.Env(t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-store --export: %v\n%s", err, stderr.String())
	}
	return b
}

// ibFailure: failing builds report the failure in the BuildResult, with
// the status real nix-store --serve gives for the same derivation and the
// tail of the log in the message, and register nothing.
func ibFailure(t *testing.T, e *ibEnv) {
	lines := "i=1; while [ $i -le 25 ]; do echo log line $i; i=$((i+1)); done; "
	wrong := sha256.Sum256([]byte("not what the builder writes"))
	fod := ibDrv(t, e, "ib-fail-fod", nil, "echo something else > $out")
	fod.Outputs["out"] = derivation.Output{Method: storepath.Flat, HashAlgo: hash.SHA256, Hash: ibMustHash(t, wrong[:])}
	fod.Env["out"] = ""
	if err := fod.FillOutputPaths(dir, derivation.MapResolver(nil), nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		drv  *derivation.Derivation
		bs   store.BuildSettings
		want store.BuildStatus
		msg  string // must appear in ferry's message
		log  string // must appear on both servers' stderr (the build log)
		// samePlain: the messages agree after ibPlainMessage. Not so for
		// a missing output, where Nix names the path in its chroot.
		samePlain bool
	}{
		{"exit code", ibDrv(t, e, "ib-fail-exit", nil, lines+"exit 3"), store.BuildSettings{},
			store.PermanentFailure, "failed with exit code 3;\nlast 10 log lines:\n> log line 16\n", "log line 25", true},
		{"no output", ibDrv(t, e, "ib-fail-noout", nil, "echo forgot the output"), store.BuildSettings{},
			store.OutputRejected, "failed to produce output path for output 'out'", "forgot the output", false},
		{"fod hash mismatch", fod, store.BuildSettings{},
			store.OutputRejected, "hash mismatch in fixed-output derivation", "", true},
		{"timeout", ibDrv(t, e, "ib-fail-timeout", nil, "echo waiting; sleep 20"), store.BuildSettings{Timeout: time.Second},
			store.TimedOut, "timed out after 1 seconds", "waiting", true},
		{"silent", ibDrv(t, e, "ib-fail-silent", nil, "echo waiting; sleep 20"), store.BuildSettings{MaxSilentTime: time.Second},
			store.TimedOut, "timed out after 1 seconds of silence", "waiting", true},
		{"log limit", ibDrv(t, e, "ib-fail-log", nil, lines+lines+lines+"exit 0"), store.BuildSettings{MaxLogSize: 100},
			// Whether Nix's stderr shows the first lines before the kill
			// is a race, so no log is required here.
			store.LogLimitExceeded, "killed after writing more than 100 bytes of log output", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			results := map[string]*BuildResult{}
			stderrs := map[string]string{}
			var mu sync.Mutex
			var wg sync.WaitGroup
			dsts := map[string]string{"nix": t.TempDir(), "ferry": t.TempDir()}
			for side, dst := range dsts {
				cmd := ibNixCmd(t, dst)
				if side == "ferry" {
					cmd = ibFerryCmd(t, e, dst)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := ibStart(t, cmd)
					c.handshake(Version)
					res := c.buildDerivation(Version, tc.drv, &tc.bs)
					if got := c.queryValid(false, false, tc.drv.OutputPaths()["out"]); len(got) != 0 {
						t.Errorf("%s: output valid after a failed build", side)
					}
					c.close()
					mu.Lock()
					results[side] = res
					stderrs[side] = c.stderr.String()
					mu.Unlock()
				}()
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			nixRes, ferryRes := results["nix"], results["ferry"]
			if nixRes.Status != tc.want {
				t.Errorf("nix status %v (%q), test expects %v", nixRes.Status, nixRes.ErrorMsg, tc.want)
			}
			if ferryRes.Status != nixRes.Status {
				t.Errorf("status: ferry %v, nix %v\n ferry %q\n nix   %q", ferryRes.Status, nixRes.Status, ferryRes.ErrorMsg, nixRes.ErrorMsg)
			}
			if !strings.Contains(ferryRes.ErrorMsg, tc.msg) {
				t.Errorf("ferry's message %q lacks %q", ferryRes.ErrorMsg, tc.msg)
			}
			// The log goes to stderr on both sides.
			if !strings.Contains(stderrs["ferry"], tc.log) || !strings.Contains(stderrs["nix"], tc.log) {
				t.Errorf("log %q missing from stderr:\n ferry %q\n nix   %q", tc.log, stderrs["ferry"], stderrs["nix"])
			}
			f, n := ibPlainMessage(ferryRes.ErrorMsg), ibPlainMessage(nixRes.ErrorMsg)
			if tc.samePlain && f != n {
				t.Errorf("messages differ beyond colours and log tail:\n ferry %q\n nix   %q", f, n)
			}
			if ferryRes.TimesBuilt != nixRes.TimesBuilt || ferryRes.IsNonDeterministic != nixRes.IsNonDeterministic {
				t.Errorf("timesBuilt, isNonDeterministic: ferry %d %v, nix %d %v", ferryRes.TimesBuilt, ferryRes.IsNonDeterministic, nixRes.TimesBuilt, nixRes.IsNonDeterministic)
			}
			if len(ferryRes.BuiltOutputs) != len(nixRes.BuiltOutputs) {
				t.Errorf("builtOutputs: ferry %+v, nix %+v", ferryRes.BuiltOutputs, nixRes.BuiltOutputs)
			}
			if _, err := os.Lstat(filepath.Join(dsts["ferry"], string(tc.drv.OutputPaths()["out"]))); err == nil {
				t.Errorf("ferry left the output of the failed build in the store")
			}
		})
	}
}

func ibMustHash(t *testing.T, digest []byte) hash.Hash {
	t.Helper()
	h, err := hash.New(hash.SHA256, digest)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
