package build

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/settings"
	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/rewrite"
	"ferry/nix/storepath"
	"ferry/store"
)

// The CA-floating vectors of docs/store.md §2.6, recorded from Nix 2.8:
// derivation rsch-ca2 writes "$out <rsch-in>\n" into $out.
const (
	rschDrv     = "/nix/store/12qnhm73x7lwibimpsz595m9hmav15kd-rsch-ca2.drv"
	rschScratch = "/nix/store/qipnq7zy96a9lg6pfr6ijg986d01kr62-rsch-ca2"
	rschIn      = "/nix/store/pfpbg7d54670x5bzv691nkpj87kps8mw-rsch-in.txt"
	rschCA      = "03g08bnpslhgxh1drbgplv7qgh7ysjpqc2rbk24xdchr4v99d557"
	rschFinal   = "/nix/store/w6yn66wmg27g1fzfsawdc89bc438z0jq-rsch-ca2"
)

func TestScratchPath(t *testing.T) {
	p, err := scratchPath(storepath.DefaultDir, storepath.Path(rschDrv), "rsch-ca2", "out")
	must(t, err)
	if p != rschScratch {
		t.Fatalf("scratch path %s, want %s", p, rschScratch)
	}
	// Another output gets outputPathName's name and another hash.
	dev, err := scratchPath(storepath.DefaultDir, storepath.Path(rschDrv), "rsch-ca2", "dev")
	must(t, err)
	if dev.Name() != "rsch-ca2-dev" || dev.HashPart() == p.HashPart() {
		t.Fatalf("dev scratch path %s", dev)
	}
}

// rschTree writes the output rsch-ca2's builder made.
func rschTree(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "out")
	must(t, os.WriteFile(dir, []byte(rschScratch+" "+rschIn+"\n"), 0o444))
	return dir
}

func TestHashModuloSelfReference(t *testing.T) {
	out := rschTree(t)
	mh := rewrite.NewModuloHasher(hash.SHA256, storepath.Path(rschScratch).HashPart())
	must(t, writeRewritten(mh, out, storepath.Recursive, nil))
	got, err := mh.Sum()
	must(t, err)
	if got.Encode(hash.Nix32, false) != rschCA {
		t.Fatalf("modulo hash %s, want %s", got.Encode(hash.Nix32, false), rschCA)
	}
	if off := mh.Matches(); len(off) != 1 || off[0] != 107 {
		t.Fatalf("self-reference offsets %v, want [107]", off)
	}
	// Independently: the NAR with the hash part zeroed, then "|107".
	var buf bytes.Buffer
	must(t, nar.Dump(&buf, out))
	zeroed := bytes.ReplaceAll(buf.Bytes(), []byte(storepath.Path(rschScratch).HashPart()), make([]byte, 32))
	want := hash.Sum(hash.SHA256, append(zeroed, "|107"...))
	if !got.Equal(want) {
		t.Fatalf("modulo hash %s, independent %s", got, want)
	}
	// The final path: source: with the input and self (§2.6 step 3).
	final, err := storepath.DefaultDir.MakeFixedOutput("rsch-ca2", storepath.Recursive, got, []storepath.Path{rschIn}, true)
	must(t, err)
	if final != rschFinal {
		t.Fatalf("final path %s, want %s", final, rschFinal)
	}
	// Without the self-reference the suffix is absent and the hash differs.
	plain := rewrite.NewModuloHasher(hash.SHA256, strings.Repeat("a", 32))
	must(t, writeRewritten(plain, out, storepath.Recursive, nil))
	ph, err := plain.Sum()
	must(t, err)
	if !ph.Equal(hash.Sum(hash.SHA256, buf.Bytes())) {
		t.Fatal("modulo hash without occurrences is not the plain hash")
	}
}

func TestFloatingFinalPathAndRewrite(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	in, err := st.AddText(ctx, "rsch-in.txt", []byte("input\n"), nil)
	must(t, err)
	d := &derivation.Derivation{Name: "rsch-ca2", Outputs: map[string]derivation.Output{
		"out": {Method: storepath.Recursive, HashAlgo: hash.SHA256}}}
	scratch := map[string]storepath.Path{"out": rschScratch}
	must(t, os.WriteFile(st.RealPath(rschScratch), []byte(rschScratch+" "+string(in.Path)+"\n"), 0o444))
	infos, finals, locks, err := checkFloatingOutputs(ctx, st, rschDrv, d, scratch, []storepath.Path{in.Path})
	must(t, err)
	defer locks.Unlock()
	final := finals["out"]
	info := infos[0]
	// The path is makeFixedOutputPath(recursive, ca, refs = {input}, self).
	want, err := st.Dir().MakeFixedOutput("rsch-ca2", storepath.Recursive, info.CA.Hash, []storepath.Path{in.Path}, true)
	must(t, err)
	if final != want || info.Path != final {
		t.Fatalf("final %s info %s, want %s", final, info.Path, want)
	}
	wantRefs := []storepath.Path{in.Path, final}
	storepath.Sort(wantRefs)
	if fmt.Sprint(info.References) != fmt.Sprint(wantRefs) {
		t.Fatalf("references %v, want %v", info.References, wantRefs)
	}
	// The content now names the final path, and the NAR hash is its own.
	data, err := os.ReadFile(st.RealPath(final))
	must(t, err)
	if string(data) != string(final)+" "+string(in.Path)+"\n" {
		t.Fatalf("content %q", data)
	}
	if _, err := os.Lstat(st.RealPath(rschScratch)); err == nil {
		t.Fatal("scratch path still there")
	}
	var buf bytes.Buffer
	must(t, nar.Dump(&buf, st.RealPath(final)))
	if !info.NarHash.Equal(hash.Sum(hash.SHA256, buf.Bytes())) || info.NarSize != uint64(buf.Len()) {
		t.Fatal("NAR hash or size is not the final tree's")
	}
}

// independentCA recomputes the CA hash of a final output from its final
// tree: the own final hash part zeroed, plus the offsets.
func independentCA(t *testing.T, real string, final storepath.Path) hash.Hash {
	var buf bytes.Buffer
	must(t, nar.Dump(&buf, real))
	b := buf.Bytes()
	hp := []byte(final.HashPart())
	var suffix string
	for i := 0; ; {
		j := bytes.Index(b[i:], hp)
		if j < 0 {
			break
		}
		copy(b[i+j:], make([]byte, len(hp)))
		suffix += fmt.Sprintf("|%d", i+j)
		i += j + len(hp)
	}
	return hash.Sum(hash.SHA256, append(b, suffix...))
}

func TestFloatingMultiOutputCrossReferences(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	drv := storepath.Path("/nix/store/5lllh97bsc6qy90qd9ggclr1a6s31pha-ca-multi.drv")
	d := &derivation.Derivation{Name: "ca-multi", Outputs: map[string]derivation.Output{
		"out": {Method: storepath.Recursive, HashAlgo: hash.SHA256},
		"dev": {Method: storepath.Recursive, HashAlgo: hash.SHA256},
		"bin": {Method: storepath.Recursive, HashAlgo: hash.SHA256},
	}}
	scratch := map[string]storepath.Path{}
	for _, o := range d.OutputNames() {
		p, err := scratchPath(st.Dir(), drv, d.Name, o)
		must(t, err)
		scratch[o] = p
	}
	// out refers to dev and bin and itself; bin to dev; dev to nothing.
	mk := func(o string, files map[string]string) {
		dir := st.RealPath(scratch[o])
		must(t, os.Mkdir(dir, 0o755))
		for n, c := range files {
			must(t, os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644))
		}
	}
	mk("dev", map[string]string{"h": "header\n"})
	mk("bin", map[string]string{"dev": string(scratch["dev"]) + "\n"})
	mk("out", map[string]string{"refs": string(scratch["dev"]) + " " + string(scratch["bin"]) + "\n", "self": string(scratch["out"])})
	infos, finals, locks, err := checkFloatingOutputs(ctx, st, drv, d, scratch, nil)
	must(t, err)
	defer locks.Unlock()
	order := []string{}
	for _, info := range infos {
		order = append(order, info.Path.Name())
	}
	if strings.Join(order, " ") != "ca-multi-dev ca-multi-bin ca-multi" {
		t.Fatalf("order %v", order)
	}
	for _, o := range d.OutputNames() {
		real := st.RealPath(finals[o])
		var info *store.PathInfo
		for _, i := range infos {
			if i.Path == finals[o] {
				info = i
			}
		}
		if got := independentCA(t, real, finals[o]); !got.Equal(info.CA.Hash) {
			t.Errorf("%s: CA %s, independent %s", o, info.CA.Hash, got)
		}
		// No scratch hash is left anywhere.
		var buf bytes.Buffer
		must(t, nar.Dump(&buf, real))
		for _, s := range scratch {
			if bytes.Contains(buf.Bytes(), []byte(s.HashPart())) {
				t.Errorf("%s still contains scratch hash %s", o, s.HashPart())
			}
		}
	}
	data, err := os.ReadFile(filepath.Join(st.RealPath(finals["out"]), "refs"))
	must(t, err)
	if string(data) != string(finals["dev"])+" "+string(finals["bin"])+"\n" {
		t.Fatalf("out/refs %q", data)
	}
	var outInfo *store.PathInfo
	for _, i := range infos {
		if i.Path == finals["out"] {
			outInfo = i
		}
	}
	want := []storepath.Path{finals["dev"], finals["bin"], finals["out"]}
	storepath.Sort(want)
	if fmt.Sprint(outInfo.References) != fmt.Sprint(want) {
		t.Fatalf("out refs %v, want %v", outInfo.References, want)
	}
	// The final path of out is computed over dev's and bin's final paths.
	p, err := st.Dir().MakeFixedOutput("ca-multi", storepath.Recursive, outInfo.CA.Hash, []storepath.Path{finals["bin"], finals["dev"]}, true)
	must(t, err)
	if p != finals["out"] {
		t.Fatalf("out %s, want %s", finals["out"], p)
	}
	must(t, st.RegisterValidPaths(ctx, infos))
}

func TestFloatingCycleAndFlat(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	drv := storepath.Path("/nix/store/5lllh97bsc6qy90qd9ggclr1a6s31pha-ca-cycle.drv")
	d := &derivation.Derivation{Name: "ca-cycle", Outputs: map[string]derivation.Output{
		"out": {Method: storepath.Recursive, HashAlgo: hash.SHA256},
		"dev": {Method: storepath.Recursive, HashAlgo: hash.SHA256},
	}}
	scratch := map[string]storepath.Path{}
	for _, o := range d.OutputNames() {
		p, err := scratchPath(st.Dir(), drv, d.Name, o)
		must(t, err)
		scratch[o] = p
	}
	must(t, os.WriteFile(st.RealPath(scratch["out"]), []byte(scratch["dev"]), 0o444))
	must(t, os.WriteFile(st.RealPath(scratch["dev"]), []byte(scratch["out"]), 0o444))
	_, _, _, err := checkFloatingOutputs(ctx, st, drv, d, scratch, nil)
	want := "cycle detected in build of '" + string(drv) + "' in the references of output 'dev' from output 'out'"
	if err == nil || err.Error() != want {
		t.Fatalf("err %v, want %q (Nix 2.8's message)", err, want)
	}

	// Flat: the file's contents are hashed, not its NAR.
	fd := &derivation.Derivation{Name: "ca-flat", Outputs: map[string]derivation.Output{"out": {Method: storepath.Flat, HashAlgo: hash.SHA256}}}
	fs, err := scratchPath(st.Dir(), drv, "ca-flat", "out")
	must(t, err)
	must(t, os.WriteFile(st.RealPath(fs), []byte("flat\n"), 0o444))
	infos, finals, locks, err := checkFloatingOutputs(ctx, st, drv, fd, map[string]storepath.Path{"out": fs}, nil)
	must(t, err)
	locks.Unlock()
	if infos[0].CA.String() != "fixed:sha256:"+hash.SumString(hash.SHA256, "flat\n").Encode(hash.Nix32, false) {
		t.Fatalf("flat ca %s", infos[0].CA)
	}
	// Verified with Nix 2.8 (ca-flat of the interop test).
	if finals["out"] != "/nix/store/dgyb92qqymr0m52pc25v48xhbzf2l0f3-ca-flat" {
		t.Fatalf("flat path %s", finals["out"])
	}
	// An executable is refused in flat mode.
	must(t, os.WriteFile(st.RealPath(fs), []byte("flat\n"), 0o555))
	_, _, _, err = checkFloatingOutputs(ctx, st, drv, fd, map[string]storepath.Path{"out": fs}, nil)
	if err == nil || !strings.Contains(err.Error(), "should be a non-executable regular file") {
		t.Fatalf("err %v", err)
	}
}

func TestFloatingNeedsFeature(t *testing.T) {
	st := openStore(t)
	d := &derivation.Derivation{Name: "ca-plain", Platform: system, Builder: "/bin/sh", Args: []string{"-c", "echo hi > $out"},
		Outputs: map[string]derivation.Output{"out": {Method: storepath.Recursive, HashAlgo: hash.SHA256}},
		Env:     map[string]string{"out": storepath.HashPlaceholder("out")}}
	drvPath, err := d.Path(st.Dir())
	must(t, err)
	res, err := Build(context.Background(), st, drvPath, d, &Options{Settings: testSettings()})
	must(t, err)
	want := settings.MissingFeatureError(settings.CADerivations).Error()
	if res.Status != store.MiscFailure || res.ErrorMsg != want {
		t.Fatalf("%v %q, want %q", res.Status, res.ErrorMsg, want)
	}
}
