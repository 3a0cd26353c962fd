package serve

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"ferry/internal/localstore"
	"ferry/nix/storepath"
)

// batchSession starts a --write session over a fresh local store.
func batchSession(t *testing.T) (*testClient, *localstore.Store) {
	t.Helper()
	st, err := localstore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return startSession(t, NewStoreBackend(st, nil), &Options{Write: true}, Version), st
}

func (c *testClient) queryValid(paths ...storepath.Path) []storepath.Path {
	c.t.Helper()
	WriteCommand(c.w, CmdQueryValidPaths)
	WriteQueryValidPaths(c.w, &QueryValidPathsRequest{Paths: paths})
	c.flush()
	got, err := ReadPathSet(c.r, dir)
	if err != nil {
		c.t.Fatal(err)
	}
	return got
}

// add sends AddToStoreNar of p (contents data, references refs) and, if
// corrupt, one byte of the NAR changed; it returns the reply's error.
func (c *testClient) add(p storepath.Path, data string, corrupt bool, refs ...storepath.Path) error {
	c.t.Helper()
	nar, info := narOf(p, data, refs...)
	if corrupt {
		nar[bytes.Index(nar, []byte(data))] ^= 1
	}
	WriteCommand(c.w, CmdAddToStoreNar)
	WriteAddToStoreNar(c.w, info)
	c.w.Write(nar)
	c.flush()
	v, err := c.r.ReadUint64()
	if err == nil && v != 1 {
		c.t.Fatalf("add %s: reply %d", p, v)
	}
	return err
}

func validIn(t *testing.T, st *localstore.Store, paths ...storepath.Path) []storepath.Path {
	t.Helper()
	got, err := st.QueryValidPaths(context.Background(), paths)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestSessionBatchesCopy: the paths a QueryValidPaths reported missing are
// acknowledged as they arrive and committed together before the reply to
// the last of them, with references among them allowed.
func TestSessionBatchesCopy(t *testing.T) {
	c, st := batchSession(t)
	mustPaths(t, c.queryValid(depPath, topPath, newPath), nil)
	if err := c.add(depPath, "dep contents", false); err != nil {
		t.Fatal(err)
	}
	if err := c.add(topPath, "top refers to "+string(depPath), false, depPath); err != nil {
		t.Fatal(err)
	}
	if got := validIn(t, st, depPath, topPath); len(got) != 0 {
		t.Errorf("staged paths valid before the copy ended: %v", got)
	}
	if err := c.add(newPath, "new", false, topPath); err != nil {
		t.Fatal(err)
	}
	mustPaths(t, validIn(t, st, depPath, topPath, newPath), nil, depPath, topPath, newPath)
	if err := c.end(); err != nil {
		t.Fatal(err)
	}
	rep, err := st.Verify(context.Background(), true, false)
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// TestSessionBatchCommitPoints: a staged path is committed before any
// other command runs, when the session ends early, and when a later path
// of the copy is refused; a path nobody announced is committed at once.
func TestSessionBatchCommitPoints(t *testing.T) {
	t.Run("other command", func(t *testing.T) {
		c, _ := batchSession(t)
		c.queryValid(depPath, topPath)
		if err := c.add(depPath, "dep contents", false); err != nil {
			t.Fatal(err)
		}
		mustPaths(t, c.queryValid(depPath, topPath), nil, depPath)
		if err := c.end(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("end of session", func(t *testing.T) {
		c, st := batchSession(t)
		c.queryValid(depPath, topPath)
		if err := c.add(depPath, "dep contents", false); err != nil {
			t.Fatal(err)
		}
		if err := c.end(); err != nil {
			t.Fatal(err)
		}
		mustPaths(t, validIn(t, st, depPath, topPath), nil, depPath)
	})
	t.Run("refused path", func(t *testing.T) {
		c, st := batchSession(t)
		c.queryValid(depPath, topPath)
		if err := c.add(depPath, "dep contents", false); err != nil {
			t.Fatal(err)
		}
		if err := c.add(topPath, "top refers to "+string(depPath), true, depPath); err == nil {
			t.Fatal("corrupt NAR acknowledged")
		}
		if err := c.end(); err == nil || !strings.Contains(err.Error(), "hash mismatch") {
			t.Fatalf("session error %v", err)
		}
		mustPaths(t, validIn(t, st, depPath, topPath), nil, depPath)
	})
	t.Run("missing reference", func(t *testing.T) {
		c, st := batchSession(t)
		c.queryValid(topPath)
		if err := c.add(topPath, "top refers to "+string(depPath), false, depPath); err == nil {
			t.Fatal("path with an invalid reference acknowledged")
		}
		if err := c.end(); err == nil || !strings.Contains(err.Error(), "which is not valid") {
			t.Fatalf("session error %v", err)
		}
		mustPaths(t, validIn(t, st, depPath, topPath), nil)
	})
	t.Run("unannounced", func(t *testing.T) {
		c, st := batchSession(t)
		if err := c.add(depPath, "dep contents", false); err != nil {
			t.Fatal(err)
		}
		mustPaths(t, validIn(t, st, depPath), nil, depPath)
		if err := c.end(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestSessionBatchAsync copies a chain longer than AsyncPaths, so parts of
// it are committed in the background while the rest arrives; all of it is
// valid after the last reply and the store verifies.
func TestSessionBatchAsync(t *testing.T) {
	c, st := batchSession(t)
	n := 2*AsyncPaths + 17
	paths := make([]storepath.Path, n)
	for i := range paths {
		paths[i] = storepath.Path(fmt.Sprintf("/nix/store/%032d-chain-%d", i, i))
	}
	mustPaths(t, c.queryValid(paths...), nil)
	for i, p := range paths {
		var refs []storepath.Path
		data := "link " + p.Name()
		if i > 0 {
			refs = []storepath.Path{paths[i-1]}
			data += " " + string(paths[i-1])
		}
		if err := c.add(p, data, false, refs...); err != nil {
			t.Fatalf("add %d: %v", i, err)
		}
	}
	if got := validIn(t, st, paths...); len(got) != n {
		t.Fatalf("%d of %d paths valid after the last reply", len(got), n)
	}
	if err := c.end(); err != nil {
		t.Fatal(err)
	}
	rep, err := st.Verify(context.Background(), true, false)
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}
