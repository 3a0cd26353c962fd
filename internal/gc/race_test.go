package gc

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"ferry/internal/localstore"
	"ferry/internal/lock"
	"ferry/internal/nixtest"
	"ferry/nix/storepath"
)

func wireInt(w *bytes.Buffer, n uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	w.Write(b[:])
}

func wireString(w *bytes.Buffer, s string) {
	wireInt(w, uint64(len(s)))
	w.WriteString(s)
	w.Write(make([]byte, (8-len(s)%8)%8))
}

// TestNixServeTempRootSurvives: a real `nix-store --serve --write` that
// was asked QueryValidPaths with lock=1 holds a temp root, and ferry's GC
// keeps the path (and its closure) while that process lives.
func TestNixServeTempRootSurvives(t *testing.T) {
	nixtest.RequireNix(t)
	root := t.TempDir()
	var dep, held, other storepath.Path
	build(t, root, func(s *localstore.Store) {
		dep = addText(t, s, "dep", "dep")
		held = addText(t, s, "held", "held "+dep.String(), dep)
		other = addText(t, s, "other", "other")
	})

	cmd := exec.Command("nix-store", "--serve", "--write", "--store", root)
	cmd.Env = nixtest.Env(t.TempDir())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	var req bytes.Buffer
	wireInt(&req, 0x390c9deb) // SERVE_MAGIC_1
	wireInt(&req, 0x207)      // protocol 2.7
	wireInt(&req, 1)          // cmdQueryValidPaths
	wireInt(&req, 1)          // lock
	wireInt(&req, 0)          // substitute
	wireInt(&req, 1)          // one path
	wireString(&req, held.String())
	if _, err := stdin.Write(req.Bytes()); err != nil {
		t.Fatal(err)
	}
	// Reply: SERVE_MAGIC_2, version, then the valid subset (count 1,
	// the path).
	n := 8 + 8 + 8 + 8 + (len(held)+7)/8*8
	reply := make([]byte, n)
	if _, err := io.ReadFull(stdout, reply); err != nil {
		t.Fatalf("reading reply: %v\n%s", err, stderr.String())
	}
	if binary.LittleEndian.Uint64(reply) != 0x5452eecb || binary.LittleEndian.Uint64(reply[16:]) != 1 ||
		!bytes.Contains(reply, []byte(held)) {
		t.Fatalf("reply % x", reply)
	}
	// Nix 2.8 wrote the temp root into its file.
	s := openStore(t, root)
	tr, err := os.ReadFile(filepath.Join(lock.TempRootsDir(s.StateDir()), strconv.Itoa(cmd.Process.Pid)))
	if err != nil || string(tr) != held.String()+"\x00" {
		t.Fatalf("nix temp roots file: %q, %v", tr, err)
	}

	_, res, err := Collect(context.Background(), s, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !valid(t, s, held) || !exists(s, held) || !valid(t, s, dep) {
		t.Errorf("temp-rooted path or its closure was collected; deleted %v", res.Deleted)
	}
	if valid(t, s, other) {
		t.Errorf("%s survived", other)
	}
}

// TestSocketDuringDeletion closes the Nix 2.8 race deterministically: a
// hook runs while each path is claimed for deletion, and from it a client
// registers temp roots through the gc-socket.
//   - Asking for the path being deleted: the answer comes only after the
//     path is gone from the database and the disk, so the client's check
//     of validity that follows sees it invalid.
//   - Asking for a path still queued in the same batch (Nix 2.8 would
//     delete it anyway): it is kept, with its files.
func TestSocketDuringDeletion(t *testing.T) {
	root := t.TempDir()
	var g1, g2, g3 storepath.Path
	build(t, root, func(s *localstore.Store) {
		g1 = addText(t, s, "g1", "g1")
		g2 = addText(t, s, "g2", "g2 "+g1.String(), g1)
		g3 = addText(t, s, "g3", "g3 "+g2.String(), g2)
	})
	s := openStore(t, root)
	ctx := context.Background()

	// A separate client, as another process would be: its own temp roots
	// file (named after a fake pid is not possible, so use the socket
	// directly, which is what TempRoots.Add does while a GC runs).
	type ack struct {
		p        storepath.Path
		at       time.Time
		validNow bool
		existNow bool
	}
	acks := make(chan ack, 2)
	ask := func(p storepath.Path) {
		conn, err := net.Dial("unix", lock.GCSocketPath(s.StateDir()))
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		conn.Write([]byte(p.String() + "\n"))
		var b [1]byte
		if _, err := io.ReadFull(conn, b[:]); err != nil || b[0] != '1' {
			t.Errorf("ack %q %v", b, err)
		}
		acks <- ack{p: p, at: time.Now(), validNow: valid(t, s, p), existNow: exists(s, p)}
	}

	var c *Collection
	var hookDone time.Time
	var mu sync.Mutex
	opts := &Options{NoRuntimeRoots: true}
	opts.beforeDelete = func(e Entry) {
		if e.Path != g3 {
			return
		}
		// Ask for g3 itself (being deleted) and g1 (queued).
		go ask(g3)
		go ask(g1)
		waitFor(t, func() bool { return c.roots.has(g3.HashPart()) && c.roots.has(g1.HashPart()) })
		// The client asking for g3 must still be waiting.
		select {
		case a := <-acks:
			if a.p == g3 {
				t.Errorf("ack for %s before its deletion ended", g3)
			}
			acks <- a
		case <-time.After(50 * time.Millisecond):
		}
		mu.Lock()
		hookDone = time.Now()
		mu.Unlock()
	}
	var err error
	c, err = Plan(ctx, s, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Dead) != 3 || c.Dead[0].Path != g3 {
		t.Fatalf("plan %v", c.Dead)
	}
	res, err := Execute(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		a := <-acks
		switch a.p {
		case g3:
			mu.Lock()
			if a.at.Before(hookDone) || a.validNow || a.existNow {
				t.Errorf("g3 acked at %v (hook done %v), valid %v, exists %v", a.at, hookDone, a.validNow, a.existNow)
			}
			mu.Unlock()
		case g1:
			if !a.validNow || !a.existNow {
				t.Errorf("g1 acked but valid %v, exists %v", a.validNow, a.existNow)
			}
		}
	}
	// g3 deleted; g2 deleted too (nothing protects it); g1 kept.
	if len(res.Deleted) != 2 || len(res.Kept) != 1 || res.Kept[0].Path != g1 {
		t.Errorf("deleted %v, kept %v", res.Deleted, res.Kept)
	}
	if !valid(t, s, g1) || !exists(s, g1) || valid(t, s, g2) || exists(s, g2) {
		t.Errorf("g1 valid %v exists %v; g2 valid %v exists %v", valid(t, s, g1), exists(s, g1), valid(t, s, g2), exists(s, g2))
	}
}

// TestNixAddDuringDeletion: real Nix re-adding the very path ferry is
// deleting blocks in addTempRoot until the deletion ends, then sees the
// path invalid and writes it again; the store stays consistent.
func TestNixAddDuringDeletion(t *testing.T) {
	nixtest.RequireNix(t)
	root := t.TempDir()
	src := filepath.Join(t.TempDir(), "same.txt")
	os.WriteFile(src, []byte("same\n"), 0o644)
	p := mustParse(t, nixtest.Line(t, "nix-store", "--store", root, "--add", src))
	s := openStore(t, root)

	var c *Collection
	var nixOut bytes.Buffer
	var nixErr error
	done := make(chan struct{})
	opts := &Options{NoRuntimeRoots: true}
	opts.beforeDelete = func(e Entry) {
		if e.Path != p {
			return
		}
		cmd := exec.Command("nix-store", "--store", root, "--add", src)
		cmd.Env = nixtest.Env(t.TempDir())
		cmd.Stdout = &nixOut
		cmd.Stderr = &nixOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { nixErr = cmd.Wait(); close(done) }()
		waitFor(t, func() bool { return c.roots.has(p.HashPart()) })
		select {
		case <-done:
			t.Errorf("nix-store --add finished while its path was being deleted: %s", nixOut.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	var err error
	c, err = Plan(context.Background(), s, opts)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Execute(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	<-done
	if nixErr != nil || strings.TrimSpace(nixOut.String()) != p.String() {
		t.Fatalf("nix-store --add: %v\n%s", nixErr, nixOut.String())
	}
	if len(res.Deleted) != 1 {
		t.Errorf("deleted %v", res.Deleted)
	}
	if !valid(t, s, p) || !exists(s, p) {
		t.Errorf("%s not re-added", p)
	}
	nixtest.Nix(t, nil, "nix-store", "--store", root, "--verify", "--check-contents")
}

// TestConcurrentNixAdd runs ferry's GC repeatedly while real Nix adds
// paths in a loop: every add succeeds and the store verifies.
func TestConcurrentNixAdd(t *testing.T) {
	nixtest.RequireNix(t)
	root := t.TempDir()
	work := t.TempDir()
	os.WriteFile(filepath.Join(work, "seed"), []byte("seed"), 0o644)
	nixtest.Nix(t, nil, "nix-store", "--store", root, "--add", filepath.Join(work, "seed"))
	s := openStore(t, root)
	ctx := context.Background()
	// One collection first, so the socket file exists: a Nix 2.8 client
	// fails on ENOENT from connect but retries on ECONNREFUSED.
	if _, _, err := Collect(ctx, s, &Options{NoRuntimeRoots: true}); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	errs := make(chan error, 1)
	go func() {
		defer close(errs)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f := filepath.Join(work, fmt.Sprintf("f%d", i))
			os.WriteFile(f, []byte(strings.Repeat(fmt.Sprint(i), 100)), 0o644)
			// Half of them are re-adds of a path a GC may be deleting.
			if i%2 == 1 {
				f = filepath.Join(work, "seed")
			}
			cmd := exec.Command("nix-store", "--store", root, "--add", f)
			cmd.Env = nixtest.Env(work)
			if out, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("nix-store --add: %v\n%s", err, out)
				return
			}
		}
	}()
	deadline := time.Now().Add(time.Second)
	runs := 0
	for time.Now().Before(deadline) {
		if _, _, err := Collect(ctx, s, &Options{NoRuntimeRoots: true}); err != nil {
			t.Fatal(err)
		}
		runs++
	}
	close(stop)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d collections", runs)
	nixtest.Nix(t, nil, "nix-store", "--store", root, "--verify", "--check-contents")
	if _, _, err := Collect(ctx, s, &Options{NoRuntimeRoots: true}); err != nil {
		t.Fatal(err)
	}
	all, _ := s.QueryAllValidPaths(ctx)
	if len(all) != 0 {
		t.Errorf("left after a final collection: %v", all)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}
