package serve

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"ferry/nix/derivation"
	"ferry/nix/export"
	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

const (
	depPath = storepath.Path("/nix/store/n4yb1mhfv5cn0fvhq7ajrlmqgbyw4mj8-dep")
	topPath = storepath.Path("/nix/store/hca0mlvyi5ihhx0sspvh3j0nq4zyqxqm-top")
	newPath = storepath.Path("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-new")
	bogus   = storepath.Path("/nix/store/00000000000000000000000000000000-bogus")
	drvPath = storepath.Path("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-thing.drv")
	outPath = storepath.Path("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-thing")
)

// seeded returns a memStore holding dep and top (top refers to dep).
func seeded(t *testing.T) *memStore {
	t.Helper()
	m := newMemStore()
	for _, x := range []struct {
		p    storepath.Path
		data string
		refs []storepath.Path
	}{{depPath, "dep contents", nil}, {topPath, "top refers to " + string(depPath), []storepath.Path{depPath}}} {
		nar, info := narOf(x.p, x.data, x.refs...)
		if err := m.AddToStoreNar(context.Background(), info, bytes.NewReader(nar)); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// testClient is a client session against a Server running in a goroutine.
type testClient struct {
	t       testing.TB
	r       *wire.Reader
	w       *wire.Writer
	in      *io.PipeWriter // the server's input
	done    chan error
	version uint64
}

func startSession(t testing.TB, b Backend, opts *Options, version uint64) *testClient {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	c := &testClient{t: t, r: wire.NewReader(bufio.NewReader(outR)), w: wire.NewWriter(inW), in: inW, done: make(chan error, 1), version: version}
	go func() {
		err := NewServer(b, opts).Serve(context.Background(), inR, outW)
		outW.CloseWithError(errors.New("server ended"))
		inR.Close()
		c.done <- err
	}()
	sv, err := ClientHandshake(c.r, c.w, version)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if sv != Version {
		t.Fatalf("server version %#x, want %#x", sv, Version)
	}
	return c
}

func (c *testClient) flush() {
	c.t.Helper()
	if err := c.w.Flush(); err != nil {
		c.t.Fatal(err)
	}
}

// end closes the session and returns Serve's result.
func (c *testClient) end() error {
	c.in.Close()
	select {
	case err := <-c.done:
		return err
	case <-time.After(5 * time.Second):
		c.t.Fatal("session did not end")
		return nil
	}
}

func mustPaths(t *testing.T, got []storepath.Path, err error, want ...storepath.Path) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(pathStrings(got), " ") != strings.Join(pathStrings(want), " ") {
		t.Errorf("paths = %v, want %v", got, want)
	}
}

func pathStrings(ps []storepath.Path) []string {
	var ss []string
	for _, p := range ps {
		ss = append(ss, string(p))
	}
	return ss
}

func TestSessionReadOnly(t *testing.T) {
	m := seeded(t)
	c := startSession(t, m, nil, Version)

	// QueryValidPaths with lock=1 but no --write: no temp roots.
	WriteCommand(c.w, CmdQueryValidPaths)
	WriteQueryValidPaths(c.w, &QueryValidPathsRequest{Lock: true, Substitute: true, Paths: []storepath.Path{topPath, bogus, depPath}})
	c.flush()
	got, err := ReadPathSet(c.r, dir)
	mustPaths(t, got, err, topPath, depPath) // "hca0…" < "n4yb…"
	if len(m.roots) != 0 {
		t.Errorf("read-only session added temp roots %v", m.roots)
	}

	WriteCommand(c.w, CmdQueryPathInfos)
	WritePathSet(c.w, []storepath.Path{topPath, bogus})
	c.flush()
	info, err := ReadPathInfo(c.r, dir, Version)
	if err != nil || info == nil || info.Path != topPath || len(info.References) != 1 || info.NarHash.IsZero() {
		t.Fatalf("path info = %+v, %v", info, err)
	}
	if end, err := ReadPathInfo(c.r, dir, Version); end != nil || err != nil {
		t.Fatalf("want end of path infos, got %+v, %v", end, err)
	}

	WriteCommand(c.w, CmdDumpStorePath)
	WritePath(c.w, depPath)
	c.flush()
	want := m.nars[depPath]
	gotNar := make([]byte, len(want))
	if _, err := io.ReadFull(c.r, gotNar); err != nil || !bytes.Equal(gotNar, want) {
		t.Fatalf("dump = %q, %v", gotNar, err)
	}

	WriteCommand(c.w, CmdQueryClosure)
	WriteQueryClosure(c.w, false, []storepath.Path{topPath})
	c.flush()
	got, err = ReadPathSet(c.r, dir)
	mustPaths(t, got, err, topPath, depPath)

	// ExportPaths: dependencies first, then the end marker.
	WriteCommand(c.w, CmdExportPaths)
	WriteExportPaths(c.w, []storepath.Path{topPath, depPath})
	c.flush()
	er := export.NewReader(c.r, nil)
	var order []storepath.Path
	for {
		err := er.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		info, err := er.Info()
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, info.Path)
	}
	mustPaths(t, order, nil, depPath, topPath)

	if err := c.end(); err != nil {
		t.Fatalf("Serve = %v, want nil at a clean end", err)
	}
}

func TestSessionOldClientPathInfo(t *testing.T) {
	m := seeded(t)
	c := startSession(t, m, nil, 0x203)
	WriteCommand(c.w, CmdQueryPathInfos)
	WritePathSet(c.w, []storepath.Path{depPath})
	c.flush()
	info, err := ReadPathInfo(c.r, dir, 0x203)
	if err != nil || info == nil || !info.NarHash.IsZero() {
		t.Fatalf("path info = %+v, %v", info, err)
	}
	if end, err := ReadPathInfo(c.r, dir, 0x203); end != nil || err != nil {
		t.Fatalf("want end, got %+v, %v", end, err)
	}
	if err := c.end(); err != nil {
		t.Fatal(err)
	}
}

func TestSessionWrite(t *testing.T) {
	src := seeded(t)
	m := newMemStore()
	c := startSession(t, m, &Options{Write: true}, Version)

	// lock=0 with --write still roots the requested paths (issue 5).
	WriteCommand(c.w, CmdQueryValidPaths)
	WriteQueryValidPaths(c.w, &QueryValidPathsRequest{Paths: []storepath.Path{depPath}})
	c.flush()
	got, err := ReadPathSet(c.r, dir)
	mustPaths(t, got, err)
	if !m.roots[depPath] {
		t.Errorf("lock=0 with --write did not add a temp root")
	}

	// ImportPaths of dep and top, dependencies first.
	WriteCommand(c.w, CmdImportPaths)
	ew := export.NewWriter(c.w)
	for _, p := range []storepath.Path{depPath, topPath} {
		if err := ew.WritePath(&export.Info{Path: p, References: src.infos[p].References}, bytes.NewReader(src.nars[p])); err != nil {
			t.Fatal(err)
		}
	}
	if err := ew.Close(); err != nil {
		t.Fatal(err)
	}
	c.flush()
	if v, err := c.r.ReadUint64(); v != 1 || err != nil {
		t.Fatalf("import reply %d, %v", v, err)
	}
	if !m.infos[topPath].NarHash.Equal(src.infos[topPath].NarHash) {
		t.Errorf("imported top has hash %v", m.infos[topPath].NarHash)
	}

	// AddToStoreNar of a new path referring to top, twice.
	nar, info := narOf(newPath, "new", topPath)
	for i := 0; i < 2; i++ {
		WriteCommand(c.w, CmdAddToStoreNar)
		WriteAddToStoreNar(c.w, info)
		c.w.Write(nar)
		c.flush()
		if v, err := c.r.ReadUint64(); v != 1 || err != nil {
			t.Fatalf("add reply %d, %v", v, err)
		}
	}
	if m.infos[newPath] == nil || !m.roots[newPath] {
		t.Errorf("new path not registered and rooted")
	}

	// BuildDerivation: inputs and outputs get temp roots.
	c.buildDerivation(thingDrv(), &store.BuildSettings{})
	res, err := ReadBuildResult(c.r, dir, Version)
	if err != nil || res.Status != store.Built || len(res.BuiltOutputs) != 1 || res.BuiltOutputs[0].OutPath != outPath {
		t.Fatalf("build result %+v, %v", res, err)
	}
	if !m.roots[outPath] || !m.roots[topPath] {
		t.Errorf("build inputs/outputs not rooted: %v", m.roots)
	}

	// BuildPaths: success, then a failure reported in band.
	WriteCommand(c.w, CmdBuildPaths)
	WriteBuildPaths(c.w, Version, []DerivedPath{{Path: topPath}}, &store.BuildSettings{})
	c.flush()
	if rep, err := ReadBuildPathsReply(c.r); err != nil || rep.Status != 0 {
		t.Fatalf("build paths reply %+v, %v", rep, err)
	}
	WriteCommand(c.w, CmdBuildPaths)
	WriteBuildPaths(c.w, Version, []DerivedPath{{Path: bogus}}, &store.BuildSettings{})
	c.flush()
	if rep, err := ReadBuildPathsReply(c.r); err != nil || rep.Status != 1 || !strings.Contains(rep.Message, "is not valid") {
		t.Fatalf("build paths reply %+v, %v", rep, err)
	}
	if err := c.end(); err != nil {
		t.Fatal(err)
	}
}

func thingDrv() *derivation.Derivation {
	return &derivation.Derivation{
		Name:      "thing",
		Outputs:   map[string]derivation.Output{"out": {Path: outPath}},
		InputSrcs: []storepath.Path{topPath},
		Platform:  "x86_64-linux",
		Builder:   "/bin/sh",
		Args:      []string{"-c", "echo hi > $out"},
		Env:       map[string]string{"out": string(outPath)},
	}
}

// TestBuildDerivationOldClient checks that builtOutputs follow the result
// even for a client below proto 2.6, as Nix 2.4-2.10 servers send them.
func TestBuildDerivationOldClient(t *testing.T) {
	m := seeded(t)
	c := startSession(t, m, &Options{Write: true}, 0x202)
	c.buildDerivation(thingDrv(), &store.BuildSettings{MaxLogSize: 5})
	res, err := ReadBuildResult(c.r, dir, 0x202)
	if err != nil || res.Status != store.Built {
		t.Fatalf("build result %+v, %v", res, err)
	}
	outs, err := ReadBuiltOutputs(c.r, dir, 0x207)
	if err != nil || len(outs) != 1 || outs[0].OutPath != outPath || outs[0].DrvHash.IsZero() || outs[0].Compat {
		t.Fatalf("builtOutputs %+v, %v", outs, err)
	}
	if err := c.end(); err != nil {
		t.Fatal(err)
	}
}

func (c *testClient) buildDerivation(drv *derivation.Derivation, s *store.BuildSettings) {
	WriteCommand(c.w, CmdBuildDerivation)
	WritePath(c.w, drvPath)
	WriteBasicDerivation(c.w, drv)
	WriteBuildSettings(c.w, c.version, s)
	c.flush()
}

// TestDisconnectDuringBuild checks that a client that hangs up during
// BuildDerivation cancels the build and the session ends cleanly.
func TestDisconnectDuringBuild(t *testing.T) {
	m := seeded(t)
	m.hang = true
	c := startSession(t, m, &Options{Write: true}, Version)
	drv := &derivation.Derivation{
		Name: "thing", Outputs: map[string]derivation.Output{"out": {Path: outPath}},
		Platform: "x86_64-linux", Builder: "/bin/sh", Env: map[string]string{},
	}
	c.buildDerivation(drv, &store.BuildSettings{})
	c.in.Close()
	res, err := ReadBuildResult(c.r, dir, Version)
	if err != nil || res.Status != store.MiscFailure {
		t.Fatalf("result %+v, %v", res, err)
	}
	select {
	case err := <-c.done:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end")
	}
}

// hello is a client handshake at proto 2.7.
func hello() []byte {
	return wire.AppendUint64(wire.AppendUint64(nil, Magic1), Version)
}

func u64s(vs ...uint64) []byte {
	var b []byte
	for _, v := range vs {
		b = wire.AppendUint64(b, v)
	}
	return b
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func TestBadInput(t *testing.T) {
	nar, info := narOf(newPath, "new")
	addNar := func(info store.PathInfo, nar []byte) []byte {
		var b bytes.Buffer
		w := wire.NewWriter(&b)
		WriteCommand(w, CmdAddToStoreNar)
		WriteAddToStoreNar(w, &info)
		w.Write(nar)
		w.Flush()
		return b.Bytes()
	}
	badHash := *info
	badHash.NarHash = m0(t).infos[depPath].NarHash
	badSize := *info
	badSize.NarSize--
	badRef := *info
	badRef.References = []storepath.Path{bogus}
	qvp := func(path string) []byte {
		return cat(u64s(1, 0, 0, 1), wire.AppendString(nil, path))
	}
	for _, tc := range []struct {
		name  string
		write bool
		in    []byte
		want  string // "" for a clean end
	}{
		{"clean end", false, hello(), ""},
		{"empty input", false, nil, "unexpected end-of-file"},
		{"bad magic", false, u64s(0x1234, Version), "protocol mismatch"},
		{"unknown command", false, cat(hello(), u64s(10)), "unknown serve command 10"},
		{"command zero", false, cat(hello(), u64s(0)), "unknown serve command 0"},
		{"command too large", false, cat(hello(), u64s(1+1<<32)), "serialised integer 4294967297 is too large for type 'j'"},
		{"huge length prefix", false, cat(hello(), u64s(1, 0, 0, 1, 1<<62)), "length exceeds limit"},
		{"huge count", false, cat(hello(), u64s(1, 0, 0, 1<<40)), "length exceeds limit"},
		{"non-zero padding", false, cat(hello(), u64s(1, 0, 0, 1, 3), []byte("abc\x00\x00\x00\x00\x01")), "non-zero padding"},
		{"truncated stream", false, cat(hello(), u64s(1, 0, 0, 2), wire.AppendString(nil, string(depPath))), "unexpected end-of-file"},
		{"truncated command", false, cat(hello(), []byte{1, 0, 0}), "unexpected end-of-file"},
		{"malformed store path", false, cat(hello(), qvp("/nix/store/abc")), "too short"},
		{"bad hash part", false, cat(hello(), qvp("/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x")), "invalid base-32"},
		{"path outside store", false, cat(hello(), qvp("/tmp/x")), "path '/tmp/x' is not in the Nix store"},
		{"dotdot out of store", false, cat(hello(), u64s(3), wire.AppendString(nil, "/nix/store/../../etc/passwd")), "is not in the Nix store"},
		{"dump invalid path", false, cat(hello(), u64s(3), wire.AppendString(nil, string(bogus))), "is not valid"},
		{"closure of invalid path", false, cat(hello(), u64s(7, 0, 1), wire.AppendString(nil, string(bogus))), "is not valid"},
		{"import without write", false, cat(hello(), u64s(4, 0)), "importing paths is not allowed"},
		{"add without write", false, cat(hello(), addNar(*info, nar)), "importing paths is not allowed"},
		{"build without write", false, cat(hello(), u64s(8)), "building paths is not allowed"},
		{"build paths without write", false, cat(hello(), u64s(6)), "building paths is not allowed"},
		{"nar hash mismatch", true, cat(hello(), addNar(badHash, nar)), "hash mismatch"},
		{"nar size mismatch", true, cat(hello(), addNar(badSize, nar)), "mismatch"},
		{"nar truncated", true, cat(hello(), addNar(*info, nar[:len(nar)-8])), ""},
		{"invalid reference", true, cat(hello(), addNar(badRef, nar)), "is not valid"},
		{"zero nar size", true, cat(hello(), addNar(store.PathInfo{Path: newPath, NarHash: info.NarHash}, nil)), "narInfo is too old and missing the narSize field"},
		{"ultimate not bool", true, cat(hello(), u64s(9), wire.AppendString(nil, string(newPath)), wire.AppendString(nil, ""), wire.AppendString(nil, info.NarHash.Hex()), u64s(0, 0, 1, 2)), "serialised integer 2 is too large for type 'b'"},
		{"import not an export stream", true, cat(hello(), u64s(4, 7)), "input doesn't look like something created by 'nix-store --export'"},
		{"build drv path not .drv", true, cat(hello(), u64s(8), wire.AppendString(nil, string(depPath))), "is not a derivation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := m0(t)
			var out bytes.Buffer
			err := NewServer(m, &Options{Write: tc.write}).Serve(context.Background(), bytes.NewReader(tc.in), &out)
			if tc.name == "nar truncated" {
				// The store reads what there is; the session then ends
				// inside the NAR: either the store or the drain reports it.
				if err == nil {
					t.Fatal("Serve = nil for a truncated NAR")
				}
			} else if tc.want == "" {
				if err != nil {
					t.Fatalf("Serve = %v, want nil", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Serve = %v, want an error containing %q", err, tc.want)
			}
			if m.infos[newPath] != nil {
				t.Errorf("bad input registered %s", newPath)
			}
			// Nothing but the handshake reply reaches stdout on errors
			// that happen before any reply.
			if out.Len() > 16 {
				t.Errorf("unexpected output %x", out.Bytes()[16:])
			}
		})
	}
}

// m0 is the seeded store used by TestBadInput.
func m0(t *testing.T) *memStore { return seeded(t) }
