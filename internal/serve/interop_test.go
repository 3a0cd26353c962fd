package serve

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/localstore"
	"ferry/internal/nixtest"
	"ferry/nix/export"
	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

// makeStore creates a chroot store at root with real Nix holding the files
// alpha and beta (nix-store --add), and returns their paths.
func makeStore(t *testing.T, home, root, files string) []storepath.Path {
	t.Helper()
	var paths []storepath.Path
	for _, name := range []string{"alpha", "beta"} {
		f := filepath.Join(files, name)
		out := nixtest.Line(t, "nix-store", "--store", root, "--add", f)
		p, err := storepath.Parse(out)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// nixServe runs real `nix-store --serve --write --store root` on in.
func nixServe(t *testing.T, home, root string, in []byte) (stdout []byte, stderr string, err error) {
	t.Helper()
	cmd := exec.Command("nix-store", "--serve", "--write", "--store", root)
	cmd.Env = nixtest.Env(home)
	cmd.Stdin = bytes.NewReader(in)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.String(), err
}

// ferryServe runs one ferry session over the local store at root on in.
func ferryServe(t *testing.T, root string, in []byte) ([]byte, error) {
	t.Helper()
	st, err := localstore.Open(root, &localstore.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var out bytes.Buffer
	err = Main(context.Background(), NewStoreBackend(st, nil), bytes.NewReader(in), &out, &Options{Write: true})
	return out.Bytes(), err
}

// TestCompareWithNix runs the same scripted sessions against real
// `nix-store --serve --write` and against ferry's Server over the local
// store, each on its own copy of the same store, and requires identical
// replies byte for byte. (No timestamp appears in these replies: only
// BuildResult carries times, and builds are not part of this test yet.)
func TestCompareWithNix(t *testing.T) {
	nixtest.RequireNix(t)
	tmp := t.TempDir()
	home := filepath.Join(tmp, "home")
	files := filepath.Join(tmp, "files")
	os.MkdirAll(files, 0o755)
	os.WriteFile(filepath.Join(files, "alpha"), []byte("alpha contents\n"), 0o644)
	os.WriteFile(filepath.Join(files, "beta"), []byte("beta contents\n"), 0o644)
	nixRoot, ferryRoot := filepath.Join(tmp, "nix"), filepath.Join(tmp, "ferry")
	ps := makeStore(t, home, nixRoot, files)
	if ps2 := makeStore(t, home, ferryRoot, files); ps2[0] != ps[0] || ps2[1] != ps[1] {
		t.Fatalf("stores differ: %v %v", ps, ps2)
	}
	a, b := ps[0], ps[1]

	// A path to upload with AddToStoreNar, referring to a, and one to
	// import with ImportPaths, referring to the first.
	up := storepath.Path("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-upload")
	upNar, upInfo := narOf(up, "uploaded, refers to "+string(a), a)
	upInfo.Deriver = "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-upload.drv"
	upInfo.Sigs = []string{"test-1:AAAA"}
	imp := storepath.Path("/nix/store/n5wkd9frr45pa74if5gpz9j7mifg27fh-imported")
	impNar, _ := narOf(imp, "imported")

	script := func(version uint64) []byte {
		var buf bytes.Buffer
		w := wire.NewWriter(&buf)
		WriteClientHello(w, version)
		WriteCommand(w, CmdQueryValidPaths)
		WriteQueryValidPaths(w, &QueryValidPathsRequest{Lock: true, Paths: []storepath.Path{a, b, bogus}})
		WriteCommand(w, CmdQueryPathInfos)
		WritePathSet(w, []storepath.Path{a, b, bogus})
		WriteCommand(w, CmdDumpStorePath)
		WritePath(w, b)
		WriteCommand(w, CmdQueryClosure)
		WriteQueryClosure(w, false, []storepath.Path{a, b})
		WriteCommand(w, CmdExportPaths)
		WriteExportPaths(w, []storepath.Path{b, a})
		WriteCommand(w, CmdAddToStoreNar)
		WriteAddToStoreNar(w, upInfo)
		w.Write(upNar)
		WriteCommand(w, CmdAddToStoreNar) // again: already valid
		WriteAddToStoreNar(w, upInfo)
		w.Write(upNar)
		WriteCommand(w, CmdImportPaths)
		ew := export.NewWriter(w)
		ew.WritePath(&export.Info{Path: imp, References: []storepath.Path{up}, Deriver: upInfo.Deriver}, bytes.NewReader(impNar))
		ew.Close()
		WriteCommand(w, CmdQueryPathInfos)
		WritePathSet(w, []storepath.Path{up, imp})
		WriteCommand(w, CmdQueryClosure)
		WriteQueryClosure(w, true, []storepath.Path{imp})
		WriteCommand(w, CmdExportPaths)
		WriteExportPaths(w, []storepath.Path{imp, up, a})
		WriteCommand(w, CmdQueryValidPaths)
		WriteQueryValidPaths(w, &QueryValidPathsRequest{Paths: []storepath.Path{up, imp, bogus}})
		w.Flush()
		return buf.Bytes()
	}
	// The second session re-uploads into stores that already have the
	// paths: both must still answer the same.
	for _, version := range []uint64{0x207, 0x203} {
		in := script(version)
		nixOut, nixErr, err := nixServe(t, home, nixRoot, in)
		if err != nil {
			t.Fatalf("nix-store --serve (client %#x): %v\n%s", version, err, nixErr)
		}
		ferryOut, err := ferryServe(t, ferryRoot, in)
		if err != nil {
			t.Fatalf("ferry serve (client %#x): %v", version, err)
		}
		if len(nixOut) < 1000 {
			t.Errorf("client %#x: short reply %x", version, nixOut)
		}
		if !bytes.Equal(nixOut, ferryOut) {
			t.Errorf("client %#x: replies differ\n nix:   %x\n ferry: %x", version, nixOut, ferryOut)
		}
	}

	// Sessions that fail: both must fail with the same message and the
	// same (partial) output.
	for _, tc := range []struct {
		name string
		in   []byte
		// storeMsg marks errors whose text comes from the store, which
		// words them its own way: only logged when they differ.
		storeMsg bool
	}{
		{"outside store", cat(hello(), u64s(3), wire.AppendString(nil, "/tmp/x")), false},
		{"unknown command", cat(hello(), u64s(12)), false},
		{"invalid dump", cat(hello(), u64s(3), wire.AppendString(nil, string(bogus))), false},
		{"invalid closure", cat(hello(), u64s(7, 0, 1), wire.AppendString(nil, string(bogus))), false},
		{"truncated", cat(hello(), u64s(1, 0, 0, 2), wire.AppendString(nil, string(a))), false},
		{"non-zero padding", cat(hello(), u64s(1, 0, 0, 1, 3), []byte("abc\x00\x00\x00\x00\x01")), false},
		{"huge command", cat(hello(), u64s(1+1<<32)), false},
		{"hash mismatch", cat(hello(), func() []byte {
			bad := *upInfo
			bad.Path = "/nix/store/0000000000000000000000000000000a-bad"
			bad.References = nil
			bad.NarHash, _ = hash.New(hash.SHA256, make([]byte, 32))
			return addToStoreNar(&bad, upNar)
		}()), true},
		{"invalid reference", cat(hello(), func() []byte {
			bad := *upInfo
			bad.Path = "/nix/store/0000000000000000000000000000000a-bad"
			bad.References = []storepath.Path{bogus}
			return addToStoreNar(&bad, upNar)
		}()), true},
		{"bad nar size", cat(hello(), addToStoreNar(&store.PathInfo{Path: "/nix/store/0000000000000000000000000000000a-bad", NarHash: upInfo.NarHash}, nil)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nixOut, nixErr, nerr := nixServe(t, home, nixRoot, tc.in)
			ferryOut, ferr := ferryServe(t, ferryRoot, tc.in)
			if nerr == nil || ferr == nil {
				t.Fatalf("want both to fail: nix %v, ferry %v", nerr, ferr)
			}
			nixMsg := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(lastLine(nixErr)), "error: "))
			if nixMsg != ferr.Error() && tc.storeMsg {
				t.Logf("store messages differ:\n nix:   %q\n ferry: %q", nixMsg, ferr.Error())
			} else if nixMsg != ferr.Error() {
				t.Errorf("messages differ:\n nix:   %q\n ferry: %q", nixMsg, ferr.Error())
			}
			if !bytes.Equal(nixOut, ferryOut) {
				t.Errorf("outputs differ\n nix:   %x\n ferry: %x", nixOut, ferryOut)
			}
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// addToStoreNar encodes an AddToStoreNar command with its metadata and nar.
func addToStoreNar(info *store.PathInfo, nar []byte) []byte {
	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	WriteCommand(w, CmdAddToStoreNar)
	WriteAddToStoreNar(w, info)
	w.Write(nar)
	w.Flush()
	return buf.Bytes()
}
