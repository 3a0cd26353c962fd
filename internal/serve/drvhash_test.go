package serve

import (
	"bufio"
	"bytes"
	"io"
	"os/exec"
	"path/filepath"
	"testing"

	"ferry/internal/nixtest"
	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

// TestBuiltOutputsKeyMatchesNix builds a BasicDerivation with real
// `nix-store --serve --write` and checks that the DrvOutput ids in its
// builtOutputs are the ones the Server computes (hashDerivationModulo of the
// received derivation, outputs masked).
func TestBuiltOutputsKeyMatchesNix(t *testing.T) {
	nixtest.RequireNix(t)
	tmp := t.TempDir()
	drv := &derivation.Derivation{
		Name:      "keytest",
		Outputs:   map[string]derivation.Output{"out": {}, "doc": {}},
		InputDrvs: map[storepath.Path][]string{},
		Platform:  "x86_64-linux",
		Builder:   "/bin/sh",
		Args:      []string{"-c", "echo out > $out; echo doc > $doc"},
		Env:       map[string]string{"builder": "/bin/sh", "name": "keytest", "system": "x86_64-linux", "outputs": "out doc"},
	}
	if err := drv.FillOutputPaths(dir, derivation.MapResolver(nil), nil); err != nil {
		t.Fatal(err)
	}
	dp, err := drv.Path(dir)
	if err != nil {
		t.Fatal(err)
	}
	var in bytes.Buffer
	w := wire.NewWriter(&in)
	WriteClientHello(w, Version)
	WriteCommand(w, CmdBuildDerivation)
	WritePath(w, dp)
	WriteBasicDerivation(w, drv)
	WriteBuildSettings(w, Version, &store.BuildSettings{})
	w.Flush()
	// Nix interrupts a build when its stdin closes (MonitorFdHup), so keep
	// stdin open until the reply has been read.
	cmd := exec.Command("nix-store", "--serve", "--write", "--store", filepath.Join(tmp, "store"))
	cmd.Env = nixtest.Env(filepath.Join(tmp, "home"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	stdin.Write(in.Bytes())
	var out bytes.Buffer
	r := wire.NewReader(bufio.NewReader(io.TeeReader(stdout, &out)))
	if _, err := ReadServerHello(r); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	res, err := ReadBuildResult(r, dir, Version)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if res.Status != store.Built {
		t.Fatalf("nix build: %v %s\n%s", res.Status, res.ErrorMsg, stderr.String())
	}
	// Nix's reply carries the build's start and stop times; ferry's
	// encoding of what was read must still give the same bytes.
	dh, err := derivation.HashModulo(drv, true, derivation.MapResolver(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	ours := FromStore(&store.BuildResult{Status: store.Built, BuiltOutputs: drv.OutputPaths()}, dh.Hashes)
	if len(res.BuiltOutputs) != 2 {
		t.Fatalf("nix builtOutputs %+v", res.BuiltOutputs)
	}
	for i, o := range res.BuiltOutputs {
		got := ours.BuiltOutputs[i]
		if o.Output != got.Output || o.OutPath != got.OutPath || !o.DrvHash.Equal(got.DrvHash) || o.Compat {
			t.Errorf("output %d: nix %+v (%s), ferry %+v (%s)", i, o, o.DrvHash.Hex(), got, got.DrvHash.Hex())
		}
	}
	// And the bytes: re-encoding nix's reply gives nix's bytes.
	var re bytes.Buffer
	rw := wire.NewWriter(&re)
	WriteServerHello(rw, Version)
	WriteBuildResult(rw, Version, res)
	rw.Flush()
	if !bytes.Equal(re.Bytes(), out.Bytes()) {
		t.Errorf("re-encoded reply differs:\n nix   %x\n ferry %x", out.Bytes(), re.Bytes())
	}
}
