package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"ferry/nix/derivation"
	"ferry/nix/export"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
)

// mkPath makes a store path whose hash part is c repeated, so that paths
// sort by c.
func mkPath(c byte, name string) storepath.Path {
	return storepath.Path("/nix/store/" + strings.Repeat(string(c), 32) + "-" + name)
}

var (
	pa = mkPath('a', "a")
	pb = mkPath('b', "b")
	pc = mkPath('c', "c")
	pd = mkPath('d', "d")
	pf = mkPath('f', "f")
	px = mkPath('x', "outside")
)

func names(ps []storepath.Path) string {
	var ss []string
	for _, p := range ps {
		ss = append(ss, p.Name())
	}
	return strings.Join(ss, " ")
}

// TestTopoSortNixOrder checks the order of Nix's exportPaths (topoSort
// reversed): a depth-first post-order over the set in base-name order,
// following references in base-name order, whatever order either is
// given in.
func TestTopoSortNixOrder(t *testing.T) {
	refs := map[storepath.Path][]storepath.Path{
		pa: {pc, pa},     // a self-reference is ignored
		pb: {pf, pa, px}, // unsorted, and one outside the set
		pc: nil,
		pd: {pc, pb},
		pf: {pc},
	}
	get := func(p storepath.Path) []storepath.Path { return refs[p] }
	for _, in := range [][]storepath.Path{{pa, pb, pc, pd, pf}, {pd, pf, pb, pa, pc}} {
		got, err := TopoSort(in, get)
		if err != nil {
			t.Fatal(err)
		}
		if want := "c a f b d"; names(got) != want {
			t.Errorf("TopoSort(%s) = %s, want %s", names(in), names(got), want)
		}
	}
	if got, err := TopoSort([]storepath.Path{pd, pc}, get); err != nil || names(got) != "c d" {
		t.Errorf("subset: %s %v", names(got), err)
	}
}

func TestTopoSortCycle(t *testing.T) {
	refs := map[storepath.Path][]storepath.Path{pa: {pb}, pb: {pc}, pc: {pa}}
	_, err := TopoSort([]storepath.Path{pc, pb, pa}, func(p storepath.Path) []storepath.Path { return refs[p] })
	want := fmt.Sprintf("cycle detected in the references of '%s' from '%s'", pa, pc)
	if err == nil || err.Error() != want {
		t.Errorf("TopoSort = %v, want %q", err, want)
	}
}

func TestWalkClosure(t *testing.T) {
	refs := map[storepath.Path][]storepath.Path{pa: {pb, pa}, pb: {pc}, pc: {pb}, pd: {pf}}
	calls := map[storepath.Path]int{}
	got, err := WalkClosure([]storepath.Path{pa, pb}, func(p storepath.Path) ([]storepath.Path, error) {
		calls[p]++
		return refs[p], nil
	})
	if err != nil || names(got) != "a b c" {
		t.Errorf("WalkClosure = %s, %v", names(got), err)
	}
	for p, n := range calls {
		if n != 1 {
			t.Errorf("next(%s) called %d times", p, n)
		}
	}
	boom := errors.New("boom")
	if _, err := WalkClosure([]storepath.Path{pa}, func(storepath.Path) ([]storepath.Path, error) { return nil, boom }); err != boom {
		t.Errorf("error from next: %v", err)
	}
}

// memStore is a Store of NARs in memory.
type memStore struct {
	infos map[storepath.Path]*PathInfo
	nars  map[storepath.Path][]byte
}

func newMemStore() *memStore {
	return &memStore{infos: map[storepath.Path]*PathInfo{}, nars: map[storepath.Path][]byte{}}
}

func (m *memStore) add(t *testing.T, p storepath.Path, content string, refs ...storepath.Path) {
	t.Helper()
	var b bytes.Buffer
	if err := nar.DumpBytes(&b, []byte(content)); err != nil {
		t.Fatal(err)
	}
	storepath.Sort(refs)
	m.nars[p] = b.Bytes()
	m.infos[p] = &PathInfo{Path: p, NarHash: hash.Sum(hash.SHA256, b.Bytes()), NarSize: uint64(b.Len()), References: refs}
}

func (m *memStore) Dir() storepath.Dir { return storepath.DefaultDir }
func (m *memStore) QueryPathInfo(ctx context.Context, p storepath.Path) (*PathInfo, error) {
	if info := m.infos[p]; info != nil {
		return info, nil
	}
	return nil, fmt.Errorf("path '%s' %w", p, ErrNotValid)
}
func (m *memStore) QueryValidPaths(ctx context.Context, ps []storepath.Path) ([]storepath.Path, error) {
	var out []storepath.Path
	for _, p := range ps {
		if m.infos[p] != nil {
			out = append(out, p)
		}
	}
	return out, nil
}
func (m *memStore) NarFromPath(ctx context.Context, p storepath.Path, w io.Writer) error {
	if m.infos[p] == nil {
		return fmt.Errorf("path '%s' %w", p, ErrNotValid)
	}
	_, err := w.Write(m.nars[p])
	return err
}
func (m *memStore) AddToStoreNar(context.Context, *PathInfo, io.Reader) error {
	return errors.New("read-only")
}
func (m *memStore) Close() error { return nil }

// TestClosure covers computeFSClosure over path infos, with and without
// the outputs of the derivations in it (read from their .drv files).
func TestClosure(t *testing.T) {
	ctx := context.Background()
	m := newMemStore()
	m.add(t, pc, "c")
	m.add(t, pb, "b", pc)
	out := mkPath('f', "out")
	m.add(t, out, "out", pb)
	missing := mkPath('g', "missing") // an output that isn't valid
	drvPath := mkPath('d', "thing.drv")
	d := &derivation.Derivation{
		Name:     "thing",
		Outputs:  map[string]derivation.Output{"out": {Path: out}, "dev": {Path: missing}},
		Platform: "x86_64-linux", Builder: "/bin/sh",
		Env: map[string]string{"out": string(out), "dev": string(missing)},
	}
	m.add(t, drvPath, string(d.ATerm()), pc)

	got, err := Closure(ctx, m, []storepath.Path{drvPath}, false)
	if err != nil || names(got) != "c thing.drv" {
		t.Errorf("Closure = %s, %v", names(got), err)
	}
	got, err = Closure(ctx, m, []storepath.Path{drvPath}, true)
	if err != nil || names(got) != "b c thing.drv out" {
		t.Errorf("Closure with outputs = %s, %v", names(got), err)
	}
	if _, err := Closure(ctx, m, []storepath.Path{missing}, false); !errors.Is(err, ErrNotValid) {
		t.Errorf("Closure of an invalid path: %v", err)
	}
}

// TestExport reads back what Export writes: every path once, references
// first, with its NAR, references and deriver; a NAR that no longer has
// its registered hash stops the export.
func TestExport(t *testing.T) {
	ctx := context.Background()
	m := newMemStore()
	m.add(t, pc, "c")
	m.add(t, pb, "b", pc, pb)
	m.add(t, pa, "a", pb)
	m.infos[pa].Deriver = mkPath('d', "a.drv")
	var buf bytes.Buffer
	if err := Export(ctx, m, &buf, []storepath.Path{pa, pc, pb, pa}); err != nil {
		t.Fatal(err)
	}
	r := export.NewReader(&buf, &export.ReaderOptions{StoreDir: storepath.DefaultDir})
	var order []storepath.Path
	for {
		err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		narData, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		info, err := r.Info()
		if err != nil {
			t.Fatal(err)
		}
		want := m.infos[info.Path]
		if !bytes.Equal(narData, m.nars[info.Path]) || names(info.References) != names(want.References) || info.Deriver != want.Deriver {
			t.Errorf("%s read back as %+v", info.Path, info)
		}
		order = append(order, info.Path)
	}
	if names(order) != "c b a" {
		t.Errorf("exported %s, want c b a", names(order))
	}

	m.nars[pb] = m.nars[pc] // corrupted
	err := Export(ctx, m, io.Discard, []storepath.Path{pa})
	if err != nil {
		t.Fatalf("export of a alone: %v", err)
	}
	err = Export(ctx, m, io.Discard, []storepath.Path{pb})
	if err == nil || !strings.Contains(err.Error(), "hash of path '"+string(pb)+"' has changed from '"+m.infos[pb].NarHash.String()+"'") {
		t.Errorf("export of a corrupted path: %v", err)
	}
	if err := Export(ctx, m, io.Discard, []storepath.Path{px}); !errors.Is(err, ErrNotValid) {
		t.Errorf("export of an invalid path: %v", err)
	}
}
