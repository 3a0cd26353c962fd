package build

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"ferry/store"
)

func TestBuildSimple(t *testing.T) {
	requireSandbox(t)
	st := openStore(t)
	ctx := context.Background()
	d := makeDrv(t, st, drvSpec{name: "simple", script: `echo building; mkdir $out; echo hello > $out/greeting; env > $out/env; pwd > $out/pwd`})
	dp := drvPathOf(t, st, d)
	var log bytes.Buffer
	res, err := Build(ctx, st, dp, d, &Options{Settings: testSettings(), Log: &log, InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != store.Built || res.TimesBuilt != 1 || res.BuiltOutputs["out"] != d.Outputs["out"].Path {
		t.Fatalf("result %+v", res)
	}
	if log.String() != "building\n" {
		t.Errorf("log %q", log.String())
	}
	out := d.Outputs["out"].Path
	info, err := st.QueryPathInfo(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	// $out/env holds $out: a self-reference.
	if info.Deriver != dp || !info.Ultimate || len(info.References) != 1 || info.References[0] != out {
		t.Errorf("info %+v", info)
	}
	env, _ := os.ReadFile(st.RealPath(out) + "/env")
	for _, want := range []string{"HOME=/homeless-shelter", "PATH=/path-not-set", "NIX_STORE=/nix/store", "NIX_BUILD_CORES=1",
		"NIX_BUILD_TOP=/build", "TMPDIR=/build", "TEMPDIR=/build", "TMP=/build", "TEMP=/build", "NIX_LOG_FD=2",
		"TERM=xterm-256color", "out=" + string(out), "name=simple"} {
		if !strings.Contains("\n"+string(env), "\n"+want+"\n") {
			t.Errorf("env lacks %s:\n%s", want, env)
		}
	}
	if pwd, _ := os.ReadFile(st.RealPath(out) + "/pwd"); string(pwd) != "/build\n" {
		t.Errorf("pwd %q", pwd)
	}
	fi, _ := os.Lstat(st.RealPath(out) + "/greeting")
	if fi.Mode().Perm() != 0o444 || fi.ModTime().Unix() != 1 {
		t.Errorf("not canonical: %v %v", fi.Mode(), fi.ModTime())
	}

	// Again: already valid, nothing runs.
	log.Reset()
	res, err = Build(ctx, st, dp, d, &Options{Settings: testSettings(), Log: &log})
	if err != nil || res.Status != store.AlreadyValid || log.Len() != 0 || res.BuiltOutputs["out"] != out {
		t.Fatalf("second build %+v %v %q", res, err, log.String())
	}
}
