package localstore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/store"
)

// narInfo returns the NAR of a regular file holding data and its info.
func narInfo(p storepath.Path, data string, refs ...storepath.Path) ([]byte, *store.PathInfo) {
	var b bytes.Buffer
	if err := nar.DumpBytes(&b, []byte(data)); err != nil {
		panic(err)
	}
	return b.Bytes(), &store.PathInfo{Path: p, NarHash: hash.Sum(hash.SHA256, b.Bytes()), NarSize: uint64(b.Len()), References: refs}
}

func temporaries(t *testing.T, s *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(s.realDir)
	fatalIf(t, err)
	var tmps []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), TempPrefix) {
			tmps = append(tmps, e.Name())
		}
	}
	return tmps
}

// TestBatch stages a chain of paths (each referring to the one before and
// to a path valid beforehand), checks nothing is valid until Commit and
// everything is after, with Nix agreeing; refused adds stage nothing and
// Discard leaves nothing behind.
func TestBatch(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openStore(t, root)
	base := fakePath("batch-base", "base")
	data, info := narInfo(base, "base")
	fatalIf(t, s.AddToStoreNar(ctx, info, bytes.NewReader(data)))

	b := s.NewBatch().(*Batch)
	prev := base
	var paths []storepath.Path
	for i := range 5 {
		p := fakePath(fmt.Sprint("batch", i), fmt.Sprint("b", i))
		data, info := narInfo(p, "refers to "+string(prev)+" and "+string(base), prev, base)
		fatalIf(t, b.Add(ctx, info, bytes.NewReader(data)))
		fatalIf(t, b.Add(ctx, info, bytes.NewReader(data))) // staged already: skipped
		paths = append(paths, p)
		prev = p
	}
	if b.Len() != 5 || !b.Has(paths[2]) {
		t.Fatalf("batch holds %d paths", b.Len())
	}
	// Two more after a background commit of the first five, the first
	// referring to one of those.
	b.CommitAsync(ctx)
	for i := 5; i < 7; i++ {
		p := fakePath(fmt.Sprint("batch", i), fmt.Sprint("b", i))
		data, info := narInfo(p, "refers to "+string(prev), prev)
		fatalIf(t, b.Add(ctx, info, bytes.NewReader(data)))
		paths = append(paths, p)
		prev = p
	}

	bad := fakePath("batch-bad", "bad")
	data, info = narInfo(bad, "bad")
	info.NarHash = hash.Sum(hash.SHA256, []byte("something else"))
	if err := b.Add(ctx, info, bytes.NewReader(data)); err == nil || !strings.Contains(err.Error(), "hash mismatch") {
		t.Errorf("bad hash: %v", err)
	}
	dangling := fakePath("batch-dangling", "dangling")
	data, info = narInfo(dangling, "x", fakePath("nowhere", "nowhere"))
	if err := b.Add(ctx, info, bytes.NewReader(data)); err == nil || !strings.Contains(err.Error(), "is not valid") {
		t.Errorf("invalid reference: %v", err)
	}
	if b.Len() > 2 {
		t.Errorf("refused adds staged something: %d paths", b.Len())
	}
	if got, _ := s.QueryValidPaths(ctx, paths[5:]); len(got) != 0 {
		t.Fatalf("valid before commit: %v", got)
	}
	fatalIf(t, b.Commit(ctx))
	if got, _ := s.QueryValidPaths(ctx, paths); len(got) != len(paths) {
		t.Fatalf("valid after commit: %v", got)
	}
	if tmps := temporaries(t, s); len(tmps) != 0 {
		t.Errorf("temporaries left: %v", tmps)
	}
	s.Close()
	nixVerify(t, root)
	compareFacts(t, ferryFacts(t, openStore(t, root)), nixFacts(t, root))

	// Discard: nothing registered, nothing left.
	s = openStore(t, root)
	b = s.NewBatch().(*Batch)
	p := fakePath("batch-discard", "discard")
	data, info = narInfo(p, "discard me")
	fatalIf(t, b.Add(ctx, info, bytes.NewReader(data)))
	b.Discard()
	fatalIf(t, b.Commit(ctx)) // empty
	if ok, _ := s.IsValidPath(ctx, p); ok {
		t.Errorf("discarded path is valid")
	}
	if tmps := temporaries(t, s); len(tmps) != 0 {
		t.Errorf("temporaries left after Discard: %v", tmps)
	}
}
