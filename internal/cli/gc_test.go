package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/nixtest"
)

// ferry gc and store add-root against real Nix on one store.
func TestGCCommandsMatchNix(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	st := filepath.Join(dir, "store")
	for _, n := range []string{"a", "b", "c"} {
		os.WriteFile(filepath.Join(dir, n), []byte(n+"\n"), 0o644)
	}
	a := nixtest.Line(t, "nix-store", "--store", st, "--add", filepath.Join(dir, "a"))
	b := nixtest.Line(t, "nix-store", "--store", st, "--add", filepath.Join(dir, "b"))
	c := strings.TrimSpace(mustFerry(t, nil, "--store", st, "store", "add", filepath.Join(dir, "c")))

	link := filepath.Join(dir, "result")
	if got := strings.TrimSpace(mustFerry(t, nil, "--store", st, "store", "add-root", link, a)); got != link {
		t.Errorf("add-root printed %q", got)
	}
	if roots := nixtest.Line(t, "nix-store", "--store", st, "--gc", "--print-roots"); roots != link+" -> "+a {
		t.Errorf("nix-store --print-roots: %q", roots)
	}

	dead := mustFerry(t, nil, "--store", st, "gc", "--print-dead")
	if want := string(nixtest.Nix(t, nil, "nix-store", "--store", st, "--gc", "--print-dead")); dead != want {
		t.Errorf("gc --print-dead:\n%s\nnix:\n%s", dead, want)
	}
	if lines := strings.Fields(dead); len(lines) != 2 || !strings.Contains(dead, b) || !strings.Contains(dead, c) {
		t.Errorf("dead: %q", dead)
	}
	if live := mustFerry(t, nil, "--store", st, "gc", "--print-live"); strings.TrimSpace(live) != a {
		t.Errorf("gc --print-live: %q", live)
	}
	if out := mustFerry(t, nil, "--store", st, "gc", "--dry-run"); !strings.HasPrefix(out, "2 store paths would be deleted, ") {
		t.Errorf("gc --dry-run: %q", out)
	}
	if out := mustFerry(t, nil, "--store", st, "gc", "--max-freed", "0"); out != "0 store paths deleted, 0.00 MiB freed\n" {
		t.Errorf("gc --max-freed 0: %q", out)
	}
	if out := mustFerry(t, nil, "--store", st, "gc", "--max-freed", "1K"); out != "2 store paths deleted, 0.00 MiB freed\n" {
		t.Errorf("gc: %q", out)
	}
	valid := nixtest.Line(t, "nix-store", "--store", st, "--check-validity", "--print-invalid", a, b, c)
	if valid != b+"\n"+c {
		t.Errorf("invalid after gc: %q", valid)
	}
	nixtest.Nix(t, nil, "nix-store", "--store", st, "--verify", "--check-contents")

	if _, errs, code := ferry(t, nil, "--store", st, "store", "delete", a); code != 1 || !strings.Contains(errs, "still alive") {
		t.Errorf("deleting a rooted path: exit %d: %s", code, errs)
	}
	os.Remove(link)
	if out := mustFerry(t, nil, "--store", st, "store", "delete", a); !strings.HasPrefix(out, "1 store paths deleted") {
		t.Errorf("store delete: %q", out)
	}
	if n, _ := os.ReadDir(filepath.Join(st, "nix/var/nix/gcroots/auto")); len(n) != 0 {
		t.Errorf("stale auto root left: %v", n)
	}
}

func TestGCUsage(t *testing.T) {
	st := filepath.Join(t.TempDir(), "store")
	for _, args := range [][]string{
		{"gc", "--print-dead", "--print-live"},
		{"gc", "--max-freed", "lots"},
		{"gc", "extra"},
		{"store", "add-root", "onlylink"},
		{"store", "delete"},
	} {
		if _, _, code := ferry(t, nil, append([]string{"--store", st}, args...)...); code != 2 {
			t.Errorf("ferry %v: exit %d, want 2", args, code)
		}
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0", 0, true},
		{"123", 123, true},
		{"2K", 2048, true},
		{"3m", 3 << 20, true},
		{"1G", 1 << 30, true},
		{"1T", 1 << 40, true},
		{"", 0, false},
		{"K", 0, false},
		{"-1", 0, false},
		{"99999999999999999999T", 0, false},
		{"20000000T", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseBytes(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("parseBytes(%q) = %d, %v", tt.in, got, err)
			}
		})
	}
}
