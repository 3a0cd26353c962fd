package nixtest

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// CAGraphNix is a graph of content-addressed derivations (experimental
// feature ca-derivations): a floating leaf with two outputs, one referring
// to the other and to itself, that uses an input source; a floating
// derivation on it (resolved before it is built); and an input-addressed
// one on that, whose outputs are therefore deferred until it is resolved.
const CAGraphNix = `{ system }:
let
  mk = name: script: attrs: derivation ({ inherit name system; builder = "/bin/sh"; args = [ "-c" script ]; } // attrs);
  ca = name: script: attrs: mk name script ({ __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; } // attrs);
  src = ./input.txt;
  leaf = ca "ca-leaf" "mkdir $out $dev; echo $out > $out/self; cat ${src} > $out/src; echo $dev > $out/devref; echo dev > $dev/file; echo built ca-leaf" { outputs = [ "out" "dev" ]; };
  onCA = ca "ca-on-ca" "mkdir $out; cat ${leaf}/src > $out/src; echo ${leaf} ${leaf.dev} > $out/refs; echo $out > $out/me" {};
in mk "ia-deferred" "mkdir $out; cat ${onCA}/src > $out/src; echo ${onCA} > $out/ref" {}
`

// CAConfig is Config with ca-derivations on.
const CAConfig = Config + "extra-experimental-features = ca-derivations\n"

// caRealisations is the realisations of a store as sqlite3 prints them:
// each with its output path, and the dependent realisations.
const caRealisations = `select 'R', r.drvPath, r.outputName, v.path, r.signatures from Realisations r join ValidPaths v on v.id = r.outputPath order by 2, 3;
select 'RR', a.drvPath || '!' || a.outputName, b.drvPath || '!' || b.outputName from RealisationsRefs x join Realisations a on a.id = x.referrer join Realisations b on b.id = x.realisationReference order by 2, 3;`

// Realisations reads st's realisations (caRealisations) with sqlite3.
func Realisations(t testing.TB, st string) string {
	t.Helper()
	out, err := exec.Command("sqlite3", filepath.Join(st, "nix/var/nix/db/db.sqlite"), caRealisations).CombinedOutput()
	if err != nil {
		t.Fatalf("sqlite3 %s: %v\n%s", st, err, out)
	}
	return string(out)
}
