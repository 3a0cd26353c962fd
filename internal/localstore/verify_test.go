package localstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/nixtest"
	"ferry/nix/nar"
	"ferry/nix/storepath"
)

// verifyFixture is a store of text objects: a <- b <- c (each refers to
// the previous one) and two standalone ones, x and y, with each one's NAR
// kept to put it back.
type verifyFixture struct {
	s          *Store
	a, b, c    storepath.Path
	x, y       storepath.Path
	nars       map[storepath.Path][]byte
	repairs    []storepath.Path
	restoreAll bool // a repair puts back every damaged path, not only its own
}

func newVerifyFixture(t *testing.T) *verifyFixture {
	t.Helper()
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	f := &verifyFixture{s: s, nars: map[storepath.Path][]byte{}}
	add := func(name string, refs ...storepath.Path) storepath.Path {
		content := name
		for _, r := range refs {
			content += " " + string(r)
		}
		info, err := s.AddText(ctx, name, []byte(content), refs)
		fatalIf(t, err)
		var buf bytes.Buffer
		fatalIf(t, s.NarFromPath(ctx, info.Path, &buf))
		f.nars[info.Path] = buf.Bytes()
		return info.Path
	}
	f.a = add("a")
	f.b = add("b", f.a)
	f.c = add("c", f.b)
	f.x = add("x")
	f.y = add("y")
	return f
}

// restore puts p's saved NAR back at its place, the damaged files first
// moved out of the way.
func (f *verifyFixture) restore(p storepath.Path) error {
	real := f.s.RealPath(p)
	if err := os.RemoveAll(real); err != nil {
		return err
	}
	return nar.Restore(bytes.NewReader(f.nars[p]), real)
}

// repair is a VerifyOptions.Repair that restores the saved NARs.
func (f *verifyFixture) repair(_ context.Context, p storepath.Path) error {
	f.repairs = append(f.repairs, p)
	if !f.restoreAll {
		return f.restore(p)
	}
	for q := range f.nars {
		if err := f.restore(q); err != nil {
			return err
		}
	}
	return nil
}

func (f *verifyFixture) remove(t *testing.T, p storepath.Path) {
	t.Helper()
	fatalIf(t, os.Remove(f.s.RealPath(p)))
}

func (f *verifyFixture) modify(t *testing.T, p storepath.Path) {
	t.Helper()
	real := f.s.RealPath(p)
	fatalIf(t, os.Chmod(real, 0o644))
	fatalIf(t, os.WriteFile(real, []byte("damaged"), 0o644))
}

func sameSet(got, want []storepath.Path) bool {
	if len(got) != len(want) {
		return false
	}
	seen := map[storepath.Path]int{}
	for _, p := range got {
		seen[p]++
	}
	for _, p := range want {
		if seen[p] != 1 {
			return false
		}
	}
	return true
}

func TestVerifyRepair(t *testing.T) {
	nixtest.RequireNix(t)
	ctx := context.Background()
	tests := []struct {
		name string
		// damage breaks the store and returns the options to verify with.
		damage  func(t *testing.T, f *verifyFixture) *VerifyOptions
		ok      bool
		missing func(f *verifyFixture) []storepath.Path
		inval   func(f *verifyFixture) []storepath.Path
		mod     func(f *verifyFixture) []storepath.Path
		fixed   func(f *verifyFixture) []storepath.Path
		calls   int
		message string // in the messages, with %a for f.a and %x for f.x
	}{
		{
			name: "missing chain is invalidated whole",
			damage: func(t *testing.T, f *verifyFixture) *VerifyOptions {
				// Whatever order the paths come in, c (b's referrer) must
				// be invalidated before b can be.
				if string(f.b) > string(f.c) {
					t.Errorf("b sorts after c: the test doesn't check the order")
				}
				f.remove(t, f.b)
				f.remove(t, f.c)
				return &VerifyOptions{Repair: f.repair}
			},
			ok:      true,
			missing: func(f *verifyFixture) []storepath.Path { return []storepath.Path{f.b, f.c} },
			inval:   func(f *verifyFixture) []storepath.Path { return []storepath.Path{f.b, f.c} },
		},
		{
			name: "missing with referrers and modified are repaired",
			damage: func(t *testing.T, f *verifyFixture) *VerifyOptions {
				f.remove(t, f.a)
				f.modify(t, f.x)
				return &VerifyOptions{CheckContents: true, Repair: f.repair}
			},
			ok:      true,
			missing: func(f *verifyFixture) []storepath.Path { return []storepath.Path{f.a} },
			mod:     func(f *verifyFixture) []storepath.Path { return []storepath.Path{f.x} },
			fixed:   func(f *verifyFixture) []storepath.Path { return []storepath.Path{f.a, f.x} },
			calls:   2,
			message: "path '%a' disappeared, but it still has valid referrers!",
		},
		{
			name: "a path fixed by an earlier repair is not repaired again",
			damage: func(t *testing.T, f *verifyFixture) *VerifyOptions {
				f.modify(t, f.x)
				f.modify(t, f.y)
				f.restoreAll = true
				return &VerifyOptions{CheckContents: true, Repair: f.repair}
			},
			ok:    true,
			mod:   func(f *verifyFixture) []storepath.Path { return []storepath.Path{f.x, f.y} },
			fixed: func(f *verifyFixture) []storepath.Path { return []storepath.Path{f.x, f.y} },
			calls: 1,
		},
		{
			name: "a failing repair is reported",
			damage: func(t *testing.T, f *verifyFixture) *VerifyOptions {
				f.modify(t, f.x)
				return &VerifyOptions{CheckContents: true, Repair: func(context.Context, storepath.Path) error {
					return errors.New("builder for 'foo.drv' failed with exit code 1")
				}}
			},
			mod:     func(f *verifyFixture) []storepath.Path { return []storepath.Path{f.x} },
			message: "builder for 'foo.drv' failed with exit code 1",
		},
		{
			name: "a repair that changes nothing does not count",
			damage: func(t *testing.T, f *verifyFixture) *VerifyOptions {
				f.modify(t, f.x)
				return &VerifyOptions{CheckContents: true, Repair: func(context.Context, storepath.Path) error { return nil }}
			},
			mod:     func(f *verifyFixture) []storepath.Path { return []storepath.Path{f.x} },
			message: "path '%x' is still damaged after its repair",
		},
		{
			name: "without a repairer",
			damage: func(t *testing.T, f *verifyFixture) *VerifyOptions {
				f.remove(t, f.a)
				f.modify(t, f.x)
				return &VerifyOptions{CheckContents: true}
			},
			missing: func(f *verifyFixture) []storepath.Path { return []storepath.Path{f.a} },
			mod:     func(f *verifyFixture) []storepath.Path { return []storepath.Path{f.x} },
			message: "path '%x' was modified! expected hash 'sha256:",
		},
	}
	none := func(*verifyFixture) []storepath.Path { return nil }
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newVerifyFixture(t)
			opts := tt.damage(t, f)
			rep, err := f.s.VerifyWith(ctx, opts)
			fatalIf(t, err)
			for _, c := range []struct {
				what     string
				got      []storepath.Path
				wantFunc func(*verifyFixture) []storepath.Path
			}{
				{"missing", rep.Missing, tt.missing},
				{"invalidated", rep.Invalidated, tt.inval},
				{"modified", rep.Modified, tt.mod},
				{"repaired", rep.Repaired, tt.fixed},
			} {
				want := c.wantFunc
				if want == nil {
					want = none
				}
				if !sameSet(c.got, want(f)) {
					t.Errorf("%s: %v, want %v", c.what, c.got, want(f))
				}
			}
			if rep.OK() != tt.ok {
				t.Errorf("OK() = %v\n%s", rep.OK(), strings.Join(rep.Messages, "\n"))
			}
			if tt.calls != 0 && len(f.repairs) != tt.calls {
				t.Errorf("repairer called for %v, want %d calls", f.repairs, tt.calls)
			}
			msg := strings.NewReplacer("%a", string(f.a), "%x", string(f.x)).Replace(tt.message)
			if all := strings.Join(rep.Messages, "\n"); !strings.Contains(all, msg) {
				t.Errorf("messages lack %q:\n%s", msg, all)
			}
			if tt.ok {
				nixVerify(t, f.s.Root())
			}
		})
	}
}

// Verify with repair but no repairer says what Nix says of a path that
// has neither substitutes nor a deriver.
func TestVerifyCannotRepair(t *testing.T) {
	f := newVerifyFixture(t)
	f.modify(t, f.x)
	rep, err := f.s.Verify(context.Background(), true, true)
	fatalIf(t, err)
	if rep.OK() || !strings.Contains(strings.Join(rep.Messages, "\n"), "cannot repair path '"+string(f.x)+"'") {
		t.Errorf("report %+v", rep)
	}
	if _, err := os.Stat(filepath.Join(f.s.RealDir(), f.x.Base())); err != nil {
		t.Errorf("damaged path removed: %v", err)
	}
}
