package copy_test

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	storecopy "ferry/internal/copy"
	"ferry/internal/localserve"
	"ferry/internal/localstore"
	"ferry/internal/serve"
	"ferry/internal/sshstore"
	"ferry/nix/storepath"
)

// TestOlderServers copies to and from servers of every protocol minor Nix
// has shipped: 2.5 and later take AddToStoreNar; 2.0 to 2.4 have none, and
// the copy goes as one ImportPaths (one round trip too).
func TestOlderServers(t *testing.T) {
	ctx := context.Background()
	for _, version := range []uint64{0x200, 0x202, 0x204, 0x205, 0x206, 0x207} {
		t.Run(fmt.Sprintf("%#x", version), func(t *testing.T) {
			src, top := source(t, 10)
			remote, err := localstore.Open(filepath.Join(fastDir(t), "remote"), &localstore.Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer remote.Close()
			toServer, clientOut := io.Pipe()
			clientIn, fromServer := io.Pipe()
			done := make(chan struct{})
			go func() {
				defer close(done)
				err := serve.NewServer(localserve.NewBackend(remote, nil, nil), &serve.Options{Write: true, Version: version}).Serve(ctx, toServer, fromServer)
				fromServer.CloseWithError(fmt.Errorf("server ended: %v", err))
			}()
			dst, err := sshstore.NewStore(ctx, "old", clientIn, clientOut, done, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer dst.Close()
			res, err := storecopy.Copy(ctx, src, dst, []storepath.Path{top}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Copied) != 10 || dst.RoundTrips() != 3 {
				t.Errorf("copied %d paths in %d round trips, want 10 in 3", len(res.Copied), dst.RoundTrips())
			}
			if ok, _ := remote.IsValidPath(ctx, top); !ok {
				t.Errorf("%s not valid on the server", top)
			}
			rep, err := remote.Verify(ctx, true, false)
			if err != nil || !rep.OK() {
				t.Errorf("server store does not verify: %v %v", err, rep)
			}

			// And back from it into a new local store.
			back, err := localstore.Open(filepath.Join(fastDir(t), "back"), &localstore.Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer back.Close()
			res, err = storecopy.Copy(ctx, dst, back, []storepath.Path{top}, nil)
			if version < 0x204 {
				// No NAR hashes in its path infos: refused, nothing added.
				if err == nil || !strings.Contains(err.Error(), "gives no NAR hash") {
					t.Fatalf("copy from a %#x server: %v, want the no-NAR-hash refusal", version, err)
				}
				if valid, _ := back.QueryValidPaths(ctx, []storepath.Path{top}); len(valid) != 0 {
					t.Errorf("a refused copy made %v valid", valid)
				}
				return
			}
			if err != nil {
				t.Fatalf("copy back: %v", err)
			}
			if len(res.Copied) != 10 {
				t.Errorf("copied back %d paths, want 10", len(res.Copied))
			}
			rep, err = back.Verify(ctx, true, false)
			if err != nil || !rep.OK() {
				t.Errorf("copied-back store does not verify: %v %v", err, rep)
			}
		})
	}
}
