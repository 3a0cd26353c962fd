// Package layering holds one test: that imports point down the layers of
// docs/architecture.md (cmd → internal/cli → internal/* → store → nix/* →
// stdlib), and that the protocol and client packages stay free of the
// local store, the builder, the sandbox and the database.
package layering

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Imports    []string // direct, non-test
	Deps       []string // transitive, non-test
	Standard   bool
}

func listPackages(t *testing.T) map[string]*pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", "ferry/...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]*pkg{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs[p.ImportPath] = &p
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

// layer ranks a package: a package may import only packages of a lower
// rank (and, within nix/ and internal/, its peers).
func layer(path string) int {
	switch {
	case !strings.HasPrefix(path, "ferry/") && path != "ferry":
		return 0 // standard library and modules
	case strings.HasPrefix(path, "ferry/nix/"):
		return 1
	case path == "ferry/store":
		return 2
	case path == "ferry/examples":
		return 2
	case path == "ferry/internal/cli":
		return 4
	case strings.HasPrefix(path, "ferry/internal/"):
		return 3
	case strings.HasPrefix(path, "ferry/cmd/"), strings.HasPrefix(path, "ferry/bench/"):
		return 5
	}
	return 5
}

func TestImportsPointDown(t *testing.T) {
	pkgs := listPackages(t)
	for _, p := range pkgs {
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, "ferry/") {
				if layer(p.ImportPath) <= 2 && strings.Contains(imp, ".") && !strings.HasPrefix(imp, "golang.org/x/sys/") {
					t.Errorf("%s imports the module %s: nix/* and store use the standard library (and x/sys) only", p.ImportPath, imp)
				}
				continue
			}
			lp, li := layer(p.ImportPath), layer(imp)
			peers := lp == li && (lp == 1 || lp == 3)
			if li > lp || (li == lp && !peers) {
				t.Errorf("%s imports %s, which is not below it", p.ImportPath, imp)
			}
		}
	}
}

// The protocol package and the client side never reach the local store,
// the builder, the sandbox or the database, directly or not.
func TestClientSideFreeOfLocalStore(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Deps \" \"}}",
		"ferry/internal/serve", "ferry/internal/sshstore", "ferry/internal/copy", "ferry/store")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	forbidden := []string{"ferry/internal/localstore", "ferry/internal/build", "ferry/internal/sandbox", "ferry/internal/db", "ferry/internal/settings"}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 4 {
		t.Fatalf("go list: %q", out)
	}
	for _, line := range lines {
		fields := strings.Fields(line)
		for _, dep := range fields[1:] {
			for _, f := range forbidden {
				if dep == f {
					t.Errorf("%s depends on %s", fields[0], f)
				}
			}
		}
	}
}
