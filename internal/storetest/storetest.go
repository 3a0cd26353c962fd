// Package storetest is the conformance suite every store.Store runs: one
// table of behaviours (queries, adds with and without references, a bad
// hash, a missing reference, temp roots against a real garbage collection,
// closures, pipelined adds) that the local store, the ssh store over a pipe
// to an in-process ferry serve, and the ssh store against real
// `nix-store --serve` must all show alike. Values are compared with go-cmp.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	storecopy "ferry/internal/copy"
	"ferry/internal/nixtest"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/store"
)

// Harness opens stores for the suite.
type Harness struct {
	// Open returns a new handle on an empty store whose files live in the
	// chroot store root (a directory real Nix can open with --store root).
	// The suite closes the handle.
	Open func(t *testing.T, root string) store.Store
	// Reopen returns another handle on the store at root (after a failed
	// add ended a remote session, say).
	Reopen func(t *testing.T, root string) store.Store
	// Dir is the logical store directory of the stores Open returns
	// (their URI's store=); "" means /nix/store. Their objects still lie
	// in root/nix/store, as in a Nix chroot store with store= set.
	Dir storepath.Dir
}

// Object is a text object (as builtins.toFile makes it) and its NAR.
type Object struct {
	Info *store.PathInfo
	NAR  []byte
}

// Text makes the text object name with the given contents and references.
func Text(t testing.TB, name, content string, refs ...storepath.Path) *Object {
	t.Helper()
	return TextIn(t, storepath.DefaultDir, name, content, refs...)
}

// TextIn is Text in the store directory dir.
func TextIn(t testing.TB, dir storepath.Dir, name, content string, refs ...storepath.Path) *Object {
	t.Helper()
	h := hash.SumString(hash.SHA256, content)
	p, err := dir.MakeText(name, h, refs)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	nw := nar.NewWriter(&buf)
	if err := nw.WriteHeader(&nar.Header{Type: nar.TypeRegular, Size: int64(len(content))}); err != nil {
		t.Fatal(err)
	}
	io.WriteString(nw, content)
	if err := nw.Close(); err != nil {
		t.Fatal(err)
	}
	sorted := append([]storepath.Path(nil), refs...)
	storepath.Sort(sorted)
	return &Object{
		Info: &store.PathInfo{Path: p, NarHash: hash.Sum(hash.SHA256, buf.Bytes()), NarSize: uint64(buf.Len()),
			References: sorted, CA: storepath.ContentAddress{Method: storepath.Text, Hash: h}},
		NAR: buf.Bytes(),
	}
}

func add(ctx context.Context, st store.Store, o *Object) error {
	info := *o.Info
	return st.AddToStoreNar(ctx, &info, bytes.NewReader(o.NAR))
}

// comparable is the part of a PathInfo every store keeps as given.
var comparable = cmp.Options{
	cmpopts.IgnoreFields(store.PathInfo{}, "RegistrationTime", "Ultimate"),
	cmp.Comparer(func(a, b hash.Hash) bool { return a.String() == b.String() }),
	cmpopts.EquateEmpty(),
}

// Run runs the suite.
func Run(t *testing.T, h *Harness) {
	ctx := context.Background()
	dir := h.Dir
	if dir == "" {
		dir = storepath.DefaultDir
	}
	// nixURI names the store at root for real Nix.
	nixURI := func(root string) string {
		if dir == storepath.DefaultDir {
			return root
		}
		return root + "?store=" + string(dir)
	}
	// onDisk is where the object of p lies in the store at root.
	onDisk := func(root string, p storepath.Path) string { return filepath.Join(root, "nix/store", p.Base()) }
	Text := func(t testing.TB, name, content string, refs ...storepath.Path) *Object {
		t.Helper()
		return TextIn(t, dir, name, content, refs...)
	}
	dep := Text(t, "dep", "a dependency\n")
	top := Text(t, "top", "refers to "+string(dep.Info.Path)+"\n", dep.Info.Path)
	open := func(t *testing.T) (store.Store, string) {
		root := filepath.Join(t.TempDir(), "store")
		st := h.Open(t, root)
		t.Cleanup(func() { st.Close() })
		return st, root
	}
	mustAdd := func(t *testing.T, st store.Store, os ...*Object) {
		t.Helper()
		for _, o := range os {
			if err := add(ctx, st, o); err != nil {
				t.Fatalf("add %s: %v", o.Info.Path, err)
			}
		}
	}
	notValid := func(t *testing.T, root string, paths ...storepath.Path) {
		t.Helper()
		st := h.Reopen(t, root)
		defer st.Close()
		valid, err := st.QueryValidPaths(ctx, paths)
		if err != nil {
			t.Fatal(err)
		}
		if len(valid) != 0 {
			t.Errorf("valid after a failed add: %v", valid)
		}
	}

	t.Run("empty", func(t *testing.T) {
		st, _ := open(t)
		if st.Dir() != dir {
			t.Errorf("Dir() = %q", st.Dir())
		}
		valid, err := st.QueryValidPaths(ctx, []storepath.Path{dep.Info.Path})
		if err != nil || len(valid) != 0 {
			t.Errorf("QueryValidPaths = %v, %v; want none", valid, err)
		}
		if _, err := st.QueryPathInfo(ctx, dep.Info.Path); !errors.Is(err, store.ErrNotValid) {
			t.Errorf("QueryPathInfo of a missing path: %v, want ErrNotValid", err)
		}
	})

	t.Run("add and query", func(t *testing.T) {
		st, _ := open(t)
		mustAdd(t, st, dep, top)
		for _, o := range []*Object{dep, top} {
			info, err := st.QueryPathInfo(ctx, o.Info.Path)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(o.Info, info, comparable); diff != "" {
				t.Errorf("QueryPathInfo(%s) (-added +got):\n%s", o.Info.Path, diff)
			}
			var buf bytes.Buffer
			if err := st.NarFromPath(ctx, o.Info.Path, &buf); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), o.NAR) {
				t.Errorf("NarFromPath(%s) differs from the NAR added", o.Info.Path)
			}
		}
		valid, err := st.QueryValidPaths(ctx, []storepath.Path{top.Info.Path, storepath.Path(dir + "/00000000000000000000000000000000-none"), dep.Info.Path})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]storepath.Path{top.Info.Path, dep.Info.Path}, valid, cmpopts.SortSlices(func(a, b storepath.Path) bool { return a < b })); diff != "" {
			t.Errorf("QueryValidPaths (-want +got):\n%s", diff)
		}
		// Adding a valid path again succeeds.
		mustAdd(t, st, top)
		closure, err := storecopy.Closure(ctx, st, []storepath.Path{top.Info.Path}, false)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]storepath.Path{dep.Info.Path, top.Info.Path}, closure, cmpopts.SortSlices(func(a, b storepath.Path) bool { return a < b })); diff != "" {
			t.Errorf("closure (-want +got):\n%s", diff)
		}
	})

	t.Run("bad hash", func(t *testing.T) {
		st, root := open(t)
		bad := *dep
		info := *dep.Info
		info.NarHash = hash.SumString(hash.SHA256, "something else")
		bad.Info = &info
		if err := add(ctx, st, &bad); err == nil {
			t.Fatal("a NAR that does not match its hash was accepted")
		}
		st.Close()
		notValid(t, root, dep.Info.Path)
	})

	t.Run("bad size", func(t *testing.T) {
		st, root := open(t)
		bad := *dep
		info := *dep.Info
		info.NarSize++
		bad.Info = &info
		bad.NAR = append(append([]byte(nil), dep.NAR...), 0)
		if err := add(ctx, st, &bad); err == nil {
			t.Fatal("a NAR with trailing bytes was accepted")
		}
		st.Close()
		notValid(t, root, dep.Info.Path)
	})

	t.Run("missing reference", func(t *testing.T) {
		st, root := open(t)
		if err := add(ctx, st, top); err == nil {
			t.Fatal("a path whose reference is not valid was accepted")
		}
		st.Close()
		notValid(t, root, top.Info.Path)
	})

	t.Run("pipelined adds", func(t *testing.T) {
		st, root := open(t)
		chain := []*Object{dep}
		for i := range 20 {
			prev := chain[len(chain)-1].Info.Path
			chain = append(chain, Text(t, "chain", "link "+string(rune('a'+i))+" after "+string(prev), prev))
		}
		var infos []*store.PathInfo
		nars := map[storepath.Path][]byte{}
		for _, o := range chain {
			infos = append(infos, o.Info)
			nars[o.Info.Path] = o.NAR
		}
		var added []storepath.Path
		err := storecopy.AddAll(ctx, st, infos, func(_ context.Context, info *store.PathInfo, w io.Writer) error {
			_, err := w.Write(nars[info.Path])
			return err
		}, func(info *store.PathInfo) { added = append(added, info.Path) })
		if err != nil {
			t.Fatal(err)
		}
		if len(added) != len(chain) {
			t.Errorf("added called %d times for %d paths", len(added), len(chain))
		}
		st.Close()
		st = h.Reopen(t, root)
		defer st.Close()
		valid, err := st.QueryValidPaths(ctx, pathsOf(chain))
		if err != nil || len(valid) != len(chain) {
			t.Errorf("%d of %d valid after pipelined adds (%v)", len(valid), len(chain), err)
		}
	})

	t.Run("temp roots survive a real GC", func(t *testing.T) {
		nixtest.RequireNix(t)
		st, root := open(t)
		mustAdd(t, st, dep, top)
		st.Close()
		st = h.Reopen(t, root)
		valid, err := storecopy.ValidLocked(ctx, st, []storepath.Path{top.Info.Path})
		if err != nil || len(valid) != 1 {
			t.Fatalf("locked query: %v, %v", valid, err)
		}
		gc := func() {
			t.Helper()
			if _, stderr, err := nixtest.Try(t, nil, "nix-store", "--store", nixURI(root), "--gc"); err != nil {
				t.Fatalf("nix-store --gc: %v\n%s", err, stderr)
			}
		}
		gc()
		for _, o := range []*Object{dep, top} {
			if _, err := os.Stat(onDisk(root, o.Info.Path)); err != nil {
				t.Errorf("the GC deleted %s while it was locked: %v", o.Info.Path, err)
			}
		}
		st.Close()
		gc()
		if _, err := os.Stat(onDisk(root, top.Info.Path)); err == nil {
			t.Errorf("%s survived a GC after the handle was closed: the lock outlived it", top.Info.Path)
		}
	})
}

func pathsOf(os []*Object) []storepath.Path {
	ps := make([]storepath.Path, len(os))
	for i, o := range os {
		ps[i] = o.Info.Path
	}
	return ps
}
