package build

import (
	"context"
	"ferry/internal/storetest"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/localstore"
	"ferry/internal/nixtest"
	"ferry/nix/storepath"
	"ferry/store"
)

// modesScript leaves directories and files of every mode a builder can
// give them (setuid and setgid aside: Nix's sandbox refuses them).
const modesScript = `
mkdir -p $out/sub/deep $out/priv $out/noexec $out/wr $out/ux $out/nouser $out/ro
echo a > $out/sub/deep/file
echo b > $out/priv/f; chmod 700 $out/priv
chmod 600 $out/noexec
chmod 777 $out/wr; echo c > $out/wr/f; chmod 666 $out/wr/f
echo x > $out/exe; chmod 700 $out/exe
echo s > $out/sticky; chmod 1644 $out/sticky
echo r > $out/ro/f; chmod 444 $out/ro/f; chmod 555 $out/ro
chmod 100 $out/ux
chmod 077 $out/nouser
ln -s sub $out/link
`

// TestOutputModesLikeNix builds one derivation with nix-build and with
// BuildGraph and compares what each leaves on disk. Nix 2.8 does not
// force directories to 0555: one its builder left without the owner's x
// bit is 0444, and ferry's must be too.
func TestOutputModesLikeNix(t *testing.T) {
	nixtest.RequireNix(t)
	requireSandbox(t)
	dir := t.TempDir()
	expr := filepath.Join(dir, "modes.nix")
	must(t, os.WriteFile(expr, []byte(fmt.Sprintf(`derivation { name = "modes"; system = "%s"; builder = "/bin/sh"; args = [ "-c" %q ]; }`,
		system, modesScript)), 0o644))
	nixStore, ferryStore := filepath.Join(dir, "nix"), filepath.Join(dir, "ferry")

	out := nixtest.Line(t, "nix-build", "--store", nixStore, "--no-out-link", expr)
	want := storetest.DiskMeta(t, filepath.Join(nixStore, out))
	for _, line := range []string{"noexec type=40000 mode=0444", "nouser type=40000 mode=0444", "ux type=40000 mode=0555"} {
		if !strings.Contains(want, line) {
			t.Fatalf("nix-build left no %q:\n%s", line, want)
		}
	}

	drv := nixtest.Line(t, "nix-instantiate", "--store", ferryStore, expr)
	st, err := localstore.Open(ferryStore, &localstore.Options{NoSync: true})
	must(t, err)
	defer st.Close()
	drvPath, err := storepath.Parse(drv)
	must(t, err)
	results, err := BuildGraph(context.Background(), st, []storepath.Path{drvPath}, 1, &Options{Settings: testSettings()})
	must(t, err)
	res := results[drvPath]
	if res == nil || res.Status != store.Built {
		t.Fatalf("build: %+v", res)
	}
	if got := string(res.BuiltOutputs["out"]); got != out {
		t.Fatalf("ferry built %s, nix %s", got, out)
	}
	if got := storetest.DiskMeta(t, st.RealPath(res.BuiltOutputs["out"])); got != want {
		t.Errorf("output on disk:\nferry\n%s\nnix\n%s", got, want)
	}
	nixtest.Nix(t, nil, "nix-store", "--store", ferryStore, "--verify", "--check-contents")
}
