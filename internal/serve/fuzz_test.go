package serve

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

// FuzzServe feeds arbitrary client bytes to a read-write session over an
// in-memory store: no panic, and memory bounded by the limits (the store
// reads at most 1 MiB of NAR).
func FuzzServe(f *testing.F) {
	nar, info := narOf(newPath, "new")
	var add bytes.Buffer
	w := wire.NewWriter(&add)
	WriteCommand(w, CmdAddToStoreNar)
	WriteAddToStoreNar(w, info)
	w.Write(nar)
	WriteCommand(w, CmdQueryPathInfos)
	WritePathSet(w, []storepath.Path{newPath})
	WriteCommand(w, CmdBuildDerivation)
	WritePath(w, drvPath)
	WriteBasicDerivation(w, thingDrv())
	WriteBuildSettings(w, Version, &store.BuildSettings{})
	WriteCommand(w, CmdExportPaths)
	WriteExportPaths(w, []storepath.Path{newPath})
	WriteCommand(w, CmdQueryClosure)
	WriteQueryClosure(w, true, []storepath.Path{newPath})
	w.Flush()
	f.Add(cat(hello(), add.Bytes()))
	f.Add(cat(hello(), u64s(1, 1, 1, 1), wire.AppendString(nil, string(depPath))))
	f.Add(cat(hello(), u64s(4, 0)))
	f.Add(cat(hello(), u64s(6, 1), wire.AppendString(nil, string(drvPath)+"!out"), u64s(0, 0, 0, 0, 0, 0)))
	f.Add(cat(hello(), u64s(3), wire.AppendString(nil, string(depPath))))
	f.Fuzz(func(t *testing.T, in []byte) {
		m := seeded(t)
		NewServer(m, &Options{Write: true}).Serve(context.Background(), bytes.NewReader(in), io.Discard)
	})
}

// FuzzClientDecoders feeds arbitrary server bytes to the decoders a client
// uses for replies.
func FuzzClientDecoders(f *testing.F) {
	for _, name := range []string{"build-result-2.6.bin", "build-result-2.8.bin", "unkeyed-valid-path-info-2.4.bin", "handshake-to-client.bin"} {
		data, err := os.ReadFile(filepath.Join("testdata", "serve-protocol", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, v := range []uint64{0x202, 0x203, 0x204, 0x206, 0x207, 0x208} {
			r := wire.NewReader(bytes.NewReader(in))
			ReadBuildResult(r, dir, v)
			r = wire.NewReader(bytes.NewReader(in))
			ReadPathInfo(r, dir, v)
			r = wire.NewReader(bytes.NewReader(in))
			ReadBuildSettings(r, v)
		}
		r := wire.NewReader(bytes.NewReader(in))
		ReadServerHello(r)
		r = wire.NewReader(bytes.NewReader(in))
		ReadBasicDerivation(r, dir, "x")
		r = wire.NewReader(bytes.NewReader(in))
		ReadAddToStoreNar(r, dir)
	})
}
