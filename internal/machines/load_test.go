package machines

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"ferry/internal/lock"
)

func mustParse(t *testing.T, spec string) []*Machine {
	t.Helper()
	ms, err := Parse(spec, sys)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// TestLoadFiles: the names build-remote.cc@2.8.0 gives the lock files
// (seen in a Nix run: "ssh:__localhost?remote-program=nix-store&
// remote-store=_tmp_mexp_rs-0"), from the URI as Machine keeps it.
func TestLoadFiles(t *testing.T) {
	st := t.TempDir()
	l, err := OpenLoad(st)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(st, "current-load")); err != nil || !fi.IsDir() {
		t.Fatalf("current-load: %v", err)
	}
	m := mustParse(t, "localhost?remote-program=nix-store&remote-store=_tmp_mexp_rs - - 2")[0]
	m2 := mustParse(t, "ssh://localhost?remote-program=nix-store&remote-store=/tmp/mexp/rs - /key 2 - - a")[0]
	for _, m := range []*Machine{m, m2} {
		s, err := l.TryAcquire(m)
		if err != nil || s == nil || s.Index != 0 {
			t.Fatalf("TryAcquire: %v %+v", err, s)
		}
		u, err := l.UploadLock(context.Background(), m)
		if err != nil {
			t.Fatal(err)
		}
		u.Release()
		s.Release()
	}
	var names []string
	ents, _ := os.ReadDir(l.Dir())
	for _, e := range ents {
		names = append(names, e.Name())
	}
	want := []string{"main-lock",
		"ssh:__localhost?remote-program=nix-store&remote-store=_tmp_mexp_rs-0",
		"ssh:__localhost?remote-program=nix-store&remote-store=_tmp_mexp_rs-1",
		"ssh:__localhost?remote-program=nix-store&remote-store=_tmp_mexp_rs.upload-lock"}
	if len(names) != len(want) {
		t.Fatalf("files %q, want %q", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Errorf("files %q, want %q", names, want)
		}
	}
	if _, err := OpenLoad(filepath.Join(st, "missing")); err == nil {
		t.Error("OpenLoad of a missing state directory succeeded")
	}
}

// TestSlots: slots fill up, Used counts them (held through other Slots of
// this process too: flock is per open file), Release frees them.
func TestSlots(t *testing.T) {
	l, err := OpenLoad(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := mustParse(t, "h - - 3")[0]
	var held []*Slot
	for i := 0; i < 3; i++ {
		s, err := l.TryAcquire(m)
		if err != nil || s == nil {
			t.Fatalf("slot %d: %v", i, err)
		}
		if s.Index != i || s.Load != i || s.Machine != m {
			t.Errorf("slot %d: index %d load %d", i, s.Index, s.Load)
		}
		held = append(held, s)
		if n, err := l.Used(m); err != nil || n != i+1 {
			t.Errorf("Used = %d, %v; want %d", n, err, i+1)
		}
	}
	if s, err := l.TryAcquire(m); err != nil || s != nil {
		t.Fatalf("a fourth slot: %+v %v", s, err)
	}
	held[1].Release()
	held[1].Release() // twice is a no-op
	s, err := l.TryAcquire(m)
	if err != nil || s == nil || s.Index != 1 || s.Load != 2 {
		t.Fatalf("freed slot: %+v %v", s, err)
	}
	for _, s := range append(held, s) {
		s.Release()
	}
	if n, _ := l.Used(m); n != 0 {
		t.Errorf("Used after release = %d", n)
	}
	zero := mustParse(t, "z - - 0")[0]
	if s, err := l.TryAcquire(zero); s != nil || err != nil {
		t.Errorf("max-jobs 0: %+v %v", s, err)
	}

	// TryAcquire waits for main-lock, as build-remote does.
	main, err := lock.OpenLockFile(filepath.Join(l.Dir(), "main-lock"))
	if err != nil {
		t.Fatal(err)
	}
	if err := lock.Flock(context.Background(), main, lock.Exclusive); err != nil {
		t.Fatal(err)
	}
	got := make(chan *Slot)
	go func() { s, _ := l.TryAcquire(m); got <- s }()
	select {
	case <-got:
		t.Fatal("TryAcquire did not wait for main-lock")
	case <-time.After(200 * time.Millisecond):
	}
	main.Close()
	if s := <-got; s == nil {
		t.Error("no slot after main-lock was released")
	} else {
		s.Release()
	}

	// The upload lock waits, bounded by the context.
	u, err := l.UploadLock(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := l.UploadLock(ctx, m); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second upload lock: %v", err)
	}
	// As build-remote: after the wait, go on without it.
	if ul, hogged, err := l.UploadLockWait(context.Background(), m, 100*time.Millisecond); ul != nil || !hogged || err != nil {
		t.Errorf("UploadLockWait while held: %v %v %v", ul, hogged, err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if _, hogged, err := l.UploadLockWait(cctx, m, time.Minute); hogged || err == nil {
		t.Errorf("UploadLockWait cancelled: hogged %v, %v", hogged, err)
	}
	u.Release()
	if ul, hogged, err := l.UploadLockWait(context.Background(), m, time.Minute); ul == nil || hogged || err != nil {
		t.Errorf("UploadLockWait once free: %v %v %v", ul, hogged, err)
	} else {
		ul.Release()
	}
	if u2, err := l.UploadLock(context.Background(), m); err != nil {
		t.Error(err)
	} else {
		u2.Release()
	}
}

// TestSelect: build-remote.cc@2.8.0's choice: integer load/speed, then the
// higher speed factor, then the lower load, then the first.
func TestSelect(t *testing.T) {
	l, err := OpenLoad(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	hold := func(m *Machine, n int) []*Slot {
		var ss []*Slot
		for i := 0; i < n; i++ {
			s, err := l.TryAcquire(m)
			if err != nil || s == nil {
				t.Fatalf("hold %s: %v", m.URI, err)
			}
			ss = append(ss, s)
		}
		return ss
	}
	release := func(ss []*Slot) {
		for _, s := range ss {
			s.Release()
		}
	}
	pick := func(ms []*Machine, system string, req ...string) string {
		t.Helper()
		s, right, err := l.Select(ms, system, req)
		if err != nil {
			t.Fatal(err)
		}
		if s == nil {
			if right {
				return "postpone"
			}
			return "decline"
		}
		defer s.Release()
		return s.Machine.URI
	}
	ms := mustParse(t, "a - - 4 1; b - - 4 3; c aarch64-linux - 4 9")
	a, b := ms[0], ms[1]
	// All idle: the higher speed factor.
	if got := pick(ms, sys); got != "ssh://b" {
		t.Errorf("idle: %s", got)
	}
	// b with 2 busy: 2/3 == 0 == 0/1, so b still (speed 3 > 1).
	hb := hold(b, 2)
	if got := pick(ms, sys); got != "ssh://b" {
		t.Errorf("b load 2: %s", got)
	}
	// b with 3 busy: 3/3 = 1 > 0: a.
	hb = append(hb, hold(b, 1)...)
	if got := pick(ms, sys); got != "ssh://a" {
		t.Errorf("b load 3: %s", got)
	}
	// a with 1 busy: 1/1 == 3/3, b for its speed.
	ha := hold(a, 1)
	if got := pick(ms, sys); got != "ssh://b" {
		t.Errorf("a load 1, b load 3: %s", got)
	}
	// Same speed: the lower load; equal: the first.
	same := mustParse(t, "p - - 4 2; q - - 4 2")
	hp := hold(same[0], 1)
	if got := pick(same, sys); got != "ssh://q" {
		t.Errorf("p busier: %s", got)
	}
	hq := hold(same[1], 1)
	if got := pick(same, sys); got != "ssh://p" {
		t.Errorf("tie: %s", got)
	}
	// Full machines: postpone; none of the right type: decline.
	hb = append(hb, hold(b, 1)...)
	ha = append(ha, hold(a, 3)...)
	if got := pick(ms, sys); got != "postpone" {
		t.Errorf("all busy: %s", got)
	}
	if got := pick(ms, "riscv64-linux"); got != "decline" {
		t.Errorf("no such system: %s", got)
	}
	// The slots Select looked at and did not keep are free again.
	release(ha)
	if n, _ := l.Used(a); n != 0 {
		t.Errorf("a: %d busy after release", n)
	}
	release(hb)
	release(hp)
	release(hq)
	if got := pick(ms, "aarch64-linux"); got != "ssh://c" {
		t.Errorf("aarch64: %s", got)
	}
	for _, m := range append(ms, same...) {
		if n, _ := l.Used(m); n != 0 {
			t.Errorf("%s: %d busy at the end", m.URI, n)
		}
	}
}
