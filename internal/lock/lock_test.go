package lock

import (
	"bufio"
	"context"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func TestPathLocksExclude(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	l1, err := LockPaths(ctx, []string{b, a, a}, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockPaths(ctx, []string{a}, false); err == nil {
		t.Fatal("second lock succeeded")
	}
	var got atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		l2, err := LockPaths(ctx, []string{a, b}, true)
		if err != nil {
			t.Error(err)
			return
		}
		got.Store(true)
		l2.Unlock()
	}()
	time.Sleep(20 * time.Millisecond)
	if got.Load() {
		t.Fatal("lock not exclusive")
	}
	l1.SetDeletion(true)
	if err := l1.Unlock(); err != nil {
		t.Fatal(err)
	}
	<-done
	if !got.Load() {
		t.Fatal("waiter never got the lock")
	}
	// The waiter saw the deleted file ("d") and took a fresh one, which it
	// left behind (no deletion).
	if st, err := os.Stat(a + ".lock"); err != nil || st.Size() != 0 {
		t.Fatalf("lock file: %v %v", st, err)
	}
}

func TestPathLocksCancel(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	l1, err := LockPaths(context.Background(), []string{a}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := LockPaths(ctx, []string{a}, true); err == nil {
		t.Fatal("lock succeeded")
	}
}

func TestTempRootsFile(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	os.MkdirAll(TempRootsDir(state), 0o755)
	tr := OpenTempRoots(state)
	tr2 := OpenTempRoots(state)
	if tr != tr2 {
		t.Fatal("not shared")
	}
	for _, p := range []string{"/nix/store/a-x", "/nix/store/b-y", "/nix/store/a-x"} {
		if err := tr.Add(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := os.ReadFile(tr.Path())
	if string(data) != "/nix/store/a-x\x00/nix/store/b-y\x00" { // a path added again is not written again
		t.Fatalf("file %q", data)
	}
	roots, err := ReadTempRoots(state)
	if err != nil || len(roots) != 2 {
		t.Fatalf("roots %v %v", roots, err)
	}
	if ok, _ := ProcessAlive(state, os.Getpid()); !ok {
		t.Fatal("self not alive")
	}
	tr2.Close()
	if _, err := os.Stat(tr.Path()); err != nil {
		t.Fatal("closed too early")
	}
	tr.Close()
	if _, err := os.Stat(tr.Path()); !os.IsNotExist(err) {
		t.Fatal("file left behind")
	}
	// A dead process's file is dropped.
	dead := filepath.Join(TempRootsDir(state), "999999999")
	os.WriteFile(dead, []byte("/nix/store/c-z\x00"), 0o600)
	roots, err = ReadTempRoots(state)
	if err != nil || len(roots) != 0 {
		t.Fatalf("roots %v %v", roots, err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatal("dead file kept")
	}
	if ok, _ := ProcessAlive(state, 999999999); ok {
		t.Fatal("dead alive")
	}
}

// TestGCSocketHandshake plays a GC: it holds gc.lock exclusive and serves
// the socket; Add must go through it and still write the file.
func TestGCSocketHandshake(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	os.MkdirAll(TempRootsDir(state), 0o755)
	os.MkdirAll(filepath.Dir(GCSocketPath(state)), 0o755)
	gc, err := OpenLockFile(GCLockPath(state))
	if err != nil {
		t.Fatal(err)
	}
	if err := Flock(ctx, gc, Exclusive); err != nil {
		t.Fatal(err)
	}
	tr := OpenTempRoots(state)
	defer tr.Close()
	got := make(chan string, 1)
	added := make(chan error, 1)
	go func() { added <- tr.Add(ctx, "/nix/store/a-x") }()
	// The GC starts listening only after the client has started trying.
	time.Sleep(20 * time.Millisecond)
	ln, err := net.Listen("unix", GCSocketPath(state))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		line, _ := bufio.NewReader(c).ReadString('\n')
		got <- line
		time.Sleep(10 * time.Millisecond)
		c.Write([]byte("1"))
		c.Close() // the GC ends
	}()
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	if l := <-got; l != "/nix/store/a-x\n" {
		t.Fatalf("gc got %q", l)
	}
	// After the GC is gone, Add goes back to the lock path.
	ln.Close()
	gc.Close()
	if err := tr.Add(ctx, "/nix/store/b-y"); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(tr.Path())
	if string(data) != "/nix/store/a-x\x00/nix/store/b-y\x00" {
		t.Fatalf("file %q", data)
	}
}
