package serve

import (
	"fmt"
	"os"
	"testing"

	"ferry/internal/localstore"
	"ferry/nix/storepath"
	"ferry/store"
)

// BenchmarkCopySmallPaths runs the server side of a `nix copy` of 1,000
// small paths in process, over pipes, into a fresh local store: one
// QueryValidPaths, then one AddToStoreNar per path, each waiting for its
// reply, as Nix 2.8's client does. It measures the server's own time per
// path, without ssh or the client (bench/serve.sh compares with Nix).
// FERRY_BENCH_DIR chooses the file system (default: the test's TempDir).
//
//	go test -run '^$' -bench CopySmallPaths ./internal/serve
func BenchmarkCopySmallPaths(b *testing.B) {
	const n = 1000
	type item struct {
		nar  []byte
		info *store.PathInfo
	}
	items := make([]item, n)
	paths := make([]storepath.Path, n)
	var prev storepath.Path
	for i := range items {
		p := storepath.Path(fmt.Sprintf("/nix/store/%032d-small-%d", i, i))
		data := fmt.Sprintf("small path %d", i)
		var refs []storepath.Path
		if i%2 == 1 {
			data += " " + string(prev)
			refs = []storepath.Path{prev}
		}
		nar, info := narOf(p, data, refs...)
		items[i] = item{nar, info}
		paths[i] = p
		prev = p
	}
	benchDir := os.Getenv("FERRY_BENCH_DIR")
	for b.Loop() {
		b.StopTimer()
		root := b.TempDir()
		if benchDir != "" {
			var err error
			if root, err = os.MkdirTemp(benchDir, "ferry-bench-copy-"); err != nil {
				b.Fatal(err)
			}
			defer os.RemoveAll(root)
		}
		st, err := localstore.Open(root, nil)
		if err != nil {
			b.Fatal(err)
		}
		c := startSession(b, NewStoreBackend(st, nil), &Options{Write: true}, Version)
		b.StartTimer()
		WriteCommand(c.w, CmdQueryValidPaths)
		WriteQueryValidPaths(c.w, &QueryValidPathsRequest{Paths: paths})
		c.flush()
		if _, err := ReadPathSet(c.r, dir); err != nil {
			b.Fatal(err)
		}
		for _, it := range items {
			WriteCommand(c.w, CmdAddToStoreNar)
			WriteAddToStoreNar(c.w, it.info)
			c.w.Write(it.nar)
			c.flush()
			if v, err := c.r.ReadUint64(); v != 1 || err != nil {
				b.Fatalf("reply %d, %v", v, err)
			}
		}
		b.StopTimer()
		if err := c.end(); err != nil {
			b.Fatal(err)
		}
		st.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(n*b.N), "µs/path")
}
