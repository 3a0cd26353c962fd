package serve

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ferry/internal/nixtest"
	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/store"
)

// caServeConfig is nixtest.Config with ca-derivations on.
const caServeConfig = nixtest.Config + "extra-experimental-features = ca-derivations\n"

// caServeCmd runs the serve program (ferry or nix-store) on dst with
// ca-derivations on or off.
func caServeCmd(t *testing.T, prog []string, dst string, ca bool) *exec.Cmd {
	cmd := exec.Command(prog[0], append(prog[1:], "--serve", "--write", "--store", dst)...)
	for _, kv := range nixtest.Env(t.TempDir()) {
		if ca && strings.HasPrefix(kv, "NIX_CONFIG=") {
			kv = "NIX_CONFIG=" + caServeConfig
		}
		cmd.Env = append(cmd.Env, kv)
	}
	return cmd
}

// caDrv is a floating CA BasicDerivation (hashAlgo r:sha256, no hash, no
// path; env out = the output's placeholder), as build-remote sends it.
func caDrv(t *testing.T, e *ibEnv, name string, inputs []storepath.Path, script string, outputs ...string) *derivation.Derivation {
	t.Helper()
	d := ibDrv(t, e, name, inputs, script, outputs...)
	for o := range d.Outputs {
		d.Outputs[o] = derivation.Output{Method: storepath.Recursive, HashAlgo: hash.SHA256}
	}
	d.Env["__contentAddressed"] = "1"
	d.Env["outputHashMode"] = "recursive"
	d.Env["outputHashAlgo"] = "sha256"
	if err := d.FillOutputPaths(dir, derivation.MapResolver(nil), nil); err != nil {
		t.Fatal(err)
	}
	if len(d.OutputPaths()) != 0 {
		t.Fatalf("CA derivation with output paths: %v", d.OutputPaths())
	}
	return d
}

// TestInteropCABuildDerivation sends the same floating CA derivations
// (two outputs, one referring to the other, to itself and to an input
// source) over BuildDerivation to ferry serve and to real nix-store
// --serve, both with ca-derivations on, and requires the same BuildResult
// (status, builtOutputs with their DrvOutput ids and realisation JSON),
// the same path infos of the outputs and the same Realisations rows. A
// second request is AlreadyValid on both. Without the feature both end the
// session with Nix's message.
func TestInteropCABuildDerivation(t *testing.T) {
	nixtest.RequireNix(t)
	nixtest.Require(t, "sqlite3")
	e := &ibEnv{ferry: ferryBin(t)}
	e.system = strings.Trim(nixtest.Line(t, "nix-instantiate", "--eval", "--expr", "builtins.currentSystem"), `"`)
	_, input, closure, stream := ibInputs(t, e, "ca")
	multi := caDrv(t, e, "ib-ca-multi", closure,
		"mkdir $out $dev && echo $dev > $out/dev-ref && echo "+string(input)+" > $dev/input-ref && echo $out > $out/self && echo built",
		"out", "dev")
	plain := caDrv(t, e, "ib-ca-plain", nil, "echo plain > $out")
	bs := &store.BuildSettings{MaxSilentTime: time.Minute, Timeout: 2 * time.Minute}

	type outcome struct {
		replies [][]byte
		results []*BuildResult
		infos   []*store.PathInfo
		rows    string
	}
	session := func(prog []string) outcome {
		dst := t.TempDir()
		c := ibStart(t, caServeCmd(t, prog, dst, true))
		c.handshake(Version)
		c.importPaths(stream)
		c.take()
		var o outcome
		for _, d := range []*derivation.Derivation{multi, plain, multi} {
			res := c.buildDerivation(Version, d, bs)
			if !res.Status.Success() {
				c.fatal("build %s: %v %s", d.Name, res.Status, res.ErrorMsg)
			}
			o.results = append(o.results, res)
			o.replies = append(o.replies, ibNormBuildResult(c, Version, res))
		}
		var outs []storepath.Path
		for _, r := range o.results[0].BuiltOutputs {
			outs = append(outs, r.OutPath)
		}
		o.infos = c.pathInfos(Version, outs...)
		c.take()
		c.stdin.Close()
		c.cmd.Wait()
		cmd := exec.Command("sqlite3", filepath.Join(dst, "nix/var/nix/db/db.sqlite"),
			"select r.drvPath, r.outputName, v.path, r.signatures, v.hash, v.ca, v.deriver from Realisations r join ValidPaths v on v.id = r.outputPath order by r.id")
		rows, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sqlite3: %v\n%s", err, rows)
		}
		o.rows = string(rows)
		return o
	}
	nix := session([]string{"nix-store"})
	ferry := session([]string{e.ferry})

	for i := range nix.replies {
		if !bytes.Equal(nix.replies[i], ferry.replies[i]) {
			t.Errorf("BuildDerivation %d: replies differ\nnix   %+v\nferry %+v", i, nix.results[i], ferry.results[i])
		}
	}
	if got := nix.results[2].Status; got != store.AlreadyValid {
		t.Errorf("nix: second build %v", got)
	}
	r := ferry.results[0]
	if len(r.BuiltOutputs) != 2 || r.BuiltOutputs[0].DrvHash.IsZero() {
		t.Fatalf("builtOutputs %+v", r.BuiltOutputs)
	}
	want, err := derivation.HashModulo(multi, true, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range r.BuiltOutputs {
		if !o.DrvHash.Equal(want.Hashes[o.Output]) || !strings.HasPrefix(o.OutPath.Name(), "ib-ca-multi") {
			t.Errorf("builtOutput %+v, drv hash want %s", o, want.Hashes[o.Output])
		}
	}
	if len(nix.infos) != 2 || len(ferry.infos) != 2 {
		t.Fatalf("path infos: nix %d, ferry %d", len(nix.infos), len(ferry.infos))
	}
	for i := range nix.infos {
		n, f := nix.infos[i], ferry.infos[i]
		if n.Path != f.Path || !n.NarHash.Equal(f.NarHash) || n.NarSize != f.NarSize || fmt.Sprint(n.References) != fmt.Sprint(f.References) ||
			n.CA.String() != f.CA.String() || n.Deriver != f.Deriver {
			t.Errorf("path info differs:\nnix   %+v\nferry %+v", n, f)
		}
		if !strings.HasPrefix(f.CA.String(), "fixed:r:sha256:") {
			t.Errorf("ca %s", f.CA)
		}
	}
	if nix.rows != ferry.rows || strings.Count(ferry.rows, "\n") != 3 {
		t.Errorf("realisations differ:\nnix:\n%s\nferry:\n%s", nix.rows, ferry.rows)
	}

	// Without ca-derivations: the session ends, with Nix's message.
	const msg = "experimental Nix feature 'ca-derivations' is disabled; use '--extra-experimental-features ca-derivations' to override"
	for _, prog := range [][]string{{"nix-store"}, {e.ferry}} {
		c := ibStart(t, caServeCmd(t, prog, t.TempDir(), false))
		c.handshake(Version)
		dp, err := plain.Path(dir)
		if err != nil {
			t.Fatal(err)
		}
		WriteCommand(c.w, CmdBuildDerivation)
		WritePath(c.w, dp)
		WriteBasicDerivation(c.w, plain)
		WriteBuildSettings(c.w, Version, bs)
		c.flush()
		if _, err := ReadBuildResult(c.r, dir, Version); err == nil {
			c.fatal("%s: a build result without ca-derivations", prog[0])
		}
		c.stdin.Close()
		c.cmd.Wait()
		if !strings.Contains(c.stderr.String(), msg) {
			t.Errorf("%s without ca-derivations: stderr %q", prog[0], c.stderr.String())
		}
	}
}
