package localstore

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ferry/internal/nixtest"
	"ferry/nix/export"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/nixbase32"
	"ferry/nix/storepath"
)

// runHelper is the body of a re-executed test binary (see TestMain).
func runHelper(mode, root, arg string) int {
	ctx := context.Background()
	s, err := Open(root, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	switch mode {
	case "temproot":
		// Hold a temp root on arg until stdin closes.
		if err := s.AddTempRoot(ctx, storepath.Path(arg)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("ready")
		bufio.NewReader(os.Stdin).ReadString('\n')
		return 0
	case "add":
		if err := helperAdd(ctx, s, arg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "crash":
		// Add and import new objects forever; the parent kills us.
		for n := 0; ; n++ {
			if err := helperCrashStep(ctx, s, arg, n); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
	}
	fmt.Fprintln(os.Stderr, "unknown helper", mode)
	return 2
}

// helperAdd adds an overlapping share of the sources in dir "src" (arg is
// "src:index"): ten files, a text object referring to each, and the shared
// export stream src/stream.
func helperAdd(ctx context.Context, s *Store, arg string) error {
	src, idx, _ := strings.Cut(arg, ":")
	i, _ := strconv.Atoi(idx)
	for j := range 10 {
		k := (i*2 + j) % 30
		info, err := s.AddPath(ctx, filepath.Join(src, fmt.Sprintf("f%02d", k)), storepath.Recursive, hash.SHA256)
		if err != nil {
			return err
		}
		if _, err := s.AddText(ctx, fmt.Sprintf("t%02d", k), []byte("see "+string(info.Path)), []storepath.Path{info.Path}); err != nil {
			return err
		}
	}
	f, err := os.Open(filepath.Join(src, "stream"))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = s.Import(ctx, f)
	return err
}

// fakePath makes an input-addressed looking path from a seed.
func fakePath(seed, name string) storepath.Path {
	h := hash.SumString(hash.SHA256, seed)
	return storepath.Path("/nix/store/" + nixbase32.EncodeToString(hash.Compress(h.Bytes(), 20)) + "-" + name)
}

// makeStream builds an export stream of n new paths named after tag, each
// referring to the previous one, with contents of about size bytes.
func makeStream(tag string, n, size int) ([]byte, []storepath.Path) {
	var buf bytes.Buffer
	w := export.NewWriter(&buf)
	var prev storepath.Path
	var paths []storepath.Path
	for k := range n {
		p := fakePath(fmt.Sprint(tag, k), fmt.Sprintf("imp-%s-%d", tag, k))
		var refs []storepath.Path
		content := strings.Repeat("z", size) + string(prev)
		if prev != "" {
			refs = []storepath.Path{prev}
		}
		var narBuf bytes.Buffer
		nar.DumpBytes(&narBuf, []byte(content))
		w.WritePath(&export.Info{Path: p, References: refs}, &narBuf)
		prev = p
		paths = append(paths, p)
	}
	w.Close()
	return buf.Bytes(), paths
}

func helperCrashStep(ctx context.Context, s *Store, scratch string, n int) error {
	tag := fmt.Sprintf("%d-%d", os.Getpid(), n)
	dir := filepath.Join(scratch, "src-"+tag)
	files := map[string]string{}
	for k := range 8 {
		files[fmt.Sprintf("d%d/f%d", k%3, k)] = strings.Repeat(tag, 4000*(k+1))
	}
	for name, c := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
		os.WriteFile(filepath.Join(dir, name), []byte(c), 0o644)
	}
	info, err := s.AddPath(ctx, dir, storepath.Recursive, hash.SHA256)
	if err != nil {
		return err
	}
	os.RemoveAll(dir)
	if _, err := s.AddText(ctx, "txt-"+tag, []byte("see "+string(info.Path)), []storepath.Path{info.Path}); err != nil {
		return err
	}
	stream, _ := makeStream(tag, 6, 20000)
	_, err = s.Import(ctx, bytes.NewReader(stream))
	return err
}

// TestTempRootSurvivesNixGC: a path temp-rooted by a live ferry process
// survives nix-store --gc, and is collected once that process is gone.
func TestTempRootSurvivesNixGC(t *testing.T) {
	nixtest.RequireNix(t)
	ctx := context.Background()
	root := t.TempDir()
	s, err := Open(root, nil)
	fatalIf(t, err)
	info, err := s.AddText(ctx, "victim", []byte("keep me"), nil)
	fatalIf(t, err)
	s.Close()

	cmd := helperCmd("temproot", root, string(info.Path))
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	fatalIf(t, cmd.Start())
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("helper said %q", line)
	}
	nixtest.Nix(t, nil, "nix-store", "--store", root, "--gc")
	if _, err := os.Stat(filepath.Join(root, string(info.Path))); err != nil {
		t.Fatalf("temp-rooted path was collected: %v", err)
	}
	nixtest.Nix(t, nil, "nix-store", "--store", root, "--check-validity", string(info.Path))
	stdin.Close()
	fatalIf(t, cmd.Wait())
	nixtest.Nix(t, nil, "nix-store", "--store", root, "--gc")
	if _, err := os.Stat(filepath.Join(root, string(info.Path))); !os.IsNotExist(err) {
		t.Fatalf("path survived without its temp root: %v", err)
	}
}

// TestAddDuringNixGC adds a path while a real Nix GC holds gc.lock: the
// temp root must go through the GC's socket and the path must survive.
func TestAddDuringNixGC(t *testing.T) {
	nixtest.RequireNix(t)
	ctx := context.Background()
	root := t.TempDir()
	src := t.TempDir()
	s := openStore(t, root)
	junk := filepath.Join(src, "junk")
	os.WriteFile(junk, []byte("junk"), 0o644)
	junkPath := nixtest.Line(t, "nix-store", "--store", root, "--add", junk)

	fifo := filepath.Join(src, "fifo")
	fatalIf(t, syscall.Mkfifo(fifo, 0o600))
	gc := exec.Command("nix-store", "--store", root, "--gc")
	gc.Env = append(nixtest.Env(t.TempDir()), "_NIX_TEST_GC_SYNC="+fifo)
	var gcErr bytes.Buffer
	gc.Stderr = &gcErr
	fatalIf(t, gc.Start())
	// Opening the fifo blocks until the GC reads it: it then holds gc.lock
	// and serves its socket.
	opened := make(chan *os.File)
	go func() {
		f, _ := os.OpenFile(fifo, os.O_WRONLY, 0)
		opened <- f
	}()
	var f *os.File
	select {
	case f = <-opened:
	case <-time.After(20 * time.Second):
		gc.Process.Kill()
		t.Fatalf("GC never reached its sync point: %s", gcErr.String())
	}
	info, err := s.AddText(ctx, "during-gc", []byte("added while the GC runs"), nil)
	fatalIf(t, err)
	f.Close()
	if err := gc.Wait(); err != nil {
		t.Fatalf("nix-store --gc: %v\n%s", err, gcErr.String())
	}
	if ok, err := s.IsValidPath(ctx, info.Path); err != nil || !ok {
		t.Fatalf("path added during GC is not valid: %v", err)
	}
	if _, err := os.Stat(s.RealPath(info.Path)); err != nil {
		t.Fatalf("path added during GC was deleted: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, junkPath)); !os.IsNotExist(err) {
		t.Fatalf("the GC did not collect garbage: %v", err)
	}
	nixVerify(t, root)
}

// TestConcurrentAdders runs 16 processes adding overlapping sets of paths
// at once; none may fail and the store must stay consistent.
func TestConcurrentAdders(t *testing.T) {
	nixtest.RequireNix(t)
	root := t.TempDir()
	src := t.TempDir()
	for k := range 30 {
		os.WriteFile(filepath.Join(src, fmt.Sprintf("f%02d", k)), []byte(fmt.Sprintf("file %d\n", k)), 0o644)
	}
	stream, streamPaths := makeStream("shared", 20, 100)
	os.WriteFile(filepath.Join(src, "stream"), stream, 0o644)

	const procs = 16
	var wg sync.WaitGroup
	errs := make([]error, procs)
	outs := make([]bytes.Buffer, procs)
	for i := range procs {
		cmd := helperCmd("add", root, fmt.Sprintf("%s:%d", src, i))
		cmd.Stderr = &outs[i]
		fatalIf(t, cmd.Start())
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = cmd.Wait() }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("process %d: %v\n%s", i, err, outs[i].String())
		}
	}
	ctx := context.Background()
	s := openStore(t, root)
	all, err := s.QueryAllValidPaths(ctx)
	fatalIf(t, err)
	if want := 30*2 + len(streamPaths); len(all) != want {
		t.Errorf("%d valid paths, want %d", len(all), want)
	}
	rep, err := s.Verify(ctx, true, false)
	fatalIf(t, err)
	if !rep.OK() {
		t.Errorf("ferry verify: %v", rep.Messages)
	}
	nixVerify(t, root)
	compareFacts(t, ferryFacts(t, s), nixFacts(t, root))
}

// TestCrashSafety kills processes that add and import at random moments,
// then checks that every registered path is complete.
func TestCrashSafety(t *testing.T) {
	nixtest.RequireNix(t)
	root := t.TempDir()
	scratch := t.TempDir()
	// Initialise the store first so the kills hit adds, not creation.
	s0, err := Open(root, nil)
	fatalIf(t, err)
	s0.Close()
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	deadline := time.Now().Add(12 * time.Second)
	iterations := 0
	for iterations < 20 && time.Now().Before(deadline) {
		iterations++
		cmd := helperCmd("crash", root, scratch)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		fatalIf(t, cmd.Start())
		time.Sleep(time.Duration(20+rng.IntN(200)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("helper ended by itself: %v\n%s", err, stderr.String())
		}
	}
	ctx := context.Background()
	s := openStore(t, root)
	all, err := s.QueryAllValidPaths(ctx)
	fatalIf(t, err)
	t.Logf("%d kills, %d valid paths", iterations, len(all))
	if len(all) == 0 {
		t.Fatal("the helpers never registered anything")
	}
	rep, err := s.Verify(ctx, true, false)
	fatalIf(t, err)
	if !rep.OK() {
		t.Fatalf("ferry verify after crashes: %v", rep.Messages)
	}
	nixVerify(t, root)
	// The next write removes the dead processes' temporaries.
	_, err = s.AddText(ctx, "after-crash", []byte("x"), nil)
	fatalIf(t, err)
	ents, _ := os.ReadDir(s.RealDir())
	for _, e := range ents {
		if pid, ok := ParseTempName(e.Name()); ok && pid != os.Getpid() {
			t.Errorf("leftover %s", e.Name())
		}
	}
}

// Many handles opening a new store at once all get it: one creates it
// (exclusive big lock) while the others, which saw no schema yet, wait
// for it shared rather than for an exclusive lock that the creator,
// holding the store open, never gives up.
func TestConcurrentOpenOfNewStore(t *testing.T) {
	for round := 0; round < 10; round++ {
		root := filepath.Join(t.TempDir(), "store")
		const n = 6
		errs := make(chan error, n)
		stores := make(chan *Store, n)
		for i := 0; i < n; i++ {
			go func() {
				st, err := Open(root, &Options{NoSync: true})
				if err == nil {
					stores <- st
				}
				errs <- err
			}()
		}
		timeout := time.After(20 * time.Second)
		for i := 0; i < n; i++ {
			select {
			case err := <-errs:
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
			case <-timeout:
				t.Fatalf("round %d: %d of %d opens of a new store did not return", round, n-i, n)
			}
		}
		close(stores)
		for st := range stores {
			st.Close()
		}
	}
}
