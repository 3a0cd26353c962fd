package localstore

import (
	"bytes"
	"context"
	"ferry/internal/storetest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"ferry/internal/nixtest"
	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// TestAddLeavesWhatNixLeaves adds one tree with directories and files of
// every kind of mode to a ferry store (AddPath, and Import of Nix's
// export) and to a Nix store (nix-store --add), and compares what is on
// disk: directories 0555 like Nix's, files 0444 or 0555, mtime 1.
func TestAddLeavesWhatNixLeaves(t *testing.T) {
	nixtest.RequireNix(t)
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "modes")
	dirs := map[string]os.FileMode{"": 0o755, "d700": 0o700, "d750": 0o750, "d777": 0o777, "d600": 0o600, "deep": 0o755, "deep/er": 0o711}
	files := map[string]os.FileMode{
		"f644": 0o644, "f600": 0o600, "f755": 0o755, "f700": 0o700, "setuid": 0o755 | os.ModeSetuid,
		"sticky": 0o644 | os.ModeSticky, "d700/f": 0o640, "d777/x": 0o777, "deep/er/f": 0o444,
	}
	for rel := range dirs {
		fatalIf(t, os.MkdirAll(filepath.Join(src, rel), 0o755))
	}
	for rel, m := range files {
		p := filepath.Join(src, rel)
		fatalIf(t, os.WriteFile(p, []byte(rel+"\n"), 0o644))
		fatalIf(t, os.Chmod(p, m))
	}
	fatalIf(t, os.Symlink("f644", filepath.Join(src, "link")))
	rels := make([]string, 0, len(dirs))
	for rel := range dirs {
		rels = append(rels, rel)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(rels))) // children before parents
	for _, rel := range rels {
		fatalIf(t, os.Chmod(filepath.Join(src, rel), dirs[rel]))
	}

	nixRoot := t.TempDir()
	p := nixtest.Line(t, "nix-store", "--store", nixRoot, "--add", src)
	want := storetest.DiskMeta(t, filepath.Join(nixRoot, p))
	if !strings.Contains(want, "d600 type=40000 mode=0555") {
		t.Fatalf("Nix left d600 other than 0555:\n%s", want)
	}

	s := openStore(t, t.TempDir())
	info, err := s.AddPath(ctx, src, storepath.Recursive, hash.SHA256)
	fatalIf(t, err)
	if string(info.Path) != p {
		t.Fatalf("ferry added %s, nix %s", info.Path, p)
	}
	if got := storetest.DiskMeta(t, s.RealPath(info.Path)); got != want {
		t.Errorf("after AddPath:\nferry\n%s\nnix\n%s", got, want)
	}

	stream := nixtest.Nix(t, nil, "nix-store", "--store", nixRoot, "--export", p)
	imp := openStore(t, t.TempDir())
	_, err = imp.Import(ctx, bytes.NewReader(stream))
	fatalIf(t, err)
	if got := storetest.DiskMeta(t, imp.RealPath(info.Path)); got != want {
		t.Errorf("after Import:\nferry\n%s\nnix\n%s", got, want)
	}
}
