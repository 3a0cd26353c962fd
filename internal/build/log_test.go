package build

import (
	"compress/bzip2"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestKeptLog: a build keeps its log where Nix's openLogFile puts it,
// bzip2-compressed with compress-build-log and plain without, and it
// replaces a log of the other form left by an earlier build.
func TestKeptLog(t *testing.T) {
	requireSandbox(t)
	st := openStore(t)
	ctx := context.Background()
	for _, compress := range []bool{true, false} {
		d := makeDrv(t, st, drvSpec{name: "logged", script: `echo line one; echo line two >&2; echo > $out`,
			env: map[string]string{"compress": fmt.Sprint(compress)}})
		dp := drvPathOf(t, st, d)
		base := dp.Base()
		plain := filepath.Join(st.Layout().LogDir, "drvs", base[:2], base[2:])
		name, other := plain+".bz2", plain
		if !compress {
			name, other = other, name
		}
		if err := os.MkdirAll(filepath.Dir(plain), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(other, []byte("an earlier build's log\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		s := testSettings()
		s.CompressBuildLog = compress
		if _, err := Build(ctx, st, dp, d, &Options{Settings: s}); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(name)
		if err != nil {
			t.Fatalf("compress-build-log %v: %v", compress, err)
		}
		var r io.Reader = f
		if compress {
			r = bzip2.NewReader(f)
		}
		got, err := io.ReadAll(r)
		f.Close()
		if err != nil || string(got) != "line one\nline two\n" {
			t.Errorf("compress-build-log %v: log %q, %v", compress, got, err)
		}
		if _, err := os.Stat(other); !os.IsNotExist(err) {
			t.Errorf("compress-build-log %v: %s is there too (%v)", compress, other, err)
		}
	}
}
