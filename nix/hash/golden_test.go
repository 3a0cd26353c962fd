package hash

import (
	"encoding/json"
	"ferry/internal/nixtest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The hash fixtures of upstream's libutil tests: SRI strings that must
// parse and print back unchanged; blake3 is not an algorithm Nix 2.8 knows.
func TestGoldenFixtures(t *testing.T) {
	goldenDir := nixtest.GoldenDir(t, "../../../shared/nix-golden/libutil-tests/data/hash")
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*.json"))
	if len(files) == 0 {
		t.Skip("no golden fixtures at " + goldenDir)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var s string
			if err := json.Unmarshal(data, &s); err != nil {
				t.Fatal(err)
			}
			h, err := Parse(s)
			if strings.HasPrefix(s, "blake3") {
				if err == nil || !strings.Contains(err.Error(), "blake3") {
					t.Fatalf("Parse(%q) = %v, want an error naming blake3", s, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.SRI() != s {
				t.Errorf("SRI() = %q, want %q", h.SRI(), s)
			}
		})
	}
}
