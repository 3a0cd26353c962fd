package storepath

import (
	"encoding/json"
	"ferry/internal/nixtest"
	"os"
	"path/filepath"
	"testing"
)

// store-path fixtures hold base names; content-address fixtures hold the
// JSON shape of current Nix, whose hash must round trip through our form.
func TestGoldenFixtures(t *testing.T) {
	goldenDir := nixtest.GoldenDir(t, "../../../shared/nix-golden/libstore-tests/data")
	files, _ := filepath.Glob(filepath.Join(goldenDir, "store-path", "*.json"))
	if len(files) == 0 {
		t.Skip("no golden fixtures")
	}
	for _, f := range files {
		data, _ := os.ReadFile(f)
		var base string
		if err := json.Unmarshal(data, &base); err != nil {
			t.Fatal(err)
		}
		p, err := DefaultDir.Join(base)
		if err != nil || p.Base() != base {
			t.Errorf("%s: Join(%q) = %q, %v", f, base, p, err)
		}
	}
	cas, _ := filepath.Glob(filepath.Join(goldenDir, "content-address", "*.json"))
	for _, f := range cas {
		data, _ := os.ReadFile(f)
		var v struct{ Hash, Method string }
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatal(err)
		}
		prefix := map[string]string{"nar": "fixed:r:", "text": "text:", "flat": "fixed:"}[v.Method]
		ca, err := ParseContentAddress(prefix + v.Hash)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if ca.Hash.SRI() != v.Hash {
			t.Errorf("%s: hash %s, want %s", f, ca.Hash.SRI(), v.Hash)
		}
	}
}
