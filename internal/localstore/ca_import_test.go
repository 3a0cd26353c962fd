package localstore

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/nixtest"
	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/store"
)

// TestAddSelfReferencingCA imports a floating content-addressed output
// that refers to itself, built by Nix 2.8 with ca-derivations: its content
// address is hashed modulo its own hash part (Nix's hashCAPath), so a
// plain NAR hash would reject it. A NAR changed by one byte, with its NAR
// hash recomputed, is still refused for its content address.
func TestAddSelfReferencingCA(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	var env []string
	for _, kv := range nixtest.Env(dir) {
		if !strings.HasPrefix(kv, "NIX_CONFIG=") {
			env = append(env, kv)
		}
	}
	env = append(env, "NIX_CONFIG="+nixtest.Config+"extra-experimental-features = ca-derivations\n")
	system := strings.Trim(nixtest.Line(t, "nix-instantiate", "--eval", "--expr", "builtins.currentSystem"), `"`)
	expr := `builtins.derivation { name = "ca-self"; system = "` + system + `"; builder = "/bin/sh";
	  args = [ "-c" "mkdir $out; echo $out > $out/me; echo some text > $out/text" ];
	  __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }`
	src := filepath.Join(dir, "src")
	run := func(name string, args ...string) []byte {
		t.Helper()
		return nixtest.RunEnv(t, env, name, args...)
	}
	out := strings.TrimSpace(string(run("nix-build", "--store", src, "--no-out-link", "-E", expr)))
	var infos []struct {
		NarHash    string   `json:"narHash"`
		References []string `json:"references"`
		CA         string   `json:"ca"`
	}
	if err := json.Unmarshal(run("nix", "path-info", "--json", "--store", src, out), &infos); err != nil || len(infos) != 1 {
		t.Fatalf("path-info: %v %v", err, infos)
	}
	narData := run("nix", "store", "dump-path", "--store", src, out)
	p := mustPath(t, out)
	info := &store.PathInfo{Path: p}
	var err error
	if info.NarHash, err = hash.Parse(infos[0].NarHash); err != nil {
		t.Fatal(err)
	}
	if info.CA, err = storepath.ParseContentAddress(infos[0].CA); err != nil {
		t.Fatal(err)
	}
	for _, r := range infos[0].References {
		info.References = append(info.References, mustPath(t, r))
	}
	if len(info.References) != 1 || info.References[0] != p || !bytes.Contains(narData, []byte(p.HashPart())) {
		t.Fatalf("not a self-referencing path: %+v", info)
	}

	ctx := context.Background()
	s := openStore(t, filepath.Join(dir, "ferry"))
	if err := s.AddToStoreNar(ctx, info, bytes.NewReader(narData)); err != nil {
		t.Fatalf("import %s: %v", p, err)
	}
	if ok, err := s.IsValidPath(ctx, p); err != nil || !ok {
		t.Fatalf("%s not valid after the import: %v", p, err)
	}

	bad := bytes.Replace(narData, []byte("some text"), []byte("some test"), 1)
	badInfo := *info
	badInfo.NarHash = hash.Sum(hash.SHA256, bad)
	s2 := openStore(t, filepath.Join(dir, "ferry2"))
	err = s2.AddToStoreNar(ctx, &badInfo, bytes.NewReader(bad))
	if err == nil || !strings.Contains(err.Error(), "ca hash mismatch") {
		t.Fatalf("a changed self-referencing path was imported: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ferry2/nix/store", p.Base())); !os.IsNotExist(err) {
		t.Errorf("the refused path is on disk: %v", err)
	}
}
