package sshstore_test

import (
	"context"
	"io"
	"net/url"
	"path/filepath"
	"testing"

	"ferry/internal/localserve"
	"ferry/internal/localstore"
	"ferry/internal/nixtest"
	"ferry/internal/serve"
	"ferry/internal/sshstore"
	"ferry/internal/storetest"
	"ferry/nix/storepath"
	"ferry/store"
)

// pipeStore returns the ssh store over a pipe to an in-process ferry serve
// --write session on the local store at root.
func pipeStore(t *testing.T, root string) store.Store {
	t.Helper()
	ctx := context.Background()
	local, err := localstore.Open(root, &localstore.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	toServer, clientOut := io.Pipe()
	clientIn, fromServer := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := serve.NewServer(localserve.NewBackend(local, nil, nil), &serve.Options{Write: true}).Serve(ctx, toServer, fromServer)
		fromServer.CloseWithError(io.EOF)
		toServer.CloseWithError(io.ErrClosedPipe)
		local.Close() // the session's end releases its temp roots
		_ = err
	}()
	st, err := sshstore.NewStore(ctx, "in-process", clientIn, clientOut, done, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestConformanceInProcess(t *testing.T) {
	storetest.Run(t, &storetest.Harness{Open: pipeStore, Reopen: pipeStore})
}

// nixServeStore is the ssh store against real nix-store --serve, run
// directly as Nix does for ssh://localhost.
func nixServeStore(t *testing.T, root string) store.Store {
	return serveIn("nix-store", storepath.DefaultDir)(t, root)
}

func cut(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

func TestConformanceNixServe(t *testing.T) {
	storetest.Run(t, &storetest.Harness{Open: nixServeStore, Reopen: nixServeStore})
}

// serveIn returns an opener of the ssh store, with store=dir, on program
// --serve --write --store 'root?store=dir' (real nix-store or ferry, run
// directly as for ssh://localhost); plain root for the default directory.
func serveIn(program string, dir storepath.Dir) func(t *testing.T, root string) store.Store {
	return func(t *testing.T, root string) store.Store {
		t.Helper()
		nixtest.RequireNix(t)
		for _, kv := range nixtest.Env(t.TempDir()) {
			k, v, _ := cut(kv)
			t.Setenv(k, v)
		}
		remote := root
		if dir != storepath.DefaultDir {
			remote += "?store=" + string(dir)
		}
		uri := "ssh://localhost?remote-program=" + url.QueryEscape(program) + "&remote-store=" + url.QueryEscape(remote) + "&store=" + url.QueryEscape(string(dir))
		st, err := store.Open(context.Background(), uri, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.Dir() != dir {
			t.Fatalf("Dir() = %s, want %s", st.Dir(), dir)
		}
		return st
	}
}

// The suite with a logical store directory that is not /nix/store, on
// both ends of the session, against real nix-store --serve and ferry serve.
func TestConformanceLogicalDir(t *testing.T) {
	dir := storepath.Dir(filepath.Join(t.TempDir(), "l", "store"))
	t.Run("nix-store", func(t *testing.T) {
		open := serveIn("nix-store", dir)
		storetest.Run(t, &storetest.Harness{Open: open, Reopen: open, Dir: dir})
	})
	t.Run("ferry", func(t *testing.T) {
		open := serveIn(nixtest.FerryBin(t), dir)
		storetest.Run(t, &storetest.Harness{Open: open, Reopen: open, Dir: dir})
	})
}
