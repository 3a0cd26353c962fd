package build

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ferry/internal/localstore"
	"ferry/internal/nixtest"
	"ferry/nix/storepath"
	"ferry/store"
)

// benchExpr is n trivial independent derivations and one that depends on
// all of them, the graph bench/build.sh builds too.
func benchExpr(n int, salt string) string {
	var b strings.Builder
	b.WriteString("let mk = name: script: derivation { inherit name; system = \"" + system + "\"; builder = \"/bin/sh\"; args = [ \"-c\" script ]; };\n")
	b.WriteString("  leaves = builtins.genList (i: mk \"leaf-${toString i}\" \"echo " + salt + " ${toString i} > $out\") " + fmt.Sprint(n) + ";\n")
	b.WriteString("in mk \"root\" \"echo ${toString leaves} > $out\"\n")
	return b.String()
}

// BenchmarkBuild200 builds 200 trivial derivations (plus a root) with
// BuildGraph -j 2 and with nix-build -j 2, each in a fresh chroot store,
// and reports both times and their ratio (ferry/nix; below 1 means ferry
// is faster).
func BenchmarkBuild200(b *testing.B) {
	nixtest.RequireNix(b)
	requireSandbox(b)
	var ferryTotal, nixTotal time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		expr := filepath.Join(dir, "bench.nix")
		must(b, os.WriteFile(expr, []byte(benchExpr(200, fmt.Sprint("run", i, time.Now().UnixNano()))), 0o644))
		ferryStore, nixStore := filepath.Join(dir, "ferry"), filepath.Join(dir, "nix")
		drv := strings.TrimSpace(string(nixtest.Nix(b, nil, "nix-instantiate", "--store", ferryStore, expr)))
		nixtest.Nix(b, nil, "nix-instantiate", "--store", nixStore, expr)
		st, err := localstore.Open(ferryStore, &localstore.Options{NoSync: true})
		must(b, err)
		root, err := storepath.Parse(drv)
		must(b, err)
		b.StartTimer()

		start := time.Now()
		res, err := BuildGraph(context.Background(), st, []storepath.Path{root}, 2, &Options{Settings: testSettings()})
		ferryTotal += time.Since(start)
		must(b, err)
		if r := res[root]; r.Status != store.Built || len(res) != 201 {
			b.Fatalf("root %+v, %d results", r, len(res))
		}
		st.Close()

		start = time.Now()
		nixtest.Nix(b, nil, "nix-build", "--store", nixStore, "--no-out-link", "-j", "2", "--quiet", expr)
		nixTotal += time.Since(start)
	}
	b.ReportMetric(ferryTotal.Seconds()/float64(b.N), "ferry-s/op")
	b.ReportMetric(nixTotal.Seconds()/float64(b.N), "nix-s/op")
	b.ReportMetric(ferryTotal.Seconds()/nixTotal.Seconds(), "ferry/nix")
}
